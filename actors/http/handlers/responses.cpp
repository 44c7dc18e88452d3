// /v1/responses, the Responses API: input as a string or as message items, instructions,
// max_output_tokens and temperature; one output message, whole or as the streamed events
// (response.created ... response.completed). A stored response (store, the default) can be
// continued with previous_response_id, from a bounded store (the oldest are forgotten).
#include "actors/http/generation.hpp"
#include "actors/http/handlers/handlers.hpp"
#include "actors/http/openai.hpp"

namespace tutti::http {

namespace {

ApiError bad(std::string message, std::string param) { return invalid_request(std::move(message), std::move(param)); }

// A message item's content as text: a string, or its text parts (input_text, output_text).
std::variant<std::string, ApiError> content_text(const json& content, const std::string& where) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) return bad("'" + where + ".content' must be a string or an array of parts", where + ".content");
  std::string text;
  for (const json& part : content) {
    const std::string type = part.is_object() ? part.value("type", "") : "";
    if (type != "input_text" && type != "output_text" && type != "text")
      return bad("'" + where + ".content' holds text parts only (input_text, output_text), not '" + type + "'", where + ".content");
    if (!part.contains("text") || !part["text"].is_string()) return bad("a text part needs 'text'", where + ".content");
    text += part["text"].get<std::string>();
  }
  return text;
}

// The request's input as chat messages (roles system, user, assistant; developer is system).
std::variant<json, ApiError> input_messages(const json& input) {
  json messages = json::array();
  if (input.is_string()) {
    messages.push_back({{"role", "user"}, {"content", input}});
    return messages;
  }
  if (!input.is_array() || input.empty()) return bad("'input' must be a string or a non-empty array of message items", "input");
  for (size_t i = 0; i < input.size(); ++i) {
    const json& item = input[i];
    const std::string where = "input[" + std::to_string(i) + "]";
    if (!item.is_object() || item.value("type", "message") != "message")
      return bad("'" + where + "' must be a message item (tools are not supported)", where);
    std::string role = item.value("role", "user");
    if (role == "developer") role = "system";
    if (role != "user" && role != "system" && role != "assistant") return bad("'" + where + ".role' must be user, system, developer or assistant", where + ".role");
    auto text = content_text(item.value("content", json()), where);
    if (auto* e = std::get_if<ApiError>(&text)) return *e;
    messages.push_back({{"role", role}, {"content", std::get<std::string>(text)}});
  }
  return messages;
}

class ResponsesAnswer final : public GenerationOwner {
 public:
  ResponsesAnswer(HttpExchange& ex, json request, ParsedRequest parsed, json messages, bool stream, bool store)
      : ex_(ex), req_(std::move(request)), p_(std::move(parsed)), messages_(std::move(messages)), stream_(stream), store_(store) {}
  std::shared_ptr<Generation> generation;

  void started(std::shared_ptr<Generation> g) {
    generation = std::move(g);
    id_ = "resp_" + ex_.server().instance_id + std::to_string(generation->request_id());
    item_id_ = "msg_" + ex_.server().instance_id + std::to_string(generation->request_id());
    if (!stream_) return;
    ex_.stream(ex_.stream_head("text/event-stream"));
    const json r = response("in_progress", nullptr);
    event("response.created", {{"response", r}});
    event("response.in_progress", {{"response", r}});
    event("response.output_item.added", {{"output_index", 0}, {"item", message("in_progress", false)}});
    event("response.content_part.added", {{"item_id", item_id_}, {"output_index", 0}, {"content_index", 0}, {"part", part("")}});
  }

  void on_text(const actors::text_delta& d) override {
    text_ += d.text;
    if (!stream_) {
      if (!d.last()) generation->delivered(d.completion_tokens);
      return;
    }
    if (d.text.empty()) return d.last() ? void() : ex_.tokens_without_bytes(d.completion_tokens);  // the end is on_end's
    event("response.output_text.delta",
          {{"item_id", item_id_}, {"output_index", 0}, {"content_index", 0}, {"delta", d.text}, {"logprobs", json::array()}}, d.completion_tokens);
  }

  void on_end(const GenerationEnd& e) override {
    if (!e.ok() && !stream_) return ex_.respond_error(e.error());
    if (!e.ok()) {  // the stream's head is out: the error as its last event
      event("error", {{"code", e.error().wire_code()}, {"message", e.error().message}, {"param", nullptr}});
      return ex_.end_stream();
    }
    const bool complete = e.finish != FinishReason::Length;
    const json usage = {{"input_tokens", e.prompt_tokens}, {"output_tokens", e.output_tokens}, {"total_tokens", e.prompt_tokens + e.output_tokens},
                        {"input_tokens_details", {{"cached_tokens", 0}}}, {"output_tokens_details", {{"reasoning_tokens", 0}}}};
    const char* status = complete ? "completed" : "incomplete";
    const json r = response(status, usage);
    if (store_) remember();
    if (!stream_) return ex_.respond_json(200, r.dump(-1, ' ', false, json::error_handler_t::replace));
    event("response.output_text.done", {{"item_id", item_id_}, {"output_index", 0}, {"content_index", 0}, {"text", text_}, {"logprobs", json::array()}});
    event("response.content_part.done", {{"item_id", item_id_}, {"output_index", 0}, {"content_index", 0}, {"part", part(text_)}});
    event("response.output_item.done", {{"output_index", 0}, {"item", message(complete ? "completed" : "incomplete", true)}});
    event(std::string("response.") + status, {{"response", r}});
    ex_.end_stream();
  }

