#include "actors/http/realtime/server_events.hpp"

#include <algorithm>

namespace tutti::http::realtime {

namespace {
json at_output(const char* type, const OutputRef& at) {
  return {{"type", type}, {"response_id", at.response_id}, {"item_id", at.item_id}, {"output_index", 0}, {"content_index", 0}};
}
json nullable(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }
}  // namespace

json session_created(json session) { return {{"type", "session.created"}, {"session", std::move(session)}}; }
json session_updated(json session) { return {{"type", "session.updated"}, {"session", std::move(session)}}; }

json message_item(const std::string& item_id, const std::string& role, json content, const char* status) {
  return {{"id", item_id}, {"object", "realtime.item"}, {"type", "message"}, {"role", role}, {"status", status}, {"content", std::move(content)}};
}
json text_part(const std::string& text) { return {{"type", "input_text"}, {"text", text}}; }
json output_text_part(Dialect d, const std::string& text) { return {{"type", d == Dialect::Beta ? "text" : "output_text"}, {"text", text}}; }
json audio_part() { return {{"type", "input_audio"}, {"transcript", nullptr}}; }
json output_audio_part(Dialect d, const std::string& transcript) {
  return {{"type", d == Dialect::Beta ? "audio" : "output_audio"}, {"transcript", transcript}};
}
json image_part() { return {{"type", "input_image"}}; }

json item_added(Dialect d, json item, const std::string& previous_item_id) {
  return {{"type", d == Dialect::Beta ? "conversation.item.created" : "conversation.item.added"},
          {"previous_item_id", nullable(previous_item_id)}, {"item", std::move(item)}};
}
json item_done(json item, const std::string& previous_item_id) {
  return {{"type", "conversation.item.done"}, {"previous_item_id", nullable(previous_item_id)}, {"item", std::move(item)}};
}
json item_retrieved(json item) { return {{"type", "conversation.item.retrieved"}, {"item", std::move(item)}}; }
json item_deleted(const std::string& item_id) { return {{"type", "conversation.item.deleted"}, {"item_id", item_id}}; }
json item_truncated(const std::string& item_id, int content_index, int64_t audio_end_ms) {
  return {{"type", "conversation.item.truncated"}, {"item_id", item_id}, {"content_index", content_index}, {"audio_end_ms", audio_end_ms}};
}

json speech_started(int64_t ms, const std::string& item_id) {
  return {{"type", "input_audio_buffer.speech_started"}, {"audio_start_ms", ms}, {"item_id", item_id}};
}
json speech_stopped(int64_t ms, const std::string& item_id) {
  return {{"type", "input_audio_buffer.speech_stopped"}, {"audio_end_ms", ms}, {"item_id", item_id}};
}
json audio_committed(const std::string& previous_item_id, const std::string& item_id) {
  return {{"type", "input_audio_buffer.committed"}, {"previous_item_id", nullable(previous_item_id)}, {"item_id", item_id}};
}
json audio_cleared() { return {{"type", "input_audio_buffer.cleared"}}; }
json audio_timeout_triggered(int64_t audio_start_ms, int64_t audio_end_ms, const std::string& item_id) {
  return {{"type", "input_audio_buffer.timeout_triggered"}, {"audio_start_ms", audio_start_ms}, {"audio_end_ms", audio_end_ms},
          {"item_id", item_id}};
}

json response_object(Dialect d, const std::string& response_id, const char* status, const std::vector<std::string>& modalities,
                     json output, const ResponseUsage* u, int max_output_tokens) {
  json r = {{"id", response_id}, {"object", "realtime.response"}, {"status", status}, {"status_details", nullptr},
            {"output", std::move(output)}, {"max_output_tokens", max_output_tokens}};
  r[d == Dialect::Beta ? "modalities" : "output_modalities"] = modalities;
  if (!u) {
    r["usage"] = nullptr;
    return r;
  }
  json out_details = {{"text_tokens", u->output == Modality::Text ? u->output_tokens : 0},
                      {"audio_tokens", u->output == Modality::Audio ? u->output_tokens : 0}};
  if (u->output == Modality::Video) out_details["tutti.video_tokens"] = u->output_tokens;
  r["usage"] = {{"input_tokens", u->input_tokens}, {"output_tokens", u->output_tokens}, {"total_tokens", u->input_tokens + u->output_tokens},
                {"input_token_details",
                 {{"text_tokens", std::max(0, u->input_tokens - u->input_audio_tokens)}, {"audio_tokens", u->input_audio_tokens}}},
                {"output_token_details", out_details}};
  if (std::string(status) == "incomplete") r["status_details"] = {{"type", "incomplete"}, {"reason", "max_output_tokens"}};
  if (std::string(status) == "cancelled") r["status_details"] = {{"type", "cancelled"}, {"reason", "client_cancelled"}};
  return r;
}
json response_created(json response) { return {{"type", "response.created"}, {"response", std::move(response)}}; }
json response_done(json response) { return {{"type", "response.done"}, {"response", std::move(response)}}; }

json output_item_added(const OutputRef& at, json item) {
  return {{"type", "response.output_item.added"}, {"response_id", at.response_id}, {"output_index", 0}, {"item", std::move(item)}};
}
json output_item_done(const OutputRef& at, json item) {
  return {{"type", "response.output_item.done"}, {"response_id", at.response_id}, {"output_index", 0}, {"item", std::move(item)}};
}
json content_part_added(const OutputRef& at, json part) {
  json e = at_output("response.content_part.added", at);
  e["part"] = std::move(part);
  return e;
}
json content_part_done(const OutputRef& at, json part) {
  json e = at_output("response.content_part.done", at);
  e["part"] = std::move(part);
  return e;
}
json output_text_delta(const OutputRef& at, const std::string& delta) {
  json e = at_output("response.output_text.delta", at);
  e["delta"] = delta;
  return e;
}
json output_text_done(const OutputRef& at, const std::string& text) {
  json e = at_output("response.output_text.done", at);
  e["text"] = text;
  return e;
}
json output_audio_delta(const OutputRef& at, const std::string& base64) {
  json e = at_output("response.output_audio.delta", at);
  e["delta"] = base64;
  return e;
}
json output_audio_done(const OutputRef& at) { return at_output("response.output_audio.done", at); }
json output_audio_transcript_delta(const OutputRef& at, const std::string& delta) {
  json e = at_output("response.output_audio_transcript.delta", at);
  e["delta"] = delta;
  return e;
}
json output_audio_transcript_done(const OutputRef& at, const std::string& transcript) {
  json e = at_output("response.output_audio_transcript.done", at);
  e["transcript"] = transcript;
  return e;
}
json output_audio_buffer(const char* what, const std::string& response_id) {
  return {{"type", std::string("output_audio_buffer.") + what}, {"response_id", response_id}};
}
json output_video_delta(const OutputRef& at, int frame_index, const std::string& jpeg_base64) {
  json e = at_output("tutti.response.output_video.delta", at);
  e["frame_index"] = frame_index;
  e["content_type"] = "image/jpeg";
  e["delta"] = jpeg_base64;
  return e;
}
json output_video_done(const OutputRef& at, int frames) {
  json e = at_output("tutti.response.output_video.done", at);
  e["frames"] = frames;
  return e;
}

json rate_limits_updated(const std::vector<RateLimit>& limits) {
  json list = json::array();
  for (const RateLimit& l : limits)
    list.push_back({{"name", l.name}, {"limit", l.limit}, {"remaining", l.remaining}, {"reset_seconds", l.reset_seconds}});
  return {{"type", "rate_limits.updated"}, {"rate_limits", list}};
}

}  // namespace tutti::http::realtime
