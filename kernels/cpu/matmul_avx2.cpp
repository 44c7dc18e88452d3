// AVX2 + FMA + F16C kernels (for x86-64 CPUs without the AVX-512 set the avx512 kernels need).
// Same tiling as the AVX-512 kernels, one 32-value block per 256-bit register; quantized
// blocks use the classic sign trick with VPMADDUBSW: |w| (u8) x sign(w)*a (s8), which
// cannot saturate for these ranges.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/matmul_kernels.h"

namespace tutti::cpu {

void add_kquant_kernels_avx2(MatmulKernels& k);  // kquant_avx2.cpp

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

// The 4- and 5-bit 32-value block types, one block per register, quants unpacked to bytes in
// value order. The offset types (Q4_0: q - 8, Q5_0: q - 16) become signed and take the sign
// trick; the affine types (Q4_1, Q5_1: d*q + m) are unsigned and go straight into VPMADDUBSW,
// adding m * s per block (s = d_x * sum(q_x)).
template <class B>
struct Block32Traits;
template <>
struct Block32Traits<BlockQ4_0> {
  static constexpr int kQuantOffset = 2, kFifthBit = -1, kMinOffset = -1, kValueOffset = 8;
};
template <>
struct Block32Traits<BlockQ4_1> {
  static constexpr int kQuantOffset = 4, kFifthBit = -1, kMinOffset = 2, kValueOffset = 0;
};
template <>
struct Block32Traits<BlockQ5_0> {
  static constexpr int kQuantOffset = 6, kFifthBit = 2, kMinOffset = -1, kValueOffset = 16;
};
template <>
struct Block32Traits<BlockQ5_1> {
  static constexpr int kQuantOffset = 8, kFifthBit = 4, kMinOffset = 2, kValueOffset = 0;
};

// 0xFF in byte i where bit i of the 32-bit word is set.
inline __m256i bit_bytes(uint32_t bits) {
  const __m256i which = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
  const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), which);
  return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

template <class B>
struct Block32Kernel {
  using T = Block32Traits<B>;
  static __m256i quants(const uint8_t* blk) {  // unsigned, value order
    const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + T::kQuantOffset));
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(qs), _mm_srli_epi16(qs, 4), 1);
    __m256i u = _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
    if constexpr (T::kFifthBit >= 0) {
      uint32_t qh;
      std::memcpy(&qh, blk + T::kFifthBit, 4);
      u = _mm256_or_si256(u, _mm256_and_si256(bit_bytes(qh), _mm256_set1_epi8(16)));
    }
    return u;
  }

  template <int R, int C>
  static void tile(const MatmulArgs& a, int64_t r0, int c0) {
    const QuantizedInput& q = *a.qx;
    const uint8_t* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = a.w.row(r0 + r);
    __m256 acc[R][C];
    float min_sum[R][C] = {};
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < q.n_blocks; ++b) {
      __m256i w[R];
      float dw[R], mw[R];
      for (int r = 0; r < R; ++r) {
        const uint8_t* blk = rows[r] + b * int64_t(sizeof(B));
        w[r] = quants(blk);
        if constexpr (T::kValueOffset > 0) w[r] = _mm256_sub_epi8(w[r], _mm256_set1_epi8(char(T::kValueOffset)));
        uint16_t h;
        std::memcpy(&h, blk, 2);
        dw[r] = _cvtsh_ss(h);
        if constexpr (T::kMinOffset >= 0) {
          std::memcpy(&h, blk + T::kMinOffset, 2);
          mw[r] = _cvtsh_ss(h);
        }
      }
      for (int c = 0; c < C; ++c) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.qs_row(c0 + c) + b * 32));
        const float dx = q.d_row(c0 + c)[b];
        for (int r = 0; r < R; ++r) {
          __m256 dot;
          if constexpr (T::kValueOffset > 0)
            dot = block_dot(w[r], x);
          else
            dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(w[r], x), ones));
          acc[r][c] = _mm256_fmadd_ps(dot, _mm256_set1_ps(dw[r] * dx), acc[r][c]);
          if constexpr (T::kMinOffset >= 0) min_sum[r][c] += mw[r] * q.s_row(c0 + c)[b];
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) a.y[size_t(c0 + c) * a.w.rows + r0 + r] = hsum(acc[r][c]) + min_sum[r][c];
  }
};

template <class K>
void rows_fn(const MatmulArgs& a, int64_t r0, int64_t r1) {
  if (a.n_tokens <= 2)
    TileDriver<K, 4, 2>::run(a, r0, r1);
  else
    TileDriver<K, 3, 4>::run(a, r0, r1);
}

MatmulKernels make_avx2() {
  MatmulKernels k;
  k.isa = "avx2";
  using F = InputFormat;
  auto& t = k.types;
  // 3 x 4 tiles from 3 tokens on are this set's GEMM kernel for the types below (rows_fn
  // picks the tile by size), so their entries need no separate gemm.
  t[size_t(TensorType::F32)] = {rows_fn<FloatKernel<F32W>>, F::Float};
  t[size_t(TensorType::F16)] = {rows_fn<FloatKernel<F16W>>, F::Float};
  t[size_t(TensorType::BF16)] = {rows_fn<FloatKernel<BF16W>>, F::Float};
  t[size_t(TensorType::Q8_0)] = {rows_fn<Q8_0Kernel>, F::Q8Blocks};
  t[size_t(TensorType::Q4_0)] = {rows_fn<Block32Kernel<BlockQ4_0>>, F::Q8Blocks};
  t[size_t(TensorType::Q4_1)] = {rows_fn<Block32Kernel<BlockQ4_1>>, F::Q8Blocks};
  t[size_t(TensorType::Q5_0)] = {rows_fn<Block32Kernel<BlockQ5_0>>, F::Q8Blocks};
  t[size_t(TensorType::Q5_1)] = {rows_fn<Block32Kernel<BlockQ5_1>>, F::Q8Blocks};
  add_kquant_kernels_avx2(k);
  k.row_tile = 4;
  k.gemm_min_tokens = 8;
  return k;
}

}  // namespace

const MatmulKernels* avx2_kernels() {
  static const MatmulKernels k = make_avx2();
  return &k;
}

}  // namespace tutti::cpu