 private:
  json part(const std::string& text) const { return {{"type", "output_text"}, {"text", text}, {"annotations", json::array()}, {"logprobs", json::array()}}; }
  json message(const char* status, bool with_text) const {
    return {{"type", "message"}, {"id", item_id_}, {"status", status}, {"role", "assistant"},
            {"content", with_text ? json::array({part(text_)}) : json::array()}};
  }
  json response(const char* status, const json& usage) const {
    const bool done = usage.is_object();
    json r = {{"id", id_}, {"object", "response"}, {"created_at", created_}, {"status", status}, {"error", nullptr},
              {"incomplete_details", std::string(status) == "incomplete" ? json{{"reason", "max_output_tokens"}} : json(nullptr)},
              {"instructions", req_.value("instructions", json())}, {"max_output_tokens", req_.value("max_output_tokens", json())},
              {"model", p_.model}, {"output", done ? json::array({message(std::string(status) == "completed" ? "completed" : "incomplete", true)}) : json::array()},
              {"parallel_tool_calls", false}, {"previous_response_id", req_.value("previous_response_id", json())},
              {"temperature", req_.value("temperature", json(p_.request.temperature))}, {"tool_choice", "auto"}, {"tools", json::array()},
              {"top_p", 1.0}, {"text", {{"format", {{"type", "text"}}}}}, {"truncation", "disabled"}, {"store", store_},
              {"metadata", req_.value("metadata", json::object())}, {"usage", usage}};
    return r;
  }
  void event(const std::string& type, json fields, int32_t tokens_through = -1) {
    fields["type"] = type;
    fields["sequence_number"] = sequence_++;
    ex_.stream("event: " + type + "\ndata: " + fields.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n", tokens_through);
  }
  void remember() {
    ServerState& srv = ex_.server();
    json messages = messages_;
    messages.push_back({{"role", "assistant"}, {"content", text_}});
    srv.responses[id_] = {ex_.key(), std::move(messages)};
    srv.response_order.push_back(id_);
    while (srv.response_order.size() > ServerState::kMaxStoredResponses) {
      srv.responses.erase(srv.response_order.front());
      srv.response_order.pop_front();
    }
  }

  HttpExchange& ex_;  // owns this answer
  json req_;
  ParsedRequest p_;
  json messages_;  // the conversation so far (without instructions), for the store
  bool stream_, store_;
  long created_ = ServerState::unix_now();
  std::string id_, item_id_, text_;
  int sequence_ = 0;
};

}  // namespace

void handle_responses(HttpExchange& ex) {
  ServerState& srv = ex.server();
  const json req = json::parse(ex.body(), nullptr, false);
  if (req.is_discarded() || !req.is_object()) return ex.respond_error(invalid_request("the request body is not a JSON object"));
  for (const char* unsupported : {"tools", "reasoning", "background", "conversation", "prompt"})
    if (req.contains(unsupported) && !req[unsupported].is_null() && !(req[unsupported].is_array() && req[unsupported].empty()))
      return ex.respond_error(bad(std::string("'") + unsupported + "' is not supported by this server", unsupported));
  if (!req.contains("input")) return ex.respond_error(bad("'input' is required", "input"));
  auto input = input_messages(req["input"]);
  if (auto* e = std::get_if<ApiError>(&input)) return ex.respond_error(*e);
  json messages = json::array();
  if (req.contains("previous_response_id") && !req["previous_response_id"].is_null()) {
    if (!req["previous_response_id"].is_string()) return ex.respond_error(bad("'previous_response_id' must be a string", "previous_response_id"));
    const std::string prev = req["previous_response_id"];
    auto it = srv.responses.find(prev);
    if (it == srv.responses.end() || !ex.may_see(it->second.owner))
      return ex.respond_error(ApiError{ErrorCode::not_found,
                                       "no stored response '" + prev + "' (this server keeps the last " +
                                           std::to_string(ServerState::kMaxStoredResponses) + " responses made with store: true)",
                                       "previous_response_id", 0, "previous_response_not_found"});
    messages = it->second.messages;
  }
  for (const json& m : std::get<json>(input)) messages.push_back(m);
  const bool stream = req.value("stream", false) == true;
  const bool store = !req.contains("store") || req["store"] != false;
  // As a chat request: the same checks (model, temperature, limits) and the same template.
  json chat = {{"messages", json::array()}};
  if (req.contains("instructions") && !req["instructions"].is_null()) {
    if (!req["instructions"].is_string()) return ex.respond_error(bad("'instructions' must be a string", "instructions"));
    chat["messages"].push_back({{"role", "system"}, {"content", req["instructions"]}});
  }
  for (const json& m : messages) chat["messages"].push_back(m);
  for (const char* key : {"model", "temperature", "top_p", "tutti"})
    if (req.contains(key)) chat[key] = req[key];
  if (req.contains("max_output_tokens") && !req["max_output_tokens"].is_null()) chat["max_tokens"] = req["max_output_tokens"];
  auto parsed = parse_request(chat.dump(), true, srv.cfg.chat_template, srv.models->served(), srv.cfg.max_tokens, srv.cfg.classes.chat);
  if (ApiError* e = std::get_if<ApiError>(&parsed)) {
    if (e->param == "max_tokens") e->param = "max_output_tokens";
    if (e->param == "messages") e->param = "input";
    return ex.respond_error(*e);
  }
  ParsedRequest p = std::get<ParsedRequest>(std::move(parsed));
  GenerationSpec spec = http_generation(ex, p.model, p.request);
  auto answer = std::make_shared<ResponsesAnswer>(ex, req, std::move(p), std::move(messages), stream, store);
  auto started = Generation::start(srv, std::move(spec), answer);
  if (const ApiError* e = std::get_if<ApiError>(&started)) return ex.respond_error(*e);
  answer->started(std::get<std::shared_ptr<Generation>>(std::move(started)));
  ex.keep(answer, answer->generation);
}

}  // namespace tutti::http
