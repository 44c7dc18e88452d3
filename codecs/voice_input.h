// The input side of a spoken conversation, as plain classes: energy-based voice activity
// detection, and the buffered input of one conversation (a Realtime session, a ZeroMQ
// stream job) turned into audio tokens as it arrives. No sockets or actors: the realtime
// session and stream jobs use these, the tests drive them directly.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "codecs/audio_codec.h"
#include "pipeline/model_config.h"

namespace tutti::codecs {

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
  VoiceInput(const ModalityInfo& audio, std::shared_ptr<const AudioCodec> codec, std::optional<VadConfig> vad);
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
  std::shared_ptr<const AudioCodec> codec_;
  std::optional<VadConfig> vad_config_;
  std::optional<VoiceActivityDetector> vad_;
  std::unique_ptr<AudioCodeEncoder> encoder_;
  std::vector<int32_t> codes_;
  int64_t samples_ = 0, base_ms_ = 0;
};

}  // namespace tutti::codecs
