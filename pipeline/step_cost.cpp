#include "pipeline/step_cost.h"

#include <cmath>
#include <utility>

namespace tutti {

namespace {
// Features are scaled so that their sums are of similar size in a typical step (a few rows,
// tens to hundreds of prompt tokens, thousands of cached positions); the fit is the same in
// any scale, the conditioning is better.
constexpr double kPrefillScale = 1.0 / 16;
constexpr double kContextScale = 1.0 / 1024;
}  // namespace

StepShape chunk_shape(int start, int n) {
  StepShape s;
  if (n <= 0) return s;
  s.rows = 1;
  s.prefill_tokens = n - 1;
  // Token i of the chunk attends to start + i + 1 positions.
  s.context_tokens = int64_t(n) * start + int64_t(n) * (n + 1) / 2;
  return s;
}

StepCostModel::StepCostModel(double forgetting) : forgetting_(forgetting) {}

StepCostModel::Vec StepCostModel::features(const StepShape& s) {
  return {1.0, double(s.rows), s.prefill_tokens * kPrefillScale, double(s.context_tokens) * kContextScale};
}

double StepCostModel::predict(const StepShape& s) const {
  if (s.empty()) return 0;
  return coef_.base + coef_.per_row * s.rows + coef_.per_prefill_token * s.prefill_tokens +
         coef_.per_context_token * double(s.context_tokens);
}

void StepCostModel::observe(const StepShape& shape, double seconds) {
  if (shape.empty() || !(seconds >= 0) || !std::isfinite(seconds)) return;
  if (steps_ > 0) {
    const double predicted = predict(shape);
    const double err = std::fabs(predicted - seconds) / std::max(seconds, 1e-6);
    rel_error_ = steps_ == 1 ? err : 0.95 * rel_error_ + 0.05 * err;
    predicted_total_ += predicted;
    measured_total_ += seconds;
  }
  const Vec x = features(shape);
  for (int i = 0; i < kFeatures; ++i) {
    for (int j = 0; j < kFeatures; ++j) xtx_[i][j] = forgetting_ * xtx_[i][j] + x[i] * x[j];
    xty_[i] = forgetting_ * xty_[i] + x[i] * seconds;
  }
  weight_ = forgetting_ * weight_ + 1;
  steps_++;
  refit();
}

void StepCostModel::seed(const Coefficients& c) {
  auto price = [&](const StepShape& s) {
    return c.base + c.per_row * s.rows + c.per_prefill_token * s.prefill_tokens + c.per_context_token * double(s.context_tokens);
  };
  for (int rows : {1, 4, 16, 32})
    for (int prefill : {0, 64, 256})
      for (int64_t context : {int64_t(0), int64_t(1024), int64_t(8192)}) {
        StepShape s;
        s.rows = rows + (prefill > 0 ? 1 : 0);
        s.prefill_tokens = prefill;
        s.context_tokens = context * rows;
        observe(s, price(s));
      }
  rel_error_ = 0, predicted_total_ = 0, measured_total_ = 0;  // the prior's, not this model's
}

void StepCostModel::refit() {
  // Normal equations with a small ridge: it pulls the per-prefill-token cost towards the
  // per-row cost (in unscaled units) so that a machine that has only decoded so far still
  // predicts prefills, and keeps every per-unit term defined. Coefficients that come out
  // negative are fixed at zero and the rest refitted (a step never gets cheaper with more
  // work in it).
  std::array<Vec, kFeatures> a = xtx_;
  const double lambda = 1e-3 * std::max(weight_, 1.0);
  const Vec tie = {0, -1, kPrefillScale, 0};  // per_prefill_token - per_row, in the scaled coefficients
  for (int i = 0; i < kFeatures; ++i)
    for (int j = 0; j < kFeatures; ++j) a[i][j] += lambda * tie[i] * tie[j];
  for (int i = 1; i < kFeatures; ++i) a[i][i] += 1e-9 * std::max(weight_, 1.0);

  std::array<bool, kFeatures> active = {true, true, true, true};
  Vec w{};
  for (int round = 0; round < kFeatures; ++round) {
    // Solve the active subsystem by Gaussian elimination with partial pivoting.
    int idx[kFeatures], n = 0;
    for (int i = 0; i < kFeatures; ++i)
      if (active[i]) idx[n++] = i;
    double m[kFeatures][kFeatures + 1];
    for (int r = 0; r < n; ++r) {
      for (int c = 0; c < n; ++c) m[r][c] = a[idx[r]][idx[c]];
      m[r][n] = xty_[idx[r]];
    }
    bool singular = false;
    for (int c = 0; c < n && !singular; ++c) {
      int p = c;
      for (int r = c + 1; r < n; ++r)
        if (std::fabs(m[r][c]) > std::fabs(m[p][c])) p = r;
      if (std::fabs(m[p][c]) < 1e-300) {
        singular = true;
        break;
      }
      for (int k = 0; k <= n; ++k) std::swap(m[c][k], m[p][k]);
      for (int r = 0; r < n; ++r) {
        if (r == c) continue;
        const double f = m[r][c] / m[c][c];
        for (int k = c; k <= n; ++k) m[r][k] -= f * m[c][k];
      }
    }
    if (singular) return;  // keep the last fit
    w = Vec{};
    for (int r = 0; r < n; ++r) w[idx[r]] = m[r][n] / m[r][r];
    bool negative = false;
    for (int i = 0; i < kFeatures; ++i)
      if (active[i] && w[i] < 0) active[i] = false, negative = true;
    if (!negative) break;
  }
  for (double& v : w) v = std::max(v, 0.0);
  coef_.base = w[0];
  coef_.per_row = w[1];
  coef_.per_prefill_token = w[2] * kPrefillScale;
  coef_.per_context_token = w[3] * kContextScale;
}

}  // namespace tutti
