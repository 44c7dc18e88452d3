#include "codecs/rvq.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>

namespace tutti::codecs {

Status Codebooks::validate() const {
  if (dim < 1 || size < 2 || stages < 1) return Error{"codebooks need dim >= 1, size >= 2 and at least one stage"};
  if (int(books.size()) != stages) return Error{"codebooks: " + std::to_string(books.size()) + " stages stored, " + std::to_string(stages) + " declared"};
  for (const auto& b : books)
    if (b.size() != size_t(size) * size_t(dim)) return Error{"codebooks: a stage has the wrong number of values"};
  return Status::Ok();
}

namespace {

// Index of the code nearest to r: argmin |r - c|^2 = argmax (r.c - |c|^2 / 2).
int nearest(const float* book, const float* half_norms, int size, int dim, const float* r) {
  int best = 0;
  float best_score = -std::numeric_limits<float>::infinity();
  for (int c = 0; c < size; ++c) {
    const float* v = book + size_t(c) * size_t(dim);
    float dot = 0.f;
    for (int i = 0; i < dim; ++i) dot += v[i] * r[i];
    const float score = dot - half_norms[c];
    if (score > best_score) best_score = score, best = c;
  }
  return best;
}

std::vector<float> half_norms_of(const std::vector<float>& book, int size, int dim) {
  std::vector<float> h(static_cast<size_t>(size));
  for (int c = 0; c < size; ++c) {
    double s = 0;
    for (int i = 0; i < dim; ++i) s += double(book[size_t(c) * size_t(dim) + size_t(i)]) * book[size_t(c) * size_t(dim) + size_t(i)];
    h[size_t(c)] = float(s / 2);
  }
  return h;
}

}  // namespace

void Codebooks::prepare() {
  half_norms.clear();
  for (const auto& b : books) half_norms.push_back(half_norms_of(b, size, dim));
}

void rvq_encode(const Codebooks& cb, std::span<const float> x, std::span<int32_t> codes, std::span<float> residual) {
  std::vector<float> r(x.begin(), x.begin() + cb.dim);
  std::vector<float> computed;
  for (int s = 0; s < cb.stages; ++s) {
    const float* h = nullptr;
    if (size_t(s) < cb.half_norms.size()) {
      h = cb.half_norms[size_t(s)].data();
    } else {  // codebooks made by hand without prepare()
      computed = half_norms_of(cb.books[size_t(s)], cb.size, cb.dim);
      h = computed.data();
    }
    const int c = nearest(cb.books[size_t(s)].data(), h, cb.size, cb.dim, r.data());
    codes[size_t(s)] = c;
    const float* v = cb.code(s, c);
    for (int i = 0; i < cb.dim; ++i) r[size_t(i)] -= v[i];
  }
  if (!residual.empty()) std::copy(r.begin(), r.end(), residual.begin());
}

void rvq_decode(const Codebooks& cb, std::span<const int32_t> codes, std::span<float> out) {
  std::fill(out.begin(), out.begin() + cb.dim, 0.f);
  for (int s = 0; s < cb.stages; ++s) {
    const int c = std::clamp(int(codes[size_t(s)]), 0, cb.size - 1);
    const float* v = cb.code(s, c);
    for (int i = 0; i < cb.dim; ++i) out[size_t(i)] += v[i];
  }
}

Expected<Codebooks> train_rvq(std::span<const float> data, int dim, int size, int stages, const KmeansOptions& o) {
  if (dim < 1 || size < 2 || stages < 1) return Error{"train_rvq: bad shape"};
  const size_t n = data.size() / size_t(dim);
  if (n < size_t(size)) return Error{"train_rvq: " + std::to_string(n) + " training vectors for " + std::to_string(size) + " codes"};
  Codebooks cb;
  cb.dim = dim, cb.size = size, cb.stages = stages;
  std::vector<float> residual(data.begin(), data.begin() + long(n * size_t(dim)));
  std::mt19937 rng(o.seed);
  std::vector<int> assign(n);
  std::vector<double> d2(n);
  for (int s = 0; s < stages; ++s) {
    std::vector<float> book(size_t(size) * size_t(dim));
    // k-means++: the first code at random, each next with probability ~ distance^2.
    auto row = [&](size_t i) { return residual.data() + i * size_t(dim); };
    size_t first = rng() % n;
    std::copy(row(first), row(first) + dim, book.begin());
    for (size_t i = 0; i < n; ++i) {
      double e = 0;
      for (int k = 0; k < dim; ++k) e += double(row(i)[k] - book[size_t(k)]) * (row(i)[k] - book[size_t(k)]);
      d2[i] = e;
    }
    for (int c = 1; c < size; ++c) {
      double total = 0;
      for (double v : d2) total += v;
      size_t pick = rng() % n;
      if (total > 0) {
        double target = std::uniform_real_distribution<double>(0, total)(rng);
        for (size_t i = 0; i < n; ++i) {
          target -= d2[i];
          if (target <= 0) { pick = i; break; }
        }
      }
      float* dst = book.data() + size_t(c) * size_t(dim);
      std::copy(row(pick), row(pick) + dim, dst);
      for (size_t i = 0; i < n; ++i) {
        double e = 0;
        for (int k = 0; k < dim; ++k) e += double(row(i)[k] - dst[k]) * (row(i)[k] - dst[k]);
        d2[i] = std::min(d2[i], e);
      }
    }
    // Lloyd iterations.
    std::vector<double> sums(size_t(size) * size_t(dim));
    std::vector<int> counts(static_cast<size_t>(size));
    for (int it = 0; it < o.iterations; ++it) {
      const std::vector<float> h = half_norms_of(book, size, dim);
      double err = 0;
      for (size_t i = 0; i < n; ++i) {
        assign[i] = nearest(book.data(), h.data(), size, dim, row(i));
        const float* v = book.data() + size_t(assign[i]) * size_t(dim);
        for (int k = 0; k < dim; ++k) err += double(row(i)[k] - v[k]) * (row(i)[k] - v[k]);
      }
      std::fill(sums.begin(), sums.end(), 0.0);
      std::fill(counts.begin(), counts.end(), 0);
      for (size_t i = 0; i < n; ++i) {
        counts[size_t(assign[i])]++;
        double* sm = sums.data() + size_t(assign[i]) * size_t(dim);
        for (int k = 0; k < dim; ++k) sm[k] += row(i)[k];
      }
      for (int c = 0; c < size; ++c) {
        float* v = book.data() + size_t(c) * size_t(dim);
        if (counts[size_t(c)] == 0) {  // an empty cell takes a random training vector
          const size_t pick = rng() % n;
          std::copy(row(pick), row(pick) + dim, v);
          continue;
        }
        for (int k = 0; k < dim; ++k) v[k] = float(sums[size_t(c) * size_t(dim) + size_t(k)] / counts[size_t(c)]);
      }
      if (o.progress) o.progress(s, it, err / double(n * size_t(dim)));
    }
    // This stage's residuals feed the next.
    const std::vector<float> h = half_norms_of(book, size, dim);
    for (size_t i = 0; i < n; ++i) {
      const int c = nearest(book.data(), h.data(), size, dim, row(i));
      const float* v = book.data() + size_t(c) * size_t(dim);
      for (int k = 0; k < dim; ++k) row(i)[k] -= v[k];
    }
    cb.books.push_back(std::move(book));
  }
  cb.prepare();
  return cb;
}

}  // namespace tutti::codecs
