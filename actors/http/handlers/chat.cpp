// /v1/chat/completions and /v1/completions: a whole JSON answer, or server-sent events.
#include "actors/http/generation.hpp"
#include "actors/http/handlers/handlers.hpp"
#include "actors/http/openai.hpp"

namespace tutti::http {

namespace {

// One completion's answer: owns its generation while the exchange keeps it.
class CompletionAnswer final : public GenerationOwner {
 public:
  CompletionAnswer(HttpExchange& ex, ParsedRequest parsed) : ex_(ex), p_(std::move(parsed)), created_(ServerState::unix_now()) {}
  std::shared_ptr<Generation> generation;

  void started(std::shared_ptr<Generation> g) {
    generation = std::move(g);
    id_ = (p_.chat ? "chatcmpl-" : "cmpl-") + std::to_string(generation->request_id());
  }

  void on_text(const actors::text_delta& d) override {
    if (!p_.stream) {
      text_ += d.text;  // bounded by max_tokens; the client gets it whole at the end
      if (!d.last()) generation->delivered(d.completion_tokens);
      return;
    }
    if (d.last() && d.finish == FinishReason::Error && !sse_started_) return;  // an HTTP error (on_end)
    start_events();
    // Realtime streams get a chunk per token (text may be empty) carrying the token count;
    // others only chunks with text.
    const bool paced = p_.request.request_class == RequestClass::Realtime;
    if (!d.text.empty() || first_chunk_ || (paced && !d.last())) {
      ex_.stream("data: " + chunk_json(id_, p_.model, created_, p_.chat, d.text, FinishReason::None, first_chunk_,
                                       paced ? d.completion_tokens : -1) + "\n\n",
                 d.completion_tokens);
      first_chunk_ = false;
    } else if (!d.last()) {
      ex_.tokens_without_bytes(d.completion_tokens);
    }
  }

  void on_end(const GenerationEnd& e) override {
    if (!p_.stream || !sse_started_) {
      if (!e.ok()) return ex_.respond_error(e.error());
      if (!p_.stream)
        return ex_.respond_json(200, completion_json(id_, p_.model, created_, p_.chat, text_, e.finish, e.prompt_tokens, e.output_tokens));
      start_events();
    }
    if (!e.ok()) {
      ex_.stream("data: " + e.error().body() + "\n\n");
    } else {
      ex_.stream("data: " + chunk_json(id_, p_.model, created_, p_.chat, "", e.finish, false) + "\n\n");
      if (p_.include_usage)
        ex_.stream("data: " + usage_chunk_json(id_, p_.model, created_, p_.chat, e.prompt_tokens, e.output_tokens) + "\n\n");
    }
    ex_.stream("data: [DONE]\n\n");
    ex_.end_stream();
  }

 private:
  void start_events() {
    if (sse_started_) return;
    sse_started_ = true;
    ex_.stream(ex_.stream_head("text/event-stream"));
  }

  HttpExchange& ex_;  // owns this answer
  ParsedRequest p_;
  long created_;
  std::string id_, text_;
  bool sse_started_ = false, first_chunk_ = true;
};

void handle_completion(HttpExchange& ex, bool chat) {
  ServerState& srv = ex.server();
  auto parsed = parse_request(ex.body(), chat, srv.cfg.chat_template, srv.models->served(), srv.cfg.max_tokens, srv.cfg.classes.chat);
  if (const ApiError* e = std::get_if<ApiError>(&parsed)) return ex.respond_error(*e);
  auto answer = std::make_shared<CompletionAnswer>(ex, std::get<ParsedRequest>(parsed));
  ParsedRequest& p = std::get<ParsedRequest>(parsed);
  GenerationSpec spec = http_generation(ex, p.model, std::move(p.request));
  auto started = Generation::start(srv, std::move(spec), answer);
  if (const ApiError* e = std::get_if<ApiError>(&started)) return ex.respond_error(*e);
  answer->started(std::get<std::shared_ptr<Generation>>(std::move(started)));
  ex.keep(answer, answer->generation);
}

}  // namespace

void handle_chat_completions(HttpExchange& ex) { handle_completion(ex, true); }
void handle_completions(HttpExchange& ex) { handle_completion(ex, false); }

}  // namespace tutti::http
