#include "actors/http/realtime_events.hpp"

#include <algorithm>
#include <climits>

namespace tutti::http::realtime {

using json = nlohmann::json;

namespace {

// A field's value that fails validation: the message of the error event.
struct Invalid {
  std::string message;
};
using Checked = std::optional<Invalid>;

Checked read_wire(const json& v, std::optional<AudioWire>& out, const char* name) {
  auto w = parse_audio_wire(v);
  if (!w) return Invalid{std::string("'") + name + "' must be pcm16, g711_ulaw or g711_alaw (or audio/pcm at 24000, audio/pcmu, audio/pcma)"};
  out = *w;
  return std::nullopt;
}

Checked read_modalities(const json& v, const char* name, std::optional<std::vector<std::string>>& out) {
  if (!v.is_array()) return Invalid{std::string("'") + name + "' must be an array"};
  std::vector<std::string> m;
  for (const json& x : v) {
    if (!x.is_string() || (x != "text" && x != "audio" && x != "video"))
      return Invalid{std::string("'") + name + "' holds text, audio and video only"};
    m.push_back(x);
  }
  if (m.empty()) return Invalid{std::string("'") + name + "' must not be empty"};
  if (std::count(m.begin(), m.end(), "audio") && std::count(m.begin(), m.end(), "video"))
    return Invalid{"a response carries one media modality: audio or video"};
  out = std::move(m);
  return std::nullopt;
}

Checked read_turn_detection(const json& td, SessionUpdate& u) {
  if (td.is_null()) {
    u.turn_detection = SessionUpdate::Turns::Manual;
    return std::nullopt;
  }
  if (!td.is_object()) return Invalid{"'turn_detection' must be an object or null"};
  const std::string type = td.value("type", "server_vad");
  if (type != "server_vad" && type != "semantic_vad") return Invalid{"turn_detection.type must be server_vad or semantic_vad (or null)"};
  codecs::VadConfig c;
  if (type == "semantic_vad") {
    u.semantic = true;
    u.eagerness = td.contains("eagerness") && !td["eagerness"].is_null() ? td["eagerness"].get<std::string>() : "auto";
    if (semantic_vad_silence_ms(u.eagerness) < 0) return Invalid{"turn_detection.eagerness must be low, medium, high or auto"};
    c.silence_duration_ms = semantic_vad_silence_ms(u.eagerness);
  }
  c.threshold = td.value("threshold", c.threshold);
  c.prefix_padding_ms = td.value("prefix_padding_ms", c.prefix_padding_ms);
  c.silence_duration_ms = td.value("silence_duration_ms", c.silence_duration_ms);
  if (!(c.threshold >= 0 && c.threshold <= 1) || c.prefix_padding_ms < 0 || c.prefix_padding_ms > 10000 ||
      c.silence_duration_ms < 20 || c.silence_duration_ms > 10000)
    return Invalid{"turn_detection: threshold 0..1, prefix_padding_ms 0..10000, silence_duration_ms 20..10000"};
  if (td.contains("idle_timeout_ms") && !td["idle_timeout_ms"].is_null()) {
    const json& t = td["idle_timeout_ms"];
    if (!t.is_number_integer() || t.get<int64_t>() < 5000 || t.get<int64_t>() > 30000)
      return Invalid{"turn_detection.idle_timeout_ms must be an integer from 5000 to 30000 (or null)"};
    u.idle_timeout_ms = t.get<int>();
  }
  u.turn_detection = SessionUpdate::Turns::ServerVad;
  u.vad = c;
  u.create_response = td.contains("create_response") && td["create_response"].is_boolean() ? td["create_response"].get<bool>() : true;
  return std::nullopt;
}

// A response limit: a positive integer or "inf" (INT_MAX, clamped by the session).
Checked read_max_tokens(const json& m, const char* key, std::optional<int>& out) {
  if (m.is_string() && m == "inf") {
    out = INT_MAX;
  } else if (m.is_number_integer() && m.get<int64_t>() >= 1) {
    out = int(std::min<int64_t>(m.get<int64_t>(), INT_MAX));
  } else {
    return Invalid{std::string("'") + key + "' must be a positive integer or \"inf\""};
  }
  return std::nullopt;
}

// session.update's fields, in both spellings clients use (the beta's flat fields and the GA
// API's audio.input / audio.output objects).
std::variant<SessionUpdate, Invalid> read_session_update(const json& s) {
  if (!s.is_object()) return Invalid{"'session' must be an object"};
  SessionUpdate u;
  if (s.contains("type") && !s["type"].is_null() && s["type"] != "realtime")
    return Invalid{"session.type must be realtime (this server has no transcription-only sessions)"};
  // Every field checked as the HTTP fields are: a value of the wrong type or out of range is
  // an error naming it, never silently ignored or clamped into something else.
  if (s.contains("instructions") && !s["instructions"].is_null()) {
    if (!s["instructions"].is_string()) return Invalid{"'instructions' must be a string"};
    u.instructions = s["instructions"].get<std::string>();
  }
  if (s.contains("temperature") && !s["temperature"].is_null()) {
    const json& t = s["temperature"];
    if (!t.is_number() || !(t.get<double>() >= 0 && t.get<double>() <= 2)) return Invalid{"'temperature' must be a number from 0 to 2"};
    u.temperature = t.get<float>();
  }
  for (const char* key : {"max_response_output_tokens", "max_output_tokens"})  // beta, GA
    if (s.contains(key) && !s[key].is_null())
      if (auto e = read_max_tokens(s[key], key, u.max_output_tokens)) return *e;
  if (s.contains("voice") && s["voice"].is_string()) u.voice = s["voice"].get<std::string>();
  if (s.contains("input_audio_format"))
    if (auto e = read_wire(s["input_audio_format"], u.input_wire, "input_audio_format")) return *e;
  if (s.contains("output_audio_format"))
    if (auto e = read_wire(s["output_audio_format"], u.output_wire, "output_audio_format")) return *e;
  const json audio = s.value("audio", json::object());
  const json audio_in = audio.is_object() ? audio.value("input", json::object()) : json::object();
  if (audio.is_object()) {
    if (audio_in.is_object() && audio_in.contains("format"))
      if (auto e = read_wire(audio_in["format"], u.input_wire, "audio.input.format")) return *e;
    if (audio.contains("output") && audio["output"].is_object() && audio["output"].contains("format"))
      if (auto e = read_wire(audio["output"]["format"], u.output_wire, "audio.output.format")) return *e;
    if (audio.contains("output") && audio["output"].is_object() && audio["output"].contains("voice") && audio["output"]["voice"].is_string())
      u.voice = audio["output"]["voice"].get<std::string>();
  }
  for (const char* key : {"modalities", "output_modalities"})
    if (s.contains(key))
      if (auto e = read_modalities(s[key], key, u.modalities)) return *e;
  if (s.contains("tutti")) {
    const json& t = s["tutti"];
    if (!t.is_object()) return Invalid{"'tutti' must be an object"};
    if (t.contains("binary_audio")) {
      if (t["binary_audio"].is_null() || t["binary_audio"] == "none") u.binary_opus = false;
      else if (t["binary_audio"] == "opus") u.binary_opus = true;
      else return Invalid{"'tutti.binary_audio' must be opus or none"};
    }
  }
  if (s.contains("turn_detection")) {
    if (auto e = read_turn_detection(s["turn_detection"], u)) return *e;
  } else if (audio_in.is_object() && audio_in.contains("turn_detection")) {
    if (auto e = read_turn_detection(audio_in["turn_detection"], u)) return *e;
  }
  return u;
}

std::variant<ItemCreate, EventError> read_item(const json& ev, const std::string& event_id) {
  const json item = ev.value("item", json::object());
  const auto invalid = EventError{"invalid_item", "only message items with role user, system or assistant are supported", event_id};
  if (!item.is_object() || item.value("type", "message") != "message") return invalid;
  ItemCreate c;
  c.role = item.value("role", "user");
  if (c.role != "user" && c.role != "system" && c.role != "assistant") return invalid;
  c.id = item.value("id", "");
  const json content = item.value("content", json::array());
  if (!content.is_array()) return EventError{"invalid_value", "'item.content' must be an array", event_id};
  for (const json& part : content) {
    if (!part.is_object()) continue;
    const std::string t = part.value("type", "");
    if (t == "input_text" || t == "text" || t == "output_text") c.text += part.value("text", "");
    if (t == "input_image") {  // {"image_url": "data:image/png;base64,..."} or {"image": base64}
      std::string data = part.contains("image_url") && part["image_url"].is_string() ? part["image_url"].get<std::string>()
                                                                                      : part.value("image", "");
      if (data.rfind("data:", 0) == 0 && data.find(',') != std::string::npos) data = data.substr(data.find(',') + 1);
      c.images_base64.push_back(std::move(data));
    }
  }
  if (c.text.empty() && c.images_base64.empty())
    return EventError{"empty_item", "the item has no text or image content", event_id};
  return c;
}

std::variant<ClientEvent, EventError> parse_object(const json& ev) {
  const std::string event_id = ev.contains("event_id") && ev["event_id"].is_string() ? ev["event_id"].get<std::string>() : "";
  if (!ev.contains("type") || !ev["type"].is_string()) return EventError{"missing_type", "the event has no 'type'", event_id};
  const std::string type = ev["type"];
  auto event = [&](ClientEventBody body) { return ClientEvent{event_id, std::move(body)}; };
  if (type == "session.update") {
    auto u = read_session_update(ev.value("session", json::object()));
    if (auto* e = std::get_if<Invalid>(&u)) return EventError{"invalid_value", e->message, event_id};
    return event(std::get<SessionUpdate>(std::move(u)));
  }
  if (type == "conversation.item.create") {
    auto item = read_item(ev, event_id);
    if (auto* e = std::get_if<EventError>(&item)) return *e;
    return event(std::get<ItemCreate>(std::move(item)));
  }
  if (type == "response.create") {
    const json resp = ev.value("response", json::object());
    if (!resp.is_object()) return EventError{"invalid_value", "'response' must be an object", event_id};
    ResponseCreate r;
    for (const char* key : {"modalities", "output_modalities"})
      if (resp.contains(key) && resp[key].is_array()) {
        r.modalities.emplace();
        for (const json& x : resp[key])
          if (x.is_string()) r.modalities->push_back(x);
      }
    for (const char* key : {"max_response_output_tokens", "max_output_tokens"})
      if (resp.contains(key) && !resp[key].is_null())
        if (auto e = read_max_tokens(resp[key], key, r.max_output_tokens)) return EventError{"invalid_value", e->message, event_id};
    if (resp.contains("tutti")) r.tutti = resp["tutti"];
    return event(std::move(r));
  }
  auto item_id = [&]() -> std::optional<std::string> {
    if (!ev.contains("item_id") || !ev["item_id"].is_string() || ev["item_id"].get<std::string>().empty()) return std::nullopt;
    return ev["item_id"].get<std::string>();
  };
  if (type == "conversation.item.retrieve" || type == "conversation.item.delete" || type == "conversation.item.truncate") {
    auto id = item_id();
    if (!id) return EventError{"missing_item_id", "'item_id' must be a non-empty string", event_id};
    if (type == "conversation.item.retrieve") return event(ItemRetrieve{*id});
    if (type == "conversation.item.delete") return event(ItemDelete{*id});
    ItemTruncate t{*id};
    if (!ev.contains("audio_end_ms") || !ev["audio_end_ms"].is_number_integer() || ev["audio_end_ms"].get<int64_t>() < 0)
      return EventError{"invalid_value", "'audio_end_ms' must be a non-negative integer", event_id};
    t.audio_end_ms = ev["audio_end_ms"].get<int64_t>();
    t.content_index = ev.value("content_index", 0);
    return event(t);
  }
  if (type == "output_audio_buffer.clear") return event(OutputAudioBufferClear{});
  if (type == "input_audio_buffer.append") {
    if (!ev.contains("audio") || !ev["audio"].is_string())
      return EventError{"missing_audio", "'audio' must be a base64 string", event_id};
    return event(AudioAppend{ev["audio"].get<std::string>()});
  }
  if (type == "input_audio_buffer.commit") return event(AudioCommit{});
  if (type == "input_audio_buffer.clear") return event(AudioClear{});
  if (type == "response.cancel") return event(ResponseCancel{});
  return EventError{"unknown_event", "unknown event type '" + type + "'", event_id};
}

}  // namespace

int semantic_vad_silence_ms(const std::string& eagerness) {
  if (eagerness == "low") return 1000;
  if (eagerness == "medium" || eagerness == "auto") return 600;
  if (eagerness == "high") return 250;
  return -1;
}

std::variant<ClientEvent, EventError> parse_client_event(std::string_view text) {
  const json ev = json::parse(text, nullptr, false);
  if (ev.is_discarded() || !ev.is_object()) return EventError{"invalid_json", "the message is not a JSON object", ""};
  try {
    return parse_object(ev);
  } catch (const json::exception& e) {  // a field of the wrong type (json::value on a mismatch)
    const std::string event_id = ev.contains("event_id") && ev["event_id"].is_string() ? ev["event_id"].get<std::string>() : "";
    return EventError{"invalid_value", std::string("a field has the wrong type: ") + e.what(), event_id};
  }
}

std::optional<BinaryMessage> parse_binary_message(std::string_view msg) {
  if (msg.empty()) return std::nullopt;
  const auto kind = BinaryKind(uint8_t(msg[0]));
  if (kind != BinaryKind::AudioIn && kind != BinaryKind::VideoIn) return std::nullopt;
  return BinaryMessage{kind, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(msg.data()) + 1, msg.size() - 1)};
}

std::string choose_subprotocol(std::string_view offered) {
  std::string chosen;
  while (!offered.empty()) {
    const size_t comma = offered.find(',');
    std::string_view p = offered.substr(0, comma);
    offered = comma == std::string_view::npos ? std::string_view() : offered.substr(comma + 1);
    while (!p.empty() && (p.front() == ' ' || p.front() == '\t')) p.remove_prefix(1);
    while (!p.empty() && (p.back() == ' ' || p.back() == '\t')) p.remove_suffix(1);
    if (p.empty() || p.rfind("openai-insecure-api-key.", 0) == 0) continue;
    if (p == "realtime") return std::string(p);
    if (chosen.empty()) chosen = p;
  }
  return chosen;
}

}  // namespace tutti::http::realtime
