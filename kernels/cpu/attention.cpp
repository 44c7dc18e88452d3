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

// e^x for x <= 0 (softmax after subtracting the maximum), to about 1 ulp, written so the
// vectoriser can inline it: libm's expf is a call per score.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  // Cody-Waite: r = x - n ln2 in two parts, exact enough for the polynomial below.
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  // Minimax polynomial for e^r on [-ln2/2, ln2/2] (Cephes expf).
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += int32_t(n) << 23;  // times 2^n (n >= -126 here)
  std::memcpy(&p, &bits, 4);
  return p;
}

// Row `p` of K (which = 0) or V (which = 1) for this layer, as f32 in `row` (or a pointer
// into the cache when it already is f32).
inline const float* kv_row(const KvLayerView& kv, const AttentionSeq& s, int p, int which, int kv_head, int hd,
                           float* row) {
  const size_t block = size_t(s.block_table[p / kv.block_tokens]);
  const size_t off = kv.offset(block, which, kv_head, p);
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
  // The cache comes from DRAM (streaming the weights evicts it every step), one short run
  // per block: ask for all of this head's K and V runs up front so the loads overlap.
  {
    const size_t elem = kv.type == TensorType::F32 ? 4 : 2;
    const size_t run = size_t(kv.block_tokens) * size_t(hd) * elem;
    const int blocks = (n + kv.block_tokens - 1) / kv.block_tokens;
    for (int which = 0; which < 2; ++which)
      for (int b = 0; b < blocks; ++b) {
        const char* base = static_cast<const char*>(kv.pool) + kv.offset(size_t(s.block_table[b]), which, kv_head, 0) * elem;
        for (size_t off = 0; off < run; off += 64) __builtin_prefetch(base + off, 0, 2);
      }
  }
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
    float mx = sj[0];
#pragma omp simd reduction(max : mx)
    for (int p = 0; p < n; ++p) mx = std::max(mx, sj[p]);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int p = 0; p < n; ++p) {
      sj[p] = exp_nonpositive(sj[p] - mx);
      sum += sj[p];
    }
    const float inv = 1.0f / sum;
#pragma omp simd
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
