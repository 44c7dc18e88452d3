#include "actors/http/openai.hpp"

#include <algorithm>

#include "pipeline/unicode.h"

namespace tutti::http {

using json = nlohmann::json;

ChatTemplate detect_chat_template(const std::string& t) {
  if (t.find("<|start_header_id|>") != std::string::npos) return ChatTemplate::Llama3;
  if (t.find("<|im_start|>") != std::string::npos) return ChatTemplate::ChatML;
  if (t.find("[INST]") != std::string::npos) return ChatTemplate::Llama2;
  return ChatTemplate::Plain;
}

const char* chat_template_name(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::ChatML: return "chatml";
    case ChatTemplate::Llama2: return "llama2";
    case ChatTemplate::Llama3: return "llama3";
    case ChatTemplate::Plain: return "plain";
  }
  return "plain";
}

std::string without_markers(std::string text) {
  text.erase(std::remove_if(text.begin(), text.end(), [](char c) { return c == '\x1d' || c == '\x1e' || c == '\x1f'; }),
             text.end());
  return text;
}

namespace {
std::string control(const char* token) { return std::string("\x1d") + token + "\x1f"; }
}  // namespace

std::string format_chat(ChatTemplate t, const std::vector<ChatMessage>& messages) {
  std::string out;
  switch (t) {
    case ChatTemplate::ChatML: {
      const std::string start = control("<|im_start|>"), end = control("<|im_end|>");
      for (auto& m : messages) out += start + m.role + "\n" + m.content + end + "\n";
      return out + start + "assistant\n";
    }
    case ChatTemplate::Llama3: {
      const std::string start = control("<|start_header_id|>"), end = control("<|end_header_id|>"), eot = control("<|eot_id|>");
      for (auto& m : messages) out += start + m.role + end + "\n\n" + m.content + eot;
      return out + start + "assistant" + end + "\n\n";
    }
    case ChatTemplate::Llama2: {
      // [INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] assistant </s><s>[INST] user [/INST]
      std::string system;
      bool first_user = true;
      for (auto& m : messages) {
        if (m.role == "system") {
          system = m.content;
        } else if (m.role == "user") {
          out += "[INST] ";
          if (first_user && !system.empty()) out += "<<SYS>>\n" + system + "\n<</SYS>>\n\n";
          out += m.content + " [/INST]";
          first_user = false;
        } else {
          out += " " + m.content + " " + control("</s>") + control("<s>");
        }
      }
      return out;
    }
    case ChatTemplate::Plain:
      for (auto& m : messages) out += m.role + ": " + m.content + "\n";
      return out + "assistant:";
  }
  return out;
}

namespace {
ApiError bad(const std::string& message, const std::string& param = "") { return invalid_request(message, param); }
}  // namespace

std::optional<ApiError> apply_tutti_extension(const json& t, actors::text_request& r) {
  if (!t.is_object()) return bad("'tutti' must be an object", "tutti");
  // Without a class the request keeps the one its endpoint gives it ([admission] settings).
  const json cls_field = t.value("class", json(request_class_name(r.request_class)));
  const auto cls = parse_request_class(cls_field.is_string() ? cls_field.get<std::string>() : "");
  if (!cls) return bad("'tutti.class' must be realtime, interactive or batch", "tutti.class");
  r.request_class = *cls;
  if (t.contains("rate")) {
    if (!t["rate"].is_number() || t["rate"].get<double>() <= 0) return bad("'tutti.rate' must be a positive number", "tutti.rate");
    r.tokens_per_second = t["rate"].get<double>();
  }
  if (*cls == RequestClass::Realtime && r.tokens_per_second <= 0) return bad("a realtime request needs 'tutti.rate' (tokens per second)", "tutti.rate");
  // The stream's target lead, in milliseconds of playback (default: the [realtime] settings).
  for (auto [key, target] : {std::pair{"low_watermark_ms", &r.low_watermark_s}, std::pair{"high_watermark_ms", &r.high_watermark_s}}) {
    if (!t.contains(key)) continue;
    const json& v = t[key];
    if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 60000)
      return bad(std::string("'tutti.") + key + "' must be a number of milliseconds from 0 to 60000", std::string("tutti.") + key);
    *target = v.get<double>() / 1000.0;
  }
  if (r.low_watermark_s >= 0 && r.high_watermark_s >= 0 && r.low_watermark_s >= r.high_watermark_s)
    return bad("'tutti.low_watermark_ms' must be below 'tutti.high_watermark_ms'", "tutti.low_watermark_ms");
  if (t.contains("ignore_eos")) {
    if (!t["ignore_eos"].is_boolean()) return bad("'tutti.ignore_eos' must be true or false", "tutti.ignore_eos");
    r.ignore_eos = t["ignore_eos"].get<bool>();
  }
  return std::nullopt;
}

