#include "codecs/voice_input.h"

#include <algorithm>
#include <cmath>

#include "codecs/audio_tokenizer.h"

namespace tutti::codecs {

void VoiceActivityDetector::reset() {
  pending_.clear();
  silent_frames_ = 0;
  speaking_ = false;
}

std::vector<VoiceActivityDetector::Event> VoiceActivityDetector::push(std::span<const float> samples) {
  const int kFrame = rate_ / 50;  // 20 ms
  std::vector<Event> events;
  pending_.insert(pending_.end(), samples.begin(), samples.end());
  const double level_db = -70.0 + 70.0 * std::clamp(c_.threshold, 0.0, 1.0);
  size_t at = 0;
  for (; at + kFrame <= pending_.size(); at += kFrame) {
    double e = 0;
    for (int i = 0; i < kFrame; ++i) e += double(pending_[at + size_t(i)]) * pending_[at + size_t(i)];
    const double db = 10 * std::log10(e / kFrame + 1e-12);
    const bool speech = db > level_db;
    ++frames_;
    if (speech) {
      silent_frames_ = 0;
      if (!speaking_) {
        speaking_ = true;
        events.push_back({true, (frames_ - 1) * 20});
      }
    } else if (speaking_ && ++silent_frames_ * 20 >= c_.silence_duration_ms) {
      speaking_ = false;
      events.push_back({false, frames_ * 20});
    }
  }
  pending_.erase(pending_.begin(), pending_.begin() + long(at));
  return events;
}

VoiceInput::VoiceInput(const ModalityInfo& audio, std::shared_ptr<const AudioCodec> codec, std::optional<VadConfig> vad)
    : m_(audio), codec_(std::move(codec)), vad_config_(vad) {
  if (vad) vad_.emplace(*vad, codec_->sample_rate());
  encoder_ = codec_->encoder();
}

std::vector<VoiceActivityDetector::Event> VoiceInput::push(std::span<const float> pcm) {
  const auto codes = encoder_->push(pcm);
  codes_.insert(codes_.end(), codes.begin(), codes.end());
  samples_ += int64_t(pcm.size());
  return vad_ ? vad_->push(pcm) : std::vector<VoiceActivityDetector::Event>{};
}

int64_t VoiceInput::frame_at(int64_t ms) const {
  return (ms - base_ms_) * codec_->sample_rate() / 1000 / codec_->frame_samples();
}

int64_t VoiceInput::first_frame(int64_t from_ms) const {
  // Frame j covers about input [j N, (j + 1) N) (MDCT: [(j-1) N, (j+1) N)): frames from from_ms on.
  return std::clamp<int64_t>(frame_at(from_ms), 0, int64_t(codes_.size()) / m_.num_stages);
}

std::vector<int32_t> VoiceInput::peek(int64_t from_ms) const {
  const int64_t stages = m_.num_stages, first = first_frame(from_ms);
  std::vector<int32_t> ids = {int32_t(m_.begin_token)};
  const auto tokens = codes_to_tokens(m_, std::span<const int32_t>(codes_.data() + first * stages, codes_.size() - size_t(first * stages)));
  ids.insert(ids.end(), tokens.begin(), tokens.end());
  return ids;
}

std::vector<int32_t> VoiceInput::take(int64_t from_ms, int64_t to_ms) {
  // The encoder's look-ahead still holds the end of the turn: flush it (clear() below
  // starts a new stream).
  const auto tail = encoder_->finish();
  codes_.insert(codes_.end(), tail.begin(), tail.end());
  const int64_t stages = m_.num_stages;
  const int64_t frames = int64_t(codes_.size()) / stages;
  const int64_t first = first_frame(from_ms);
  const int64_t last = std::clamp<int64_t>(frame_at(to_ms) + 1, first, frames);
  std::vector<int32_t> ids;
  if ((last - first) * codec_->frame_samples() * 1000 >= 100 * int64_t(codec_->sample_rate())) {
    ids.push_back(int32_t(m_.begin_token));
    const auto tokens = codes_to_tokens(m_, std::span<const int32_t>(codes_.data() + first * stages, size_t((last - first) * stages)));
    ids.insert(ids.end(), tokens.begin(), tokens.end());
    ids.push_back(int32_t(m_.end_token));
  }
  clear();
  return ids;
}

void VoiceInput::clear() {
  base_ms_ += samples_ * 1000 / codec_->sample_rate();
  codes_.clear();
  samples_ = 0;
  encoder_ = codec_->encoder();
  if (vad_) vad_->reset();
}

}  // namespace tutti::codecs
