// AVX2 + FMA + F16C kernels (for x86-64 CPUs without the AVX-512 set the avx512 kernels need).
// Same tiling as the AVX-512 kernels, one 32-value block per 256-bit register; quantized
// blocks use the classic sign trick with VPMADDUBSW: |w| (u8) x sign(w)*a (s8), which
// cannot saturate for these ranges.
#include <immintrin.h>

#include "kernels/cpu/matmul_kernels.h"

namespace tutti::cpu {

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct F32W {
  static __m256 load(const uint8_t* row, int64_t i) { return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + i); }
  static float scalar(const uint8_t* row, int64_t i) { return reinterpret_cast<const float*>(row)[i]; }
};
struct F16W {
  static __m256 load(const uint8_t* row, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(row) + i)));
  }
  static float scalar(const uint8_t* row, int64_t i) { return fp16_to_fp32(reinterpret_cast<const uint16_t*>(row)[i]); }
};
struct BF16W {
  static __m256 load(const uint8_t* row, int64_t i) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(row) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static float scalar(const uint8_t* row, int64_t i) { return bf16_to_fp32(reinterpret_cast<const uint16_t*>(row)[i]); }
};

template <class W>
struct FloatKernel {
  template <int R, int C>
  static void tile(const MatmulArgs& a, int64_t r0, int c0) {
    const int64_t k = a.w.cols, k8 = k & ~int64_t(7);
    const uint8_t* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = a.w.row(r0 + r);
    const float* xs[C];
    for (int c = 0; c < C; ++c) xs[c] = a.x + size_t(c0 + c) * k;
    __m256 acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k8; i += 8) {
      __m256 w[R];
      for (int r = 0; r < R; ++r) w[r] = W::load(rows[r], i);
      for (int c = 0; c < C; ++c) {
        const __m256 x = _mm256_loadu_ps(xs[c] + i);
        for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(w[r], x, acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) {
        float s = hsum(acc[r][c]);
        for (int64_t i = k8; i < k; ++i) s += W::scalar(rows[r], i) * xs[c][i];
        a.y[size_t(c0 + c) * a.w.rows + r0 + r] = s;
      }
  }
};

inline __m256 block_dot(__m256i w, __m256i x) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
}

struct Q8_0Kernel {
  template <int R, int C>
  static void tile(const MatmulArgs& a, int64_t r0, int c0) {
    const QuantizedInput& q = *a.qx;
    const BlockQ8_0* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = reinterpret_cast<const BlockQ8_0*>(a.w.row(r0 + r));
    __m256 acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < q.n_blocks; ++b) {
      __m256i w[R];
      float dw[R];
      for (int r = 0; r < R; ++r) {
        w[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r][b].q));
        dw[r] = _cvtsh_ss(rows[r][b].d);
      }
      for (int c = 0; c < C; ++c) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.qs_row(c0 + c) + b * 32));
        const float dx = q.d_row(c0 + c)[b];
        for (int r = 0; r < R; ++r)
          acc[r][c] = _mm256_fmadd_ps(block_dot(w[r], x), _mm256_set1_ps(dw[r] * dx), acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) a.y[size_t(c0 + c) * a.w.rows + r0 + r] = hsum(acc[r][c]);
  }
};

struct Q4_0Kernel {
  template <int R, int C>
  static void tile(const MatmulArgs& a, int64_t r0, int c0) {
    const QuantizedInput& q = *a.qx;
    const BlockQ4_0* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = reinterpret_cast<const BlockQ4_0*>(a.w.row(r0 + r));
    __m256 acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8);
    for (int64_t b = 0; b < q.n_blocks; ++b) {
      __m256i w[R];
      float dw[R];
      for (int r = 0; r < R; ++r) {
        const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[r][b].qs));
        const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(qs), _mm_srli_epi16(qs, 4), 1);
        w[r] = _mm256_sub_epi8(_mm256_and_si256(both, low4), eight);
        dw[r] = _cvtsh_ss(rows[r][b].d);
      }
      for (int c = 0; c < C; ++c) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.qs_row(c0 + c) + b * 32));
        const float dx = q.d_row(c0 + c)[b];
        for (int r = 0; r < R; ++r)
          acc[r][c] = _mm256_fmadd_ps(block_dot(w[r], x), _mm256_set1_ps(dw[r] * dx), acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) a.y[size_t(c0 + c) * a.w.rows + r0 + r] = hsum(acc[r][c]);
  }
};

template <class K>
void rows_fn(const MatmulArgs& a, int64_t r0, int64_t r1) {
  if (a.n_tokens <= 2)
    TileDriver<K, 4, 2>::run(a, r0, r1);
  else
    TileDriver<K, 3, 4>::run(a, r0, r1);
}

}  // namespace

const MatmulKernels* avx2_kernels() {
  static const MatmulKernels k{"avx2",
                               rows_fn<FloatKernel<F32W>>,
                               rows_fn<FloatKernel<F16W>>,
                               rows_fn<FloatKernel<BF16W>>,
                               rows_fn<Q8_0Kernel>,
                               rows_fn<Q4_0Kernel>,
                               4,
                               0};
  return &k;
}

}  // namespace tutti::cpu
