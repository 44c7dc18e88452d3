// The OpenAI-compatible HTTP schema as plain functions: request JSON to a text_request (or an
// error naming the offending field), chat messages to a prompt through the model's chat
// template family, and the response/chunk JSON. No sockets here: the HTTP server calls these,
// tests call them directly.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <variant>
#include <string>
#include <vector>

#include "actors/actors.hpp"
#include "actors/http/errors.hpp"

namespace tutti::http {


// Chat template families recognised from tokenizer.chat_template by their markers; anything
// else falls back to a plain "role: content" transcript ending in "assistant:".
enum class ChatTemplate { ChatML, Llama2, Llama3, Plain };
ChatTemplate detect_chat_template(const std::string& jinja);
const char* chat_template_name(ChatTemplate t);

struct ChatMessage {
  std::string role, content;
};
// The prompt: the template's control tokens as "\x1d" token "\x1f" markers (encode_prompt
// turns them into vocabulary ids), the messages' contents as text. Contents must come through
// without_markers when they are a client's (media markers in them are kept: the realtime
// session puts its own there).
std::string format_chat(ChatTemplate t, const std::vector<ChatMessage>& messages);
// `text` with the prompt's marker bytes (\x1d, \x1e, \x1f) removed: a client's text cannot
// splice media or control tokens into a prompt.
std::string without_markers(std::string text);

struct ParsedRequest {
  actors::text_request request;
  bool stream = false;
  bool include_usage = false;
  bool chat = false;
  std::string model;
};

// The names a request's `model` may use: the served model's own, and its aliases
// ([server] model_aliases: OpenAI's model names, so code written against them runs as it is).
struct ServedModel {
  ServedModel(std::string n = "", std::vector<std::string> a = {}) : name(std::move(n)), aliases(std::move(a)) {}
  ServedModel(const char* n) : name(n) {}
  std::string name;
  std::vector<std::string> aliases;
  std::vector<std::string> others;  // the server's other models ([[models]]), by name
  bool answers_to(const std::string& model) const;
  // The model a name means: another model's own name, or else the served model's.
  std::string resolve(const std::string& model) const;
  // The model_not_found error for a name it does not answer to.
  ApiError not_found(const std::string& model) const;
};

// Parses and validates a /v1/chat/completions (chat = true) or /v1/completions body.
// max_tokens_limit bounds max_tokens (and is its default); the request's class is
// default_class unless it names one ("tutti": {"class": ...}).
std::variant<ParsedRequest, ApiError> parse_request(const std::string& body, bool chat, ChatTemplate tmpl,
                                                    const ServedModel& served_model, int max_tokens_limit,
                                                    RequestClass default_class = RequestClass::Interactive);

// The extension object "tutti": {"class": "realtime"|"interactive"|"batch", "rate": tokens/s,
// "low_watermark_ms", "high_watermark_ms", "ignore_eos"} (the same in a chat request and in
// a Realtime response.create): applied to `r`, or an error naming the field. Without a
// class, r keeps its own.
std::optional<ApiError> apply_tutti_extension(const nlohmann::json& extension, actors::text_request& r);

// Response bodies. `created` is a Unix time; `id` like "chatcmpl-42".
// completion_tokens >= 0 adds the extension field "tutti": {"completion_tokens": n} (the
// tokens generated so far), which paced-stream clients use to time each token.
std::string chunk_json(const std::string& id, const std::string& model, long created, bool chat, const std::string& text,
                       FinishReason finish, bool first, int completion_tokens = -1);
std::string usage_chunk_json(const std::string& id, const std::string& model, long created, bool chat, int prompt_tokens,
                             int completion_tokens);
std::string completion_json(const std::string& id, const std::string& model, long created, bool chat,
                             const std::string& text, FinishReason finish, int prompt_tokens,
                             int completion_tokens);
// OpenAI's finish reasons: stop | length (cancelled and errors never reach a complete body).
const char* openai_finish_reason(FinishReason finish);

}  // namespace tutti::http
