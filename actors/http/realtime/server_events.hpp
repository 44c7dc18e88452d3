// The server side of the Realtime event grammar: one typed builder per event the server
// sends, so the session's code says what it tells the client and the JSON shapes live here
// once. (The client side is realtime_events.hpp.) The connection stamps each with its
// event_id when it is queued.
//
// Two dialects: the GA interface (the default; what openai 7.x and @openai/agents-realtime
// build their state from), and the beta one for clients that still send
// `OpenAI-Beta: realtime=v1` (conversation.item.created, the flat session object). Output
// events (response.output_text.delta, ...) carry the GA names in both.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "pipeline/request_kinds.h"

namespace tutti::http::realtime {

using json = nlohmann::json;

enum class Dialect { Ga, Beta };

// Where a response's output belongs: the response and the assistant item it fills.
struct OutputRef {
  std::string response_id, item_id;
};

json session_created(json session);
json session_updated(json session);

// A message item: {id, object, type: message, role, status, content}.
json message_item(const std::string& item_id, const std::string& role, json content, const char* status = "completed");
json text_part(const std::string& text);                 // input_text
json audio_part();                                       // input_audio (no transcript)
json image_part();                                       // input_image
// An assistant's parts: output_text and output_audio (beta: text and audio).
json output_text_part(Dialect d, const std::string& text);
json output_audio_part(Dialect d, const std::string& transcript);

// An item joined the conversation after previous_item_id (GA: conversation.item.added;
// beta: conversation.item.created); its content is final (conversation.item.done).
json item_added(Dialect d, json item, const std::string& previous_item_id);
json item_done(json item, const std::string& previous_item_id);
json item_retrieved(json item);
json item_deleted(const std::string& item_id);
json item_truncated(const std::string& item_id, int content_index, int64_t audio_end_ms);

json speech_started(int64_t audio_start_ms, const std::string& item_id);
json speech_stopped(int64_t audio_end_ms, const std::string& item_id);
json audio_committed(const std::string& previous_item_id, const std::string& item_id);
json audio_cleared();
// turn_detection.idle_timeout_ms passed without speech since audio_start_ms.
json audio_timeout_triggered(int64_t audio_start_ms, int64_t audio_end_ms, const std::string& item_id);

// The response object of response.created / response.done.
struct ResponseUsage {
  int32_t input_tokens = 0, output_tokens = 0;
  int32_t input_audio_tokens = 0;  // of input_tokens; the rest are text
  Modality output = Modality::Text;
};
json response_object(Dialect d, const std::string& response_id, const char* status, const std::vector<std::string>& modalities,
                     json output, const ResponseUsage* usage, int max_output_tokens);
json response_created(json response);
// response.done: the status (completed | incomplete | cancelled | failed), the output items
// and the usage, split into text and media tokens each way.
json response_done(json response);

json output_item_added(const OutputRef& at, json item);
json output_item_done(const OutputRef& at, json item);
json content_part_added(const OutputRef& at, json part);
json content_part_done(const OutputRef& at, json part);
json output_text_delta(const OutputRef& at, const std::string& delta);
json output_text_done(const OutputRef& at, const std::string& text);
json output_audio_delta(const OutputRef& at, const std::string& base64);
json output_audio_done(const OutputRef& at);
json output_audio_transcript_delta(const OutputRef& at, const std::string& delta);
json output_audio_transcript_done(const OutputRef& at, const std::string& transcript);
// The server's audio for a response started going out, stopped (all sent), or was cleared.
json output_audio_buffer(const char* what, const std::string& response_id);
// tutti extension: a video answer's frames as JPEG.
json output_video_delta(const OutputRef& at, int frame_index, const std::string& jpeg_base64);
json output_video_done(const OutputRef& at, int frames);

// rate_limits.updated: the key's requests and tokens left in the sliding minute (only the
// limits that are configured).
struct RateLimit {
  const char* name;  // requests | tokens
  int64_t limit, remaining;
  double reset_seconds;
};
json rate_limits_updated(const std::vector<RateLimit>& limits);

}  // namespace tutti::http::realtime