bool ServedModel::answers_to(const std::string& model) const {
  return model == name || std::find(aliases.begin(), aliases.end(), model) != aliases.end() ||
         std::find(others.begin(), others.end(), model) != others.end();
}

std::string ServedModel::resolve(const std::string& model) const {
  return std::find(others.begin(), others.end(), model) != others.end() ? model : name;
}

ApiError ServedModel::not_found(const std::string& model) const {
  return ApiError{ErrorCode::model_not_found, "the model '" + model + "' does not exist; this server serves '" + name + "'", "model"};
}

namespace {
std::variant<ParsedRequest, ApiError> parse_request_fields(const std::string& body, bool chat, ChatTemplate tmpl,
                                                           const ServedModel& served_model, int max_tokens_limit,
                                                           RequestClass default_class) {
  if (!unicode::is_valid_utf8(body)) return bad("the request body is not valid UTF-8");
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) return bad("the request body is not valid JSON");
  if (!j.is_object()) return bad("the request body must be a JSON object");
  ParsedRequest p;
  p.chat = chat;
  p.request.request_class = default_class;
  auto field = [&](const char* name) -> const json* { auto it = j.find(name); return it == j.end() || it->is_null() ? nullptr : &*it; };
  if (const json* m = field("model")) {
    if (!m->is_string()) return bad("'model' must be a string", "model");
    p.model = m->get<std::string>();
    if (!served_model.answers_to(p.model)) return served_model.not_found(p.model);
    p.model = served_model.resolve(p.model);
  } else {
    p.model = served_model.name;
  }
  if (chat) {
    const json* msgs = field("messages");
    if (!msgs || !msgs->is_array() || msgs->empty()) return bad("'messages' must be a non-empty array", "messages");
    std::vector<ChatMessage> messages;
    for (const json& m : *msgs) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) return bad("each message needs a string 'role'", "messages");
      const std::string role = m["role"].get<std::string>();
      if (role != "system" && role != "user" && role != "assistant" && role != "developer")
        return bad("unknown message role '" + role + "'", "messages");
      std::string content;
      if (m.contains("content") && m["content"].is_string()) {
        content = m["content"].get<std::string>();
      } else if (m.contains("content") && m["content"].is_array()) {  // [{"type":"text","text":...}]
        for (const json& part : m["content"])
          if (part.is_object() && part.contains("type") && part["type"] == "text" && part.contains("text") && part["text"].is_string())
            content += part["text"].get<std::string>();
          else
            return bad("only text content parts are supported", "messages");
      } else {
        return bad("each message needs 'content'", "messages");
      }
      messages.push_back({role == "developer" ? "system" : role, without_markers(content)});
    }
    p.request.prompt = format_chat(tmpl, messages);
  } else {
    const json* prompt = field("prompt");
    if (!prompt || !prompt->is_string()) return bad("'prompt' must be a string", "prompt");
    p.request.prompt = without_markers(prompt->get<std::string>());
  }
  auto number = [&](const char* name, double lo, double hi, double fallback, double& out) -> std::optional<ApiError> {
    const json* v = field(name);
    if (!v) { out = fallback; return std::nullopt; }
    if (!v->is_number()) return bad(std::string("'") + name + "' must be a number", name);
    out = v->get<double>();
    if (!(out >= lo && out <= hi)) return bad(std::string("'") + name + "' must be between " + json(lo).dump() + " and " + json(hi).dump(), name);
    return std::nullopt;
  };
  double max_tokens, temperature, top_p, seed, n;
  const char* max_name = field("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (auto e = number(max_name, 1, max_tokens_limit, std::min(max_tokens_limit, 256), max_tokens)) return *e;
  if (auto e = number("temperature", 0, 2, 1.0, temperature)) return *e;
  if (auto e = number("top_p", 0, 1, 1.0, top_p)) return *e;
  if (auto e = number("seed", 0, 9007199254740991.0, 0, seed)) return *e;
  if (auto e = number("n", 1, 1, 1, n)) return *e;
  if (top_p == 0) return bad("'top_p' must be greater than 0", "top_p");
  p.request.max_tokens = int32_t(max_tokens);
  p.request.temperature = float(temperature);
  p.request.top_p = float(top_p);
  p.request.seed = uint64_t(seed);
  if (const json* s = field("stream")) {
    if (!s->is_boolean()) return bad("'stream' must be a boolean", "stream");
    p.stream = s->get<bool>();
  }
  if (const json* so = field("stream_options")) {
    if (!so->is_object()) return bad("'stream_options' must be an object", "stream_options");
    if (so->contains("include_usage")) {
      if (!(*so)["include_usage"].is_boolean()) return bad("'stream_options.include_usage' must be a boolean", "stream_options.include_usage");
      p.include_usage = (*so)["include_usage"].get<bool>();
    }
  }
  if (const json* t = field("tutti"))
    if (auto e = apply_tutti_extension(*t, p.request)) return *e;
  return p;
}
}  // namespace

