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

json item_created(const std::string& item_id, const std::string& role, json content) {
  return {{"type", "conversation.item.created"},
          {"item", {{"id", item_id}, {"type", "message"}, {"role", role}, {"content", std::move(content)}}}};
}
json text_part(const std::string& text) { return {{"type", "input_text"}, {"text", text}}; }
json audio_part() { return {{"type", "input_audio"}, {"transcript", nullptr}}; }
json image_part() { return {{"type", "input_image"}}; }

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
json item_truncated(const std::string& item_id, int64_t audio_end_ms) {
  return {{"type", "conversation.item.truncated"}, {"item_id", item_id}, {"content_index", 0}, {"audio_end_ms", audio_end_ms}};
}

json response_created(const std::string& response_id, const std::vector<std::string>& modalities) {
  return {{"type", "response.created"},
          {"response", {{"id", response_id}, {"object", "realtime.response"}, {"status", "in_progress"}, {"modalities", modalities}}}};
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
json output_audio_transcript_done(const OutputRef& at) {
  json e = at_output("response.output_audio_transcript.done", at);
  e["transcript"] = "";
  return e;
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

json response_done(const std::string& response_id, const char* status, const std::vector<std::string>& modalities,
                   const ResponseUsage& u) {
  json out_details = {{"text_tokens", u.output == Modality::Text ? u.output_tokens : 0},
                      {"audio_tokens", u.output == Modality::Audio ? u.output_tokens : 0}};
  if (u.output == Modality::Video) out_details["tutti.video_tokens"] = u.output_tokens;
  json usage = {{"input_tokens", u.input_tokens}, {"output_tokens", u.output_tokens}, {"total_tokens", u.input_tokens + u.output_tokens},
                {"input_token_details", {{"text_tokens", std::max(0, u.input_tokens - u.input_audio_tokens)}, {"audio_tokens", u.input_audio_tokens}}},
                {"output_token_details", out_details}};
  return {{"type", "response.done"},
          {"response", {{"id", response_id}, {"object", "realtime.response"}, {"status", status}, {"modalities", modalities}, {"usage", usage}}}};
}

}  // namespace tutti::http::realtime
