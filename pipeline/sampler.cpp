#include "pipeline/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace tutti {

Status validate(const SamplingParams& p, int n_vocab) {
  if (!(p.temperature >= 0.f) || !std::isfinite(p.temperature)) return Error{"temperature must be >= 0"};
  if (p.top_k < 0) return Error{"top_k must be >= 0"};
  if (!(p.top_p > 0.f && p.top_p <= 1.f)) return Error{"top_p must be in (0, 1]"};
  if (!(p.min_p >= 0.f && p.min_p <= 1.f)) return Error{"min_p must be in [0, 1]"};
  if (!(p.repetition_penalty > 0.f) || !std::isfinite(p.repetition_penalty)) return Error{"repetition_penalty must be > 0"};
  if (p.repetition_window < 0) return Error{"repetition window must be >= 0"};
  for (auto& r : p.allowed)
    if (r.begin < 0 || r.end > n_vocab || r.begin >= r.end) return Error{"allowed token range is outside the vocabulary"};
  for (int32_t t : p.stop_tokens)
    if (t < 0 || t >= n_vocab) return Error{"stop token " + std::to_string(t) + " is outside the vocabulary"};
  return Status::Ok();
}

Sampler::Sampler(SamplingParams params) : params_(std::move(params)), rng_(params_.seed) {}

// Temperature sampling with the optional top-k / min-p / top-p cuts, over candidates_.
// Costs O(n) unless a cut needs the candidates in order, and then sorts only as far as the
// cut reaches (a vocabulary has tens of thousands of candidates, and this runs per token).
int32_t Sampler::sample_tempered() {
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t n = candidates_.size();
  if (params_.top_k > 0 && size_t(params_.top_k) < n) {
    std::partial_sort(candidates_.begin(), candidates_.begin() + params_.top_k, candidates_.end(), by_logit);
    n = size_t(params_.top_k);
  }
  float max_logit = candidates_[0].first;
  for (size_t i = 0; i < n; ++i) max_logit = std::max(max_logit, candidates_[i].first);
  // Weights exp((logit - max) / T), stored in place of the logits.
  const float inv_t = 1.0f / params_.temperature;
  double total = 0;
  for (size_t i = 0; i < n; ++i) {
    candidates_[i].first = std::exp((candidates_[i].first - max_logit) * inv_t);
    total += candidates_[i].first;
  }
  // min-p: drop weights below min_p times the best (the best has weight 1).
  if (params_.min_p > 0.f) {
    size_t kept = 0;
    total = 0;
    for (size_t i = 0; i < n; ++i)
      if (candidates_[i].first >= params_.min_p) {
        candidates_[kept++] = candidates_[i];
        total += candidates_[i].first;
      }
    n = kept;
  }
  // top-p: the smallest set of the most likely whose mass reaches top_p. Sort a prefix,
  // widening it until the mass is reached.
  if (params_.top_p < 1.f) {
    auto heavier = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
    const double target = params_.top_p * total;
    size_t sorted = 0;
    for (size_t width = 64;; width *= 8) {
      const size_t w = std::min(width, n);
      std::partial_sort(candidates_.begin() + long(sorted), candidates_.begin() + long(w), candidates_.begin() + long(n), heavier);
      sorted = w;
      double mass = 0;
      size_t keep = 0;
      while (keep < sorted) {
        mass += candidates_[keep++].first;
        if (mass >= target) break;
      }
      if (mass >= target || sorted == n) {
        n = keep;
        total = mass;
        break;
      }
    }
  }
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= candidates_[i].first;
    if (r <= 0) return candidates_[i].second;
  }
  return candidates_[n - 1].second;
}

bool Sampler::is_stop(int32_t token) const {
  return std::find(params_.stop_tokens.begin(), params_.stop_tokens.end(), token) != params_.stop_tokens.end();
}

void Sampler::accept(int32_t token) {
  if (params_.repetition_window == 0) return;
  recent_.push_back(token);
  while (int(recent_.size()) > params_.repetition_window) recent_.pop_front();
}

int32_t Sampler::sample(const float* logits, int n_vocab) {
  // Candidates: allowed tokens with penalised logits.
  candidates_.clear();
  auto consider = [&](int32_t b, int32_t e) {
    for (int32_t t = b; t < e; ++t) candidates_.push_back({logits[t], t});
  };
  if (params_.allowed.empty())
    consider(0, n_vocab);
  else
    for (auto& r : params_.allowed) consider(std::max(0, r.begin), std::min(n_vocab, r.end));
  if (candidates_.empty()) return -1;
  if (params_.repetition_penalty != 1.f && !recent_.empty()) {
    for (auto& [logit, t] : candidates_)
      if (std::find(recent_.begin(), recent_.end(), t) != recent_.end())
        logit = logit > 0 ? logit / params_.repetition_penalty : logit * params_.repetition_penalty;
  }

  int32_t chosen;
  if (params_.temperature <= 0.f) {
    // Greedy: highest logit, lowest id on ties.
    auto best = candidates_.begin();
    for (auto it = candidates_.begin(); it != candidates_.end(); ++it)
      if (it->first > best->first || (it->first == best->first && it->second < best->second)) best = it;
    chosen = best->second;
  } else {
    chosen = sample_tempered();
  }
  accept(chosen);
  return chosen;
}

}  // namespace tutti
