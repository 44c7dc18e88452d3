// AVX-512 kernels (F, BW, VL, DQ, VNNI, BF16; compiled with those flags, chosen at run time).
//
// Tiles of R weight rows x C tokens keep R*C accumulators in registers, so each weight
// vector loaded from memory serves C tokens and each activation vector serves R rows: at
// batch 1 the loop streams weights at memory speed, at large batches it is compute-bound.
// Q8_0 / Q4_0 weights are read in place, two 32-value blocks per 512-bit register, and
// multiplied with VPDPBUSD (u8 x s8 -> s32):
//   Q8_0: activations as u8 (q + 128), the +128 removed by starting the sum at -128*sum(w);
//   Q4_0: nibbles (0..15) as u8, the -8 offset folded in as -8*sum(a) lane biases.
#include <immintrin.h>

#include "kernels/cpu/matmul_kernels.h"

namespace tutti::cpu {

namespace {

inline __m512 load_f32x16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_f16x16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load_bf16x16(const uint16_t* p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

template <class T>
struct FloatWeights;
template <>
struct FloatWeights<float> {
  static __m512 load(const uint8_t* row, int64_t i) { return load_f32x16(reinterpret_cast<const float*>(row) + i); }
  static float scalar(const uint8_t* row, int64_t i) { return reinterpret_cast<const float*>(row)[i]; }
};
struct F16Tag {};
struct BF16Tag {};
template <>
struct FloatWeights<F16Tag> {
  static __m512 load(const uint8_t* row, int64_t i) { return load_f16x16(reinterpret_cast<const uint16_t*>(row) + i); }
  static float scalar(const uint8_t* row, int64_t i) { return fp16_to_fp32(reinterpret_cast<const uint16_t*>(row)[i]); }
};
template <>
struct FloatWeights<BF16Tag> {
  static __m512 load(const uint8_t* row, int64_t i) { return load_bf16x16(reinterpret_cast<const uint16_t*>(row) + i); }
  static float scalar(const uint8_t* row, int64_t i) { return bf16_to_fp32(reinterpret_cast<const uint16_t*>(row)[i]); }
};

// F32 / F16 / BF16 weights against f32 activations; conversion happens in registers.
template <class W>
struct FloatKernel {
  template <int R, int C>
  static void tile(const MatmulArgs& a, int64_t r0, int c0) {
    const int64_t k = a.w.cols, k16 = k & ~int64_t(15);
    const uint8_t* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = a.w.row(r0 + r);
    const float* xs[C];
    for (int c = 0; c < C; ++c) xs[c] = a.x + size_t(c0 + c) * k;
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k16; i += 16) {
      __m512 w[R];
      for (int r = 0; r < R; ++r) w[r] = W::load(rows[r], i);
      for (int c = 0; c < C; ++c) {
        const __m512 x = _mm512_loadu_ps(xs[c] + i);
        for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fmadd_ps(w[r], x, acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) {
        float s = _mm512_reduce_add_ps(acc[r][c]);
        for (int64_t i = k16; i < k; ++i) s += W::scalar(rows[r], i) * xs[c][i];
        a.y[size_t(c0 + c) * a.w.rows + r0 + r] = s;
      }
  }
};

// Scales of blocks 2p and 2p+1 (f16 at their starts), 8 lanes each.
inline __m512 pair_scales(const uint8_t* b0, const uint8_t* b1, bool has_b1) {
  uint16_t h0, h1 = 0;
  std::memcpy(&h0, b0, 2);
  if (has_b1) std::memcpy(&h1, b1, 2);
  return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(short(h0))),
                                                 _mm_set1_epi16(short(h1)), 1));
}

// Weights are prefetched kPrefetchBytes ahead of the tile's progress through its rows, at
// the pace they are consumed: the hardware prefetcher alone does not run far enough ahead to
// hide DRAM latency while the core is busy with the arithmetic (measured: 20 -> 40 GB/s per
// core on Zen 5 for Q8_0 at batch 1).
constexpr int64_t kPrefetchBytes = 12 * 1024;

struct Q8_0Kernel {
  // One pair of blocks of one row at b0 (68 bytes), or only the first block when !two.
  template <bool two>
  static void load_pair(const uint8_t* b0, __m512i& w, __m512i& ncorr, __m512& dw) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 2));
    const __m256i hi = two ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 36)) : _mm256_setzero_si256();
    w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    // -128 * sum(w) per 4-byte lane: cancels the +128 offset of the u8 activations.
    ncorr = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(char(0x80)), w));
    dw = pair_scales(b0, b0 + 34, two);
  }

  template <int R, int C, bool two>
  static void step(const uint8_t* const* rows, const uint8_t* ahead, const QuantizedInput& q, int c0, int64_t p,
                   __m512 (&acc)[R][C]) {
    __m512i w[R], ncorr[R];
    __m512 dw[R];
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + (p * R + r) * 68), _MM_HINT_T0);
      load_pair<two>(rows[r] + p * 68, w[r], ncorr[r], dw[r]);
    }
    for (int c = 0; c < C; ++c) {
      const __m512i x = _mm512_loadu_si512(q.qu_row(c0 + c) + p * 64);
      const __m512 dx = _mm512_loadu_ps(q.d_pair_row(c0 + c) + p * 16);
      for (int r = 0; r < R; ++r) {
        const __m512i isum = _mm512_dpbusd_epi32(ncorr[r], x, w[r]);
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw[r], dx), acc[r][c]);
      }
    }
  }

  template <int R, int C>
  static void tile(const MatmulArgs& a, int64_t r0, int c0) {
    const QuantizedInput& q = *a.qx;
    const int64_t full = q.n_blocks / 2;
    const uint8_t* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = a.w.row(r0 + r);
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    const uint8_t* ahead = rows[0] + kPrefetchBytes;
    for (int64_t p = 0; p < full; ++p) step<R, C, true>(rows, ahead, q, c0, p, acc);
    if (q.n_blocks % 2) step<R, C, false>(rows, ahead, q, c0, full, acc);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) a.y[size_t(c0 + c) * a.w.rows + r0 + r] = _mm512_reduce_add_ps(acc[r][c]);
  }
};

