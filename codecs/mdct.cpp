#include "codecs/mdct.h"

#include <cmath>
#include <map>
#include <mutex>

namespace tutti::codecs {

struct MdctTables {
  int n = 0;
  std::vector<float> window;  // 2N
  std::vector<float> cosines;  // [k][t], N x 2N, including the orthogonal scale sqrt(2/N)
};

std::shared_ptr<const MdctTables> mdct_tables(int n) {
  static std::mutex mu;
  static std::map<int, std::weak_ptr<const MdctTables>> cache;
  std::lock_guard<std::mutex> lock(mu);
  if (auto t = cache[n].lock()) return t;
  auto t = std::make_shared<MdctTables>();
  t->n = n;
  const double pi = 3.14159265358979323846;
  t->window.resize(size_t(2 * n));
  for (int i = 0; i < 2 * n; ++i) t->window[size_t(i)] = float(std::sin(pi * (i + 0.5) / (2 * n)));
  t->cosines.resize(size_t(n) * size_t(2 * n));
  const double scale = std::sqrt(2.0 / n);
  for (int k = 0; k < n; ++k)
    for (int i = 0; i < 2 * n; ++i)
      t->cosines[size_t(k) * size_t(2 * n) + size_t(i)] = float(scale * std::cos(pi / n * (i + 0.5 + n / 2.0) * (k + 0.5)));
  cache[n] = t;
  return t;
}

MdctAnalyzer::MdctAnalyzer(int n) : n_(n), t_(mdct_tables(n)), block_(size_t(2 * n), 0.f) {}

void MdctAnalyzer::push(std::span<const float> samples, std::span<float> coefficients) {
  const size_t n = size_t(n_);
  std::copy(block_.begin() + long(n), block_.end(), block_.begin());
  std::copy(samples.begin(), samples.begin() + long(n), block_.begin() + long(n));
  std::vector<float> windowed(2 * n);
  for (size_t i = 0; i < 2 * n; ++i) windowed[i] = block_[i] * t_->window[i];
  for (size_t k = 0; k < n; ++k) {
    const float* c = t_->cosines.data() + k * 2 * n;
    float s = 0.f;
    for (size_t i = 0; i < 2 * n; ++i) s += c[i] * windowed[i];
    coefficients[k] = s;
  }
}

MdctSynthesizer::MdctSynthesizer(int n) : n_(n), t_(mdct_tables(n)), overlap_(size_t(n), 0.f), block_(size_t(2 * n)) {}

void MdctSynthesizer::push(std::span<const float> coefficients, std::span<float> samples) {
  const size_t n = size_t(n_);
  std::fill(block_.begin(), block_.end(), 0.f);
  for (size_t k = 0; k < n; ++k) {
    const float x = coefficients[k];
    if (x == 0.f) continue;
    const float* c = t_->cosines.data() + k * 2 * n;
    for (size_t i = 0; i < 2 * n; ++i) block_[i] += x * c[i];
  }
  for (size_t i = 0; i < 2 * n; ++i) block_[i] *= t_->window[i];
  for (size_t i = 0; i < n; ++i) samples[i] = overlap_[i] + block_[i];
  std::copy(block_.begin() + long(n), block_.end(), overlap_.begin());
}

}  // namespace tutti::codecs
