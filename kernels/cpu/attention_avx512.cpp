// AVX-512 attention for one row's query heads that share a KV head (compiled with AVX-512
// flags, chosen at run time). Works a KV block (block_tokens positions) at a time: the
// block's K (or V) run is widened to f32 once into L1 and reused by every head of the group;
// 16 scores come out of one transpose-and-add reduction instead of 16 horizontal sums.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/attention.h"

namespace tutti::cpu {

namespace {

// r[i] = sum of the 16 lanes of v[i], for 16 vectors.
inline __m512 sum16(__m512 v[16]) {
  __m512 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
    b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  // Now each 128-bit lane L of b[i] holds lane L's partial sums of v[4i .. 4i+3].
  for (int i = 0; i < 2; ++i)
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88), _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
}

inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_castsi512_ps(
      _mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23)));
}

// Widens `rows` rows of hd values (f16 or f32) starting at src into dst (f32).
inline void widen(const void* src, bool f16, int rows, int hd, float* dst) {
  const int n = rows * hd;
  if (f16) {
    const uint16_t* h = static_cast<const uint16_t*>(src);
    for (int i = 0; i < n; i += 16)
      _mm512_store_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i))));
  } else {
    std::memcpy(dst, src, size_t(n) * 4);
  }
}

inline void prefetch_run(const KvLayerView& kv, const AttentionSeq& s, int block, int kv_head, size_t run_bytes, size_t elem) {
  for (int which = 0; which < 2; ++which) {
    const char* base = static_cast<const char*>(kv.pool) + kv.offset(size_t(s.block_table[block]), which, kv_head, 0) * elem;
    for (size_t off = 0; off < run_bytes; off += 64) _mm_prefetch(base + off, _MM_HINT_T0);
  }
}

}  // namespace

bool attend_group_avx512(const KvLayerView& kv, const AttentionSeq& s, int pos, int kv_head, int group, int hd,
                         float scale, const float* q, float* out, float* scratch) {
  const int bt = kv.block_tokens;
  if (hd % 16 != 0 || hd > 256 || bt > 64) return false;
  const bool f16 = kv.type == TensorType::F16;
  const size_t elem = f16 ? 2 : 4;
  const int n = pos + 1, blocks = (n + bt - 1) / bt;
  const int chunks = hd / 16;
  alignas(64) float rows[64 * 256];  // one block's K or V for this head, widened
  float* scores = scratch;           // [group][n rounded up to 16]
  const int stride = (n + 15) / 16 * 16;
  const size_t run_bytes = size_t(bt) * size_t(hd) * elem;

  prefetch_run(kv, s, 0, kv_head, run_bytes, elem);
  if (blocks > 1) prefetch_run(kv, s, 1, kv_head, run_bytes, elem);
  // Scores: q . k for every position, 16 positions per reduction.
  for (int b = 0; b < blocks; ++b) {
    if (b + 2 < blocks) prefetch_run(kv, s, b + 2, kv_head, run_bytes, elem);
    const int first = b * bt, count = std::min(bt, n - first);
    widen(static_cast<const char*>(kv.pool) + kv.offset(size_t(s.block_table[b]), 0, kv_head, 0) * elem, f16, count, hd, rows);
    for (int j = 0; j < group; ++j) {
      const float* qj = q + size_t(j) * hd;
      for (int i0 = 0; i0 < count; i0 += 16) {
        __m512 acc[16];
        const int m = std::min(16, count - i0);
        for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
        for (int i = 0; i < m; ++i)
          for (int c = 0; c < chunks; ++c)
            acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(qj + c * 16), _mm512_load_ps(rows + (i0 + i) * hd + c * 16), acc[i]);
        const __m512 sc = _mm512_mul_ps(sum16(acc), _mm512_set1_ps(scale));
        _mm512_mask_storeu_ps(scores + size_t(j) * stride + first + i0, __mmask16((1u << m) - 1), sc);
      }
    }
  }
  // Softmax per head.
  for (int j = 0; j < group; ++j) {
    float* sj = scores + size_t(j) * stride;
    const int tail = n % 16;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int p = 0; p < n; p += 16) {
      const __mmask16 k = p + 16 <= n ? __mmask16(0xffff) : __mmask16((1u << tail) - 1);
      mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, sj + p));
    }
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int p = 0; p < n; p += 16) {
      const __mmask16 k = p + 16 <= n ? __mmask16(0xffff) : __mmask16((1u << tail) - 1);
      const __m512 e = _mm512_maskz_mov_ps(k, exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sj + p), m)));
      _mm512_mask_storeu_ps(sj + p, k, e);
      sum = _mm512_add_ps(sum, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int p = 0; p < n; p += 16) {
      const __mmask16 k = p + 16 <= n ? __mmask16(0xffff) : __mmask16((1u << tail) - 1);
      _mm512_mask_storeu_ps(sj + p, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, sj + p), inv));
    }
  }
  // Output: sum of weights times V rows, the head's output kept in registers.
  std::memset(out, 0, sizeof(float) * size_t(group) * size_t(hd));
  for (int b = 0; b < blocks; ++b) {
    const int first = b * bt, count = std::min(bt, n - first);
    widen(static_cast<const char*>(kv.pool) + kv.offset(size_t(s.block_table[b]), 1, kv_head, 0) * elem, f16, count, hd, rows);
    for (int j = 0; j < group; ++j) {
      const float* sj = scores + size_t(j) * stride + first;
      float* oj = out + size_t(j) * hd;
      for (int c = 0; c < chunks; c += 4) {
        const int cc = std::min(4, chunks - c);
        __m512 o[4];
        for (int u = 0; u < cc; ++u) o[u] = _mm512_loadu_ps(oj + (c + u) * 16);
        for (int i = 0; i < count; ++i) {
          const __m512 w = _mm512_set1_ps(sj[i]);
          for (int u = 0; u < cc; ++u) o[u] = _mm512_fmadd_ps(w, _mm512_load_ps(rows + i * hd + (c + u) * 16), o[u]);
        }
        for (int u = 0; u < cc; ++u) _mm512_storeu_ps(oj + (c + u) * 16, o[u]);
      }
    }
  }
  return true;
}

}  // namespace tutti::cpu
