// AVX-512 attention for one row's query heads that share a KV head (compiled with AVX-512
// flags, chosen at run time), over the paged cache a block at a time. Every K or V value
// loaded (and widened from f16 in registers) serves all heads of the group.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/attention.h"

namespace tutti::cpu {

namespace {

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

inline void prefetch_run(const KvLayerView& kv, const AttentionSeq& s, int block, int kv_head, size_t run_bytes, size_t elem) {
  for (int which = 0; which < 2; ++which) {
    const char* base = static_cast<const char*>(kv.pool) + kv.run(size_t(s.block_table[block]), which, kv_head) * elem;
    for (size_t off = 0; off < run_bytes; off += 64) _mm_prefetch(base + off, _MM_HINT_T0);
  }
}

// 16 values at p: f16 widened in registers, or f32.
inline __m512 load16(const void* base, size_t index, bool f16) {
  if (f16) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + index)));
  return _mm512_loadu_ps(static_cast<const float*>(base) + index);
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

// HD = head size, G = query heads per KV head. Scores: K is stored dimension-major, so for
// 16 positions one load per dimension feeds G FMAs (the query value broadcast), and the
// scores come out as vectors with no horizontal sums. Output: V is position-major; each
// position's row feeds G FMAs per 16 values, the outputs held in registers CB chunks at a
// time.
template <int HD, int G>
void attend(const KvLayerView& kv, const AttentionSeq& s, int pos, int kv_head, float scale, const float* q, float* out,
            float* scratch) {
  constexpr int CH = HD / 16;
  constexpr int CB = G <= 4 ? (CH < 4 ? CH : 4) : (CH < 2 ? CH : 2);
  const int bt = kv.block_tokens;
  const bool f16 = kv.type == TensorType::F16;
  const size_t elem = f16 ? 2 : 4;
  const int n = pos + 1, blocks = (n + bt - 1) / bt;
  const int stride = (n + 15) / 16 * 16;
  float* scores = scratch;  // [G][stride]
  const size_t run_bytes = size_t(bt) * HD * elem;

  for (int b = 0; b < std::min(blocks, kAheadBlocks); ++b) prefetch_run(kv, s, b, kv_head, run_bytes, elem);
  for (int b = 0; b < blocks; ++b) {
    if (b + kAheadBlocks < blocks) prefetch_run(kv, s, b + kAheadBlocks, kv_head, run_bytes, elem);
    const size_t k_run = kv.run(size_t(s.block_table[b]), 0, kv_head);
    const int first = b * bt, count = std::min(bt, n - first);
    for (int i0 = 0; i0 < count; i0 += 16) {
      __m512 acc[G];
      for (int j = 0; j < G; ++j) acc[j] = _mm512_setzero_ps();
      for (int d = 0; d < HD; ++d) {
        const __m512 k = load16(kv.pool, k_run + size_t(d) * size_t(bt) + size_t(i0), f16);
        for (int j = 0; j < G; ++j) acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(q[j * HD + d]), k, acc[j]);
      }
      const int m = std::min(16, count - i0);
      for (int j = 0; j < G; ++j)
        _mm512_mask_storeu_ps(scores + size_t(j) * stride + first + i0, __mmask16((1u << m) - 1),
                              _mm512_mul_ps(acc[j], _mm512_set1_ps(scale)));
    }
  }
  softmax_rows(scores, G, n, stride);
  for (int c0 = 0; c0 < CH; c0 += CB) {
    __m512 o[G][CB];
    for (int j = 0; j < G; ++j)
      for (int c = 0; c < CB; ++c) o[j][c] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; ++b) {
      const size_t v_run = kv.run(size_t(s.block_table[b]), 1, kv_head);
      const int first = b * bt, count = std::min(bt, n - first);
      for (int i = 0; i < count; ++i) {
        __m512 v[CB];
        for (int c = 0; c < CB; ++c) v[c] = load16(kv.pool, v_run + size_t(i) * HD + size_t(c0 + c) * 16, f16);
        for (int j = 0; j < G; ++j) {
          const __m512 w = _mm512_set1_ps(scores[size_t(j) * stride + first + i]);
          for (int c = 0; c < CB; ++c) o[j][c] = _mm512_fmadd_ps(w, v[c], o[j][c]);
        }
      }
    }
    for (int j = 0; j < G; ++j)
      for (int c = 0; c < CB; ++c) _mm512_storeu_ps(out + size_t(j) * HD + size_t(c0 + c) * 16, o[j][c]);
  }
}

template <int HD>
bool attend_hd(const KvLayerView& kv, const AttentionSeq& s, int pos, int kv_head, int group, float scale, const float* q,
               float* out, float* scratch) {
  switch (group) {
    case 1: attend<HD, 1>(kv, s, pos, kv_head, scale, q, out, scratch); return true;
    case 2: attend<HD, 2>(kv, s, pos, kv_head, scale, q, out, scratch); return true;
    case 4: attend<HD, 4>(kv, s, pos, kv_head, scale, q, out, scratch); return true;
    case 8: attend<HD, 8>(kv, s, pos, kv_head, scale, q, out, scratch); return true;
    default: return false;
  }
}

}  // namespace

bool attend_group_avx512(const KvLayerView& kv, const AttentionSeq& s, int pos, int kv_head, int group, int hd,
                         float scale, const float* q, float* out, float* scratch) {
  if (kv.block_tokens % 16 != 0) return false;
  switch (hd) {
    case 64: return attend_hd<64>(kv, s, pos, kv_head, group, scale, q, out, scratch);
    case 128: return attend_hd<128>(kv, s, pos, kv_head, group, scale, q, out, scratch);
    case 32: return attend_hd<32>(kv, s, pos, kv_head, group, scale, q, out, scratch);
    case 16: return attend_hd<16>(kv, s, pos, kv_head, group, scale, q, out, scratch);
    default: return false;  // the portable version handles other head sizes and groups
  }
}

}  // namespace tutti::cpu
