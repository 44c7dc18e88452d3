#include "kernels/cpu/attention.h"
#include "kernels/cpu/cpu_math.h"

#include <cmath>
#include <cstring>

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

// Position p's K (which = 0) or V (which = 1) values for this head, as f32 in `row`. K is
// stored dimension-major (see KvLayerView), so its values are block_tokens apart.
inline const float* kv_row(const KvLayerView& kv, const AttentionSeq& s, int p, int which, int kv_head, int hd,
                           float* row) {
  const size_t block = size_t(s.block_table[p / kv.block_tokens]);
  const size_t first = which == 0 ? kv.k_index(block, kv_head, p, 0) : kv.v_index(block, kv_head, p, 0);
  const size_t stride = which == 0 ? size_t(kv.block_tokens) : 1;
  if (kv.type == TensorType::F32) {
    const float* f = static_cast<const float*>(kv.pool) + first;
    if (stride == 1) return f;
    for (int i = 0; i < hd; ++i) row[i] = f[size_t(i) * stride];
    return row;
  }
  const uint16_t* h = static_cast<const uint16_t*>(kv.pool) + first;
#pragma omp simd
  for (int i = 0; i < hd; ++i) row[i] = h2f(h[size_t(i) * stride]);
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
        const char* base = static_cast<const char*>(kv.pool) + kv.run(size_t(s.block_table[b]), which, kv_head) * elem;
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
      sj[p] = fast_exp(sj[p] - mx);
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
