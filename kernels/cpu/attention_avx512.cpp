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

// Softmax over n scores of each of `group` rows (row stride `stride`), in place.
void softmax_rows(float* scores, int group, int n, int stride) {
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
}

constexpr int kAheadBlocks = 2;

// CH = head_dim / 16. Positions are taken 16 at a time with fixed trip counts (a short
// last group is zero-padded) so the accumulators stay in registers.
template <int CH>
void attend(const KvLayerView& kv, const AttentionSeq& s, int pos, int kv_head, int group, float scale,
            const float* q, float* out, float* scratch) {
  constexpr int hd = CH * 16;
  const int bt = kv.block_tokens;
  const bool f16 = kv.type == TensorType::F16;
  const size_t elem = f16 ? 2 : 4;
  const int n = pos + 1, blocks = (n + bt - 1) / bt;
  alignas(64) float rows[64 * hd];  // one block's K or V for this head, widened (bt <= 64)
  const int stride = (n + 15) / 16 * 16;
  float* scores = scratch;          // [group][stride]
  const size_t run_bytes = size_t(bt) * size_t(hd) * elem;

  for (int b = 0; b < std::min(blocks, kAheadBlocks); ++b) prefetch_run(kv, s, b, kv_head, run_bytes, elem);
  for (int b = 0; b < blocks; ++b) {
    if (b + kAheadBlocks < blocks) prefetch_run(kv, s, b + kAheadBlocks, kv_head, run_bytes, elem);
    const int first = b * bt, count = std::min(bt, n - first), padded = (count + 15) / 16 * 16;
    widen(static_cast<const char*>(kv.pool) + kv.offset(size_t(s.block_table[b]), 0, kv_head, 0) * elem, f16, count, hd, rows);
    std::memset(rows + count * hd, 0, sizeof(float) * size_t(padded - count) * hd);
    for (int j = 0; j < group; ++j) {
      __m512 qv[CH];
      for (int c = 0; c < CH; ++c) qv[c] = _mm512_loadu_ps(q + size_t(j) * hd + c * 16);
      for (int i0 = 0; i0 < padded; i0 += 16) {
        __m512 acc[16];
        for (int i = 0; i < 16; ++i) {
          acc[i] = _mm512_mul_ps(qv[0], _mm512_load_ps(rows + (i0 + i) * hd));
          for (int c = 1; c < CH; ++c) acc[i] = _mm512_fmadd_ps(qv[c], _mm512_load_ps(rows + (i0 + i) * hd + c * 16), acc[i]);
        }
        const int m = std::min(16, count - i0);
        _mm512_mask_storeu_ps(scores + size_t(j) * stride + first + i0, __mmask16((1u << m) - 1),
                              _mm512_mul_ps(sum16(acc), _mm512_set1_ps(scale)));
      }
    }
  }
  softmax_rows(scores, group, n, stride);
  __m512 o[8][CH];  // group <= 8
  for (int j = 0; j < group; ++j)
    for (int c = 0; c < CH; ++c) o[j][c] = _mm512_setzero_ps();
  for (int b = 0; b < blocks; ++b) {
    const int first = b * bt, count = std::min(bt, n - first);
    widen(static_cast<const char*>(kv.pool) + kv.offset(size_t(s.block_table[b]), 1, kv_head, 0) * elem, f16, count, hd, rows);
    for (int i = 0; i < count; ++i) {
      __m512 v[CH];
      for (int c = 0; c < CH; ++c) v[c] = _mm512_load_ps(rows + i * hd + c * 16);
      for (int j = 0; j < group; ++j) {
        const __m512 w = _mm512_set1_ps(scores[size_t(j) * stride + first + i]);
        for (int c = 0; c < CH; ++c) o[j][c] = _mm512_fmadd_ps(w, v[c], o[j][c]);
      }
    }
  }
  for (int j = 0; j < group; ++j)
    for (int c = 0; c < CH; ++c) _mm512_storeu_ps(out + size_t(j) * hd + c * 16, o[j][c]);
}

}  // namespace

bool attend_group_avx512(const KvLayerView& kv, const AttentionSeq& s, int pos, int kv_head, int group, int hd,
                         float scale, const float* q, float* out, float* scratch) {
  if (kv.block_tokens > 64 || group > 8) return false;
  switch (hd) {
    case 64: attend<4>(kv, s, pos, kv_head, group, scale, q, out, scratch); return true;
    case 128: attend<8>(kv, s, pos, kv_head, group, scale, q, out, scratch); return true;
    case 32: attend<2>(kv, s, pos, kv_head, group, scale, q, out, scratch); return true;
    case 16: attend<1>(kv, s, pos, kv_head, group, scale, q, out, scratch); return true;
    default: return false;  // the portable version handles other head sizes
  }
}

}  // namespace tutti::cpu
