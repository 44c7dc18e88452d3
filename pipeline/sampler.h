// Token sampling from one row of logits: greedy, temperature, top-k, top-p, min-p,
// repetition penalty, a seeded generator for reproducible runs, stop tokens, and token-range
// masks that restrict a sequence to one modality's codes (e.g. audio tokens plus their end
// token). One Sampler per sequence; it holds that sequence's RNG and recent tokens.
#pragma once

#include <cstdint>
#include <deque>
#include <random>
#include <vector>

#include "pipeline/expected.h"
#include "pipeline/token_range.h"

namespace tutti {

struct SamplingParams {
  float temperature = 0.f;  // 0: greedy
  int top_k = 0;            // 0: off
  float top_p = 1.f;        // 1: off
  float min_p = 0.f;        // 0: off
  float repetition_penalty = 1.f;  // 1: off; divides positive logits, multiplies negative ones
  int repetition_window = 64;      // recent tokens the penalty looks at
  uint64_t seed = 0;
  std::vector<int32_t> stop_tokens;
  // When non-empty, only tokens inside one of these ranges may be chosen.
  std::vector<TokenRange> allowed;
};

Status validate(const SamplingParams& p, int n_vocab);

class Sampler {
 public:
  explicit Sampler(SamplingParams params);
  const SamplingParams& params() const { return params_; }
  void set_allowed(std::vector<TokenRange> ranges) { params_.allowed = std::move(ranges); }

  // Chooses a token from logits[n_vocab] and records it for the repetition penalty.
  // Returns -1 only if the mask allows no token at all.
  int32_t sample(const float* logits, int n_vocab);
  void accept(int32_t token);  // records a token chosen elsewhere (e.g. prompt tokens)
  bool is_stop(int32_t token) const;

 private:
  int32_t sample_tempered();

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::deque<int32_t> recent_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

}  // namespace tutti