std::variant<ParsedRequest, ApiError> parse_request(const std::string& body, bool chat, ChatTemplate tmpl,
                                                    const ServedModel& served_model, int max_tokens_limit,
                                                    RequestClass default_class) {
  // Every field is type-checked above; a type mismatch missed there is still the client's
  // mistake (a 400), never an exception on the I/O thread.
  try {
    return parse_request_fields(body, chat, tmpl, served_model, max_tokens_limit, default_class);
  } catch (const json::exception& e) {
    return bad(std::string("a field has the wrong type: ") + e.what());
  }
}

const char* openai_finish_reason(FinishReason r) { return r == FinishReason::Length ? "length" : "stop"; }

std::string chunk_json(const std::string& id, const std::string& model, long created, bool chat, const std::string& text,
                       FinishReason finish, bool first, int completion_tokens) {
  json choice = {{"index", 0}, {"finish_reason", finish == FinishReason::None ? json(nullptr) : json(openai_finish_reason(finish))}};
  if (chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || first) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  json c = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created}, {"model", model},
            {"choices", json::array({choice})}};
  if (completion_tokens >= 0) c["tutti"] = {{"completion_tokens", completion_tokens}};
  return c.dump(-1, ' ', false, json::error_handler_t::replace);  // generated text: never throw on a stray byte
}

std::string usage_chunk_json(const std::string& id, const std::string& model, long created, bool chat, int prompt_tokens,
                             int completion_tokens) {
  json c = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created}, {"model", model},
            {"choices", json::array()},
            {"usage", {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens}, {"total_tokens", prompt_tokens + completion_tokens}}}};
  return c.dump();
}

std::string completion_json(const std::string& id, const std::string& model, long created, bool chat,
                            const std::string& text, FinishReason finish, int prompt_tokens,
                            int completion_tokens) {
  json choice = {{"index", 0}, {"finish_reason", openai_finish_reason(finish)}};
  if (chat)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice["text"] = text;
  json c = {{"id", id}, {"object", chat ? "chat.completion" : "text_completion"}, {"created", created}, {"model", model},
            {"choices", json::array({choice})},
            {"usage", {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens}, {"total_tokens", prompt_tokens + completion_tokens}}}};
  return c.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace tutti::http
