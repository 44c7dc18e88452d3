// The server side of the Realtime event grammar: one typed builder per event the server
// sends, so the session's code says what it tells the client and the JSON shapes live here
// once. (The client side is realtime_events.hpp.) The connection stamps each with its
// event_id when it is queued.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "pipeline/request_kinds.h"

namespace tutti::http::realtime {

using json = nlohmann::json;

// Where a response's output belongs: the response and the assistant item it fills.
struct OutputRef {
  std::string response_id, item_id;
};

json session_created(json session);
json session_updated(json session);

// A message item with its content parts (input_text, input_audio, input_image).
json item_created(const std::string& item_id, const std::string& role, json content);
json text_part(const std::string& text);
json audio_part();
json image_part();

json speech_started(int64_t audio_start_ms, const std::string& item_id);
json speech_stopped(int64_t audio_end_ms, const std::string& item_id);
json audio_committed(const std::string& previous_item_id, const std::string& item_id);
json audio_cleared();
json item_truncated(const std::string& item_id, int64_t audio_end_ms);

json response_created(const std::string& response_id, const std::vector<std::string>& modalities);
json output_text_delta(const OutputRef& at, const std::string& delta);
json output_text_done(const OutputRef& at, const std::string& text);
json output_audio_delta(const OutputRef& at, const std::string& base64);
json output_audio_done(const OutputRef& at);
json output_audio_transcript_done(const OutputRef& at);
// tutti extension: a video answer's frames as JPEG.
json output_video_delta(const OutputRef& at, int frame_index, const std::string& jpeg_base64);
json output_video_done(const OutputRef& at, int frames);

// response.done: the status (completed | incomplete | cancelled | failed) and the usage,
// split into text and media tokens each way.
struct ResponseUsage {
  int32_t input_tokens = 0, output_tokens = 0;
  int32_t input_audio_tokens = 0;  // of input_tokens; the rest are text
  Modality output = Modality::Text;
};
json response_done(const std::string& response_id, const char* status, const std::vector<std::string>& modalities,
                   const ResponseUsage& usage);

}  // namespace tutti::http::realtime
