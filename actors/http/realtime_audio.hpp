// Audio on the Realtime WebSocket, as plain functions: the wire formats (PCM16 little-endian
// 24 kHz mono, G.711 µ-law and A-law at 8 kHz, all base64 inside JSON), and server voice
// activity detection. No sockets here; the realtime session uses these.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "actors/http/media.hpp"
#include "codecs/audio_codec.h"
#include "codecs/audio_tokenizer.h"
#include "pipeline/expected.h"

namespace tutti::http {

enum class AudioWire { Pcm16, G711Ulaw, G711Alaw };
// Accepts both spellings clients use: "pcm16" | "g711_ulaw" | "g711_alaw", and
// {"type": "audio/pcm", "rate": 24000} | {"type": "audio/pcmu"} | {"type": "audio/pcma"}.
std::optional<AudioWire> parse_audio_wire(const nlohmann::json& v);
const char* audio_wire_name(AudioWire w);
int audio_wire_rate(AudioWire w);  // 24000 for PCM16, 8000 for G.711

// base64 (RFC 4648, padding optional) to bytes; an Error for any other character.
Expected<std::vector<uint8_t>> base64_decode(const std::string& text);
// Samples in [-1, 1] at the wire's rate from a wire payload, and back (base64 text).
Expected<std::vector<float>> decode_wire_audio(const std::string& base64, AudioWire w);
std::string encode_wire_audio(std::span<const float> samples, AudioWire w);
// Linear resampling between rates (G.711's 8 kHz and the model's 24 kHz: integer ratios).
std::vector<float> resample_linear(std::span<const float> in, int from_rate, int to_rate);

// The binary framing (a tutti extension, `session.update` {"tutti": {"binary_audio":
// "opus"}}): binary WebSocket messages whose first byte is the kind, then the payload.
enum class BinaryKind : uint8_t { AudioIn = 1, AudioOut = 2, VideoIn = 3, VideoOut = 4 };
// An audio answer as Opus packets (48 kHz mono, 20 ms): chunk.bytes holds them each behind
// a 2-byte little-endian length; chunk.frames counts the 24 kHz samples they carry.
std::unique_ptr<MediaOutput> make_opus_audio_output(int model_rate);
// A video answer as JPEG frames (video out on the WebSocket): chunk.bytes holds each finished
// frame's JPEG behind a 4-byte little-endian length; chunk.frames counts the frames.
std::unique_ptr<MediaOutput> make_jpeg_frame_output();
// The pieces of chunk.bytes, each behind a little-endian length of `length_bytes` (2 for
// Opus packets, 4 for JPEG frames).
std::vector<std::string> split_length_prefixed(const std::vector<uint8_t>& bytes, int length_bytes = 2);

// An audio answer as Realtime deltas: each chunk's bytes are the base64 of its samples in
// the wire format (resampled to 8 kHz for G.711), chunk.frames the number of 24 kHz samples.
std::unique_ptr<MediaOutput> make_wire_audio_output(AudioWire w, int model_rate);

uint8_t linear_to_ulaw(int16_t s);
int16_t ulaw_to_linear(uint8_t u);
uint8_t linear_to_alaw(int16_t s);
int16_t alaw_to_linear(uint8_t a);

// Server VAD over 20 ms frames of 24 kHz audio: a frame is speech when its level exceeds a
// threshold mapped from the API's 0..1 `threshold` (0.5 → -35 dBFS; this is an energy
// detector, not a neural one). Speech starts at the first speech frame and stops after
// silence_duration_ms of non-speech; the committed audio includes prefix_padding_ms before
// the start.
struct VadConfig {
  double threshold = 0.5;
  int prefix_padding_ms = 300;
  int silence_duration_ms = 500;
};
class VoiceActivityDetector {
 public:
  explicit VoiceActivityDetector(VadConfig c, int sample_rate = 24000) : c_(c), rate_(sample_rate) {}
  struct Event {
    bool started = false;  // else stopped
    int64_t at_ms = 0;     // position in the input stream
  };
  // Feeds samples (at the rate it was made for); returns the transitions they cause.
  std::vector<Event> push(std::span<const float> samples);
  bool in_speech() const { return speaking_; }
  void reset();

 private:
  VadConfig c_;
  int rate_;
  std::vector<float> pending_;
  int64_t frames_ = 0, silent_frames_ = 0;
  bool speaking_ = false;
};

// The input audio of one conversation (a Realtime session, a ZeroMQ stream job): samples at
// the codec's rate (sample_rate()) go through the VAD (when turn detection is on) and the audio tokenizer as they
// arrive; a committed turn is the codes from its start (minus the prefix padding) to its
// end, as the modality's vocabulary ids between its begin and end tokens.
class VoiceInput {
 public:
  VoiceInput(const ModalityInfo& audio, std::shared_ptr<const codecs::AudioCodec> codec, std::optional<VadConfig> vad);
  int sample_rate() const { return codec_->sample_rate(); }
  std::vector<VoiceActivityDetector::Event> push(std::span<const float> pcm);
  // Ids of [from_ms, to_ms] (stream time, as the VAD's events give it) of the buffered audio,
  // wrapped in begin/end; empty if that is under 100 ms. Clears the buffer.
  std::vector<int32_t> take(int64_t from_ms, int64_t to_ms);
  // The ids take(from_ms, now) would start with: the begin token and the codes so far (no
  // end token; the buffer stays). What a session prefills while the user is still talking.
  std::vector<int32_t> peek(int64_t from_ms) const;
  void clear();
  // Stream time: where the buffer starts and ends, in ms since the first sample.
  int64_t buffer_start_ms() const { return base_ms_; }
  int64_t buffer_end_ms() const { return base_ms_ + samples_ * 1000 / codec_->sample_rate(); }
  const std::optional<VadConfig>& vad_config() const { return vad_config_; }

 private:
  int64_t first_frame(int64_t from_ms) const;  // the first whole frame from from_ms on
  int64_t frame_at(int64_t ms) const;           // the frame stream time ms falls in

  ModalityInfo m_;
  std::shared_ptr<const codecs::AudioCodec> codec_;
  std::optional<VadConfig> vad_config_;
  std::optional<VoiceActivityDetector> vad_;
  std::unique_ptr<codecs::AudioCodeEncoder> encoder_;
  std::vector<int32_t> codes_;
  int64_t samples_ = 0, base_ms_ = 0;
};

}  // namespace tutti::http
