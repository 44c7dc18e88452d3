#include "codecs/audio_tokenizer.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace tutti::codecs {

AudioEncoder::AudioEncoder(int frame_size, std::shared_ptr<const Codebooks> codebooks)
    : mdct_(frame_size), cb_(std::move(codebooks)), coefficients_(size_t(frame_size)) {}

std::vector<int32_t> AudioEncoder::encode_frame(std::span<const float> frame) {
  mdct_.push(frame, coefficients_);
  std::vector<int32_t> codes(size_t(cb_->stages));
  rvq_encode(*cb_, coefficients_, codes);
  return codes;
}

std::vector<int32_t> AudioEncoder::push(std::span<const float> samples) {
  std::vector<int32_t> out;
  pending_.insert(pending_.end(), samples.begin(), samples.end());
  const size_t n = size_t(frame_size());
  size_t at = 0;
  for (; at + n <= pending_.size(); at += n) {
    const auto codes = encode_frame(std::span<const float>(pending_.data() + at, n));
    out.insert(out.end(), codes.begin(), codes.end());
  }
  pending_.erase(pending_.begin(), pending_.begin() + long(at));
  return out;
}

std::vector<int32_t> AudioEncoder::finish() {
  const size_t n = size_t(frame_size());
  std::vector<int32_t> out;
  if (!pending_.empty()) {
    pending_.resize(n, 0.f);
    out = encode_frame(pending_);
    pending_.clear();
  }
  const std::vector<float> silence(n, 0.f);
  const auto tail = encode_frame(silence);
  out.insert(out.end(), tail.begin(), tail.end());
  return out;
}

AudioDecoder::AudioDecoder(int frame_size, std::shared_ptr<const Codebooks> codebooks)
    : mdct_(frame_size), cb_(std::move(codebooks)), coefficients_(size_t(frame_size)) {}

std::vector<float> AudioDecoder::push(std::span<const int32_t> codes) {
  std::vector<float> out;
  pending_.insert(pending_.end(), codes.begin(), codes.end());
  const size_t stages = size_t(cb_->stages), n = size_t(mdct_.n());
  size_t at = 0;
  std::vector<float> frame(n);
  for (; at + stages <= pending_.size(); at += stages) {
    rvq_decode(*cb_, std::span<const int32_t>(pending_.data() + at, stages), coefficients_);
    mdct_.push(coefficients_, frame);
    // The analysis frame j spans samples [(j-1)N, (j+1)N): the first synthesized block
    // completes samples before the stream began.
    if (!primed_) {
      primed_ = true;
      continue;
    }
    out.insert(out.end(), frame.begin(), frame.end());
  }
  pending_.erase(pending_.begin(), pending_.begin() + long(at));
  return out;
}

std::vector<float> AudioDecoder::finish() {
  if (!primed_) return {};
  std::vector<float> frame(size_t(mdct_.n()));
  std::fill(coefficients_.begin(), coefficients_.end(), 0.f);
  mdct_.push(coefficients_, frame);
  return frame;
}

std::vector<int32_t> codes_to_tokens(const ModalityInfo& m, std::span<const int32_t> codes) {
  std::vector<int32_t> t(codes.size());
  for (size_t i = 0; i < codes.size(); ++i)
    t[i] = int32_t(m.slot_offset(uint32_t(i) % m.num_stages) + uint32_t(codes[i]));
  return t;
}

Expected<std::vector<int32_t>> tokens_to_codes(const ModalityInfo& m, std::span<const int32_t> tokens) {
  std::vector<int32_t> c(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    const uint32_t slot = uint32_t(i % m.num_stages);
    const int64_t rel = int64_t(tokens[i]) - int64_t(m.slot_offset(slot));
    if (rel < 0 || rel >= int64_t(m.codebook_size))
      return Error{"token " + std::to_string(tokens[i]) + " is not a slot-" + std::to_string(slot) + " code of " +
                   modality_name(m.modality)};
    c[i] = int32_t(rel);
  }
  return c;
}

double segmental_snr_db(std::span<const float> ref, std::span<const float> dec, int frame, double silence) {
  const size_t n = std::min(ref.size(), dec.size());
  double total = 0;
  int frames = 0;
  for (size_t at = 0; at + size_t(frame) <= n; at += size_t(frame)) {
    double sig = 0, err = 0;
    for (size_t i = at; i < at + size_t(frame); ++i) {
      sig += double(ref[i]) * ref[i];
      err += (double(dec[i]) - ref[i]) * (double(dec[i]) - ref[i]);
    }
    if (sig / frame < silence) continue;
    total += std::clamp(10 * std::log10(sig / std::max(err, 1e-20)), -10.0, 35.0);
    ++frames;
  }
  return frames ? total / frames : 0;
}

}  // namespace tutti::codecs
