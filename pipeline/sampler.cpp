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
    auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
    size_t n = candidates_.size();
    if (params_.top_k > 0 && size_t(params_.top_k) < n) {
      std::partial_sort(candidates_.begin(), candidates_.begin() + params_.top_k, candidates_.end(), by_logit);
      n = size_t(params_.top_k);
    } else {
      std::sort(candidates_.begin(), candidates_.end(), by_logit);
    }
    // Softmax at temperature over the n best.
    const float max_logit = candidates_[0].first;
    std::vector<double> probs(n);
    double sum = 0;
    for (size_t i = 0; i < n; ++i) sum += probs[i] = std::exp(double(candidates_[i].first - max_logit) / params_.temperature);
    for (double& p : probs) p /= sum;
    // min-p: drop tokens below min_p times the best probability.
    if (params_.min_p > 0.f) {
      size_t keep = 1;
      while (keep < n && probs[keep] >= params_.min_p * probs[0]) ++keep;
      n = keep;
    }
    // top-p: smallest prefix whose mass reaches top_p.
    if (params_.top_p < 1.f) {
      double mass = 0;
      size_t keep = 0;
      while (keep < n) {
        mass += probs[keep++];
        if (mass >= params_.top_p) break;
      }
      n = keep;
    }
    double total = 0;
    for (size_t i = 0; i < n; ++i) total += probs[i];
    std::uniform_real_distribution<double> u(0.0, total);
    double r = u(rng_);
    chosen = candidates_[n - 1].second;
    for (size_t i = 0; i < n; ++i) {
      r -= probs[i];
      if (r <= 0) {
        chosen = candidates_[i].second;
        break;
      }
    }
  }
  accept(chosen);
  return chosen;
}

}  // namespace tutti
