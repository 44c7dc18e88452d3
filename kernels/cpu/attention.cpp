#include "kernels/cpu/attention.h"

#include <cmath>
#include <cstring>

#if defined(__x86_64__)
#define TUTTI_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TUTTI_CLONES
#endif

namespace tutti::cpu {

namespace {

// Branch-free half -> float for finite values (the cache only holds finite activations),
// written so the vectoriser turns it into a few integer and float ops per lane.
inline float h2f(uint16_t h) {
  uint32_t bits = uint32_t(h & 0x7fff) << 13;
  float f;
  std::memcpy(&f, &bits, 4);
  f *= 5.192296858534828e+33f;  // 2^112: rebias the exponent (also right for subnormals)
  std::memcpy(&bits, &f, 4);
  bits |= uint32_t(h & 0x8000) << 16;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Row `p` of K (which = 0) or V (which = 1) for this layer, as f32 in `row` (or a pointer
// into the cache when it already is f32).
inline const float* kv_row(const KvLayerView& kv, const AttentionSeq& s, int p, int which, int kv_head, int hd,
                           float* row) {
  const size_t block = size_t(s.block_table[p / kv.block_tokens]);
  const size_t off = kv.offset(block, which, kv_head, p);
  if (p % kv.block_tokens == 0 && p / kv.block_tokens + 1 < (s.first_pos + s.n_tokens + kv.block_tokens - 1) / kv.block_tokens) {
    // Entering a block: prefetch this head's run in the next one (the cache is read from
    // DRAM, since streaming the weights evicts it every step).
    const size_t next = kv.offset(size_t(s.block_table[p / kv.block_tokens + 1]), which, kv_head, 0);
    const size_t bytes = size_t(kv.block_tokens) * hd * (kv.type == TensorType::F32 ? 4 : 2);
    const char* base = static_cast<const char*>(kv.pool) + next * (kv.type == TensorType::F32 ? 4 : 2);
    for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(base + b);
  }
  if (kv.type == TensorType::F32) return static_cast<const float*>(kv.pool) + off;
  const uint16_t* h = static_cast<const uint16_t*>(kv.pool) + off;
#pragma omp simd
  for (int i = 0; i < hd; ++i) row[i] = h2f(h[i]);
  return row;
}

}  // namespace

TUTTI_CLONES void attend_group(const KvLayerView& kv, const AttentionSeq& s, int pos, int kv_head, int group,
                               int hd, float scale, const float* q, float* out, float* scratch) {
  const int n = pos + 1;
  float* row = scratch;               // head_dim floats
  float* scores = scratch + hd;       // [group][n]
  for (int p = 0; p < n; ++p) {
    const float* k = kv_row(kv, s, p, 0, kv_head, hd, row);
    for (int j = 0; j < group; ++j) {
      const float* qj = q + size_t(j) * hd;
      float d = 0.f;
#pragma omp simd reduction(+ : d)
      for (int i = 0; i < hd; ++i) d += qj[i] * k[i];
      scores[size_t(j) * n + p] = d * scale;
    }
  }
  for (int j = 0; j < group; ++j) {
    float* sj = scores + size_t(j) * n;
    float mx = -INFINITY;
    for (int p = 0; p < n; ++p) mx = std::max(mx, sj[p]);
    double sum = 0.0;
    for (int p = 0; p < n; ++p) {
      sj[p] = std::exp(sj[p] - mx);
      sum += sj[p];
    }
    const float inv = float(1.0 / sum);
    for (int p = 0; p < n; ++p) sj[p] *= inv;
  }
  std::memset(out, 0, sizeof(float) * size_t(group) * hd);
  for (int p = 0; p < n; ++p) {
    const float* v = kv_row(kv, s, p, 1, kv_head, hd, row);
    for (int j = 0; j < group; ++j) {
      const float w = scores[size_t(j) * n + p];
      float* oj = out + size_t(j) * hd;
#pragma omp simd
      for (int i = 0; i < hd; ++i) oj[i] += w * v[i];
    }
  }
}

}  // namespace tutti::cpu
