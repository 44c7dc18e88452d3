// The media endpoints as plain functions and classes (no sockets, no actors): request
// parsing for /v1/audio/speech, /v1/music/generations, /v1/images/generations and
// /v1/videos, each into a generation request of the right modality and length (or an error
// naming the field), and MediaOutput, which turns a media answer's deltas into the
// response's bytes (audio streamed in its format, an image as PNG, video as MP4).
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "actors/http/openai.hpp"
#include "codecs/media_encoder.h"
#include "codecs/rvq.h"
#include "pipeline/model_config.h"

namespace tutti::http {

enum class MediaKind { Speech, Music, Image, Video };

struct MediaRequest {
  MediaKind kind = MediaKind::Speech;
  actors::text_request request;  // prompt, modality, max_tokens (codes), sampling
  codecs::AudioFormat audio_format = codecs::AudioFormat::Mp3;  // speech, music
  int out_width = 0, out_height = 0;  // image, video: the size asked for (frames are scaled)
  int n = 1;                          // images
  bool sse = false;                   // speech: stream_format "sse" (speech.audio.delta events)
  double seconds = 0;                 // music, video: length asked for; speech: the longest allowed
  std::string model;
};

// Parses a body for `kind` against the model's modality table; the request's id is left 0.
// Limits: speech input up to 4096 characters; music and video up to max_seconds.
// The prompt of a speech request in the model's audio layout: Orpheus's own format
// (`voice: text` between its turn tokens, OpenAI voice names mapped to its speakers) or
// tutti's (voice, speed and text on lines).
std::string speech_prompt(const ModalityInfo& audio, const std::string& voice, double speed, const std::string& text);
std::string orpheus_voice(const std::string& voice);

// The request's class is default_class unless the body says "tutti": {"class":
// "interactive" | "batch"}.
std::variant<MediaRequest, ApiError> parse_media_request(MediaKind kind, const std::string& body, const ModalityTable& modalities,
                                                         const ServedModel& served_model, double max_seconds = 30,
                                                         RequestClass default_class = RequestClass::Batch);

// What one media delta turned into: bytes for the response body (possibly none yet).
struct MediaChunk {
  std::vector<uint8_t> bytes;
  bool done = false;
  // This output's own failure (the answer could not be encoded, an image that ended early);
  // why the generation ended is the delta's finish and code (Generation reads both).
  std::string error;
  int frames = 0;        // frames (images, video) finished so far
  std::vector<int32_t> tokens;  // the generated ids this chunk covers (what a conversation keeps of the answer)
};

class MediaOutput {
 public:
  virtual ~MediaOutput() = default;
  virtual MediaChunk on_delta(const actors::media_delta& d) = 0;
};
// An audio answer encoded into `format` as it arrives.
std::unique_ptr<MediaOutput> make_audio_output(codecs::AudioFormat format, int sample_rate);
// One image: the finished frame scaled to width x height, as PNG bytes.
std::unique_ptr<MediaOutput> make_image_output(int width, int height);
// A video: frames scaled to width x height, H.264 in fragmented MP4 (or "mpegts").
std::unique_ptr<MediaOutput> make_video_output(int width, int height, double fps, const std::string& container = "mp4");

std::string base64_encode(const std::vector<uint8_t>& bytes);

// An image (PNG, JPEG: anything FFmpeg decodes; its first frame) as a span of video tokens:
// the video modality's begin token, one code per patch and stage at its frame size, the end
// token. Video in for conversations.
Expected<std::vector<int32_t>> image_to_video_tokens(std::span<const uint8_t> image, const ModalityInfo& video,
                                                     const codecs::Codebooks& books);

}  // namespace tutti::http