struct Q4_0Kernel {
  template <int R, int C>
  static void tile(const MatmulArgs& a, int64_t r0, int c0) {
    const QuantizedInput& q = *a.qx;
    const int64_t nb = q.n_blocks, np = q.n_pairs;
    const uint8_t* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = a.w.row(r0 + r);
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (int64_t p = 0; p < np; ++p) {
      const bool has_b1 = 2 * p + 1 < nb;
      __m512i w[R];
      __m512 dw[R];
      for (int r = 0; r < R; ++r) {
        const uint8_t* b0 = rows[r] + p * 36;
        const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 2));
        const __m128i q1 = has_b1 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 20)) : _mm_setzero_si128();
        const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
        const __m256i lo = _mm256_and_si256(both, low4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(both, 4), low4);
        const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);  // lo0 lo1 hi0 hi1
        w[r] = _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(3, 1, 2, 0));             // lo0 hi0 lo1 hi1
        dw[r] = pair_scales(b0, b0 + 18, has_b1);
      }
      for (int c = 0; c < C; ++c) {
        const __m512i x = _mm512_loadu_si512(q.qs_row(c0 + c) + p * 64);
        const __m512i bias = _mm512_loadu_si512(q.q4_bias_row(c0 + c) + p * 16);
        const __m512 dx = _mm512_loadu_ps(q.d_pair_row(c0 + c) + p * 16);
        for (int r = 0; r < R; ++r) {
          const __m512i isum = _mm512_dpbusd_epi32(bias, w[r], x);
          acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw[r], dx), acc[r][c]);
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) a.y[size_t(c0 + c) * a.w.rows + r0 + r] = _mm512_reduce_add_ps(acc[r][c]);
  }
};

// Batch 1-2 (decode): more rows in flight to keep memory busy; larger batches: square tiles.
template <class K>
void rows_fn(const MatmulArgs& a, int64_t r0, int64_t r1) {
  if (a.n_tokens <= 2)
    TileDriver<K, 4, 2>::run(a, r0, r1);
  else
    TileDriver<K, 4, 4>::run(a, r0, r1);
}

}  // namespace

const MatmulKernels* avx512_kernels() {
  static const MatmulKernels k{"avx512-vnni",
                               rows_fn<FloatKernel<FloatWeights<float>>>,
                               rows_fn<FloatKernel<FloatWeights<F16Tag>>>,
                               rows_fn<FloatKernel<FloatWeights<BF16Tag>>>,
                               rows_fn<Q8_0Kernel>,
                               rows_fn<Q4_0Kernel>,
                               8};
  return &k;
}

}  // namespace tutti::cpu
