// AVX-512 kernels (F, BW, VL, DQ, VNNI, BF16; compiled with those flags, chosen at run time).
//
// Tiles of R weight rows x C tokens keep R*C accumulators in registers, so each weight
// vector loaded from memory serves C tokens and each activation vector serves R rows: at
// batch 1 the loop streams weights at memory speed, at large batches it is compute-bound.
// Q8_0 and the 4/5-bit 32-value types are read in place, two blocks per 512-bit register,
// and multiplied with VPDPBUSD (u8 x s8 -> s32):
//   Q8_0: activations as u8 (q + 128), the +128 removed by starting the sum at -128*sum(w);
//   Q4_0 / Q5_0: quants (0..15 / 0..31) as u8, the offset folded in as -8*sum(a) lane biases
//   (doubled for 16); Q4_1 / Q5_1 add their min times the activation block's sum.
// The K-quants are in kquant_avx512.cpp.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/gemm_avx512.h"
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
    const uint8_t* ahead = rows[0] + kPrefetchBytes;
    const int64_t step_bytes = int64_t(a.w.row_bytes()) / k * 16;  // bytes of 16 values
    for (int64_t i = 0; i < k16; i += 16) {
      __m512 w[R];
      for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(ahead + ((i / 16) * R + r) * step_bytes), _MM_HINT_T0);
        w[r] = W::load(rows[r], i);
      }
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

// Q8_0 at 1-2 tokens: the weight row is loaded 64 bytes at a time as it lies in memory and
// multiplied with activations laid out the same way (QuantizedInput::shadow). Per 64 bytes:
// load, XOR (weights as u8 + 128), VPDPBUSD, a VPERMI2W that picks each lane's block scale
// out of this and the previous 64 bytes, and the float conversion and FMA: about a third
// fewer instructions per weight byte than unpacking blocks, which is what lets a core keep
// up with its share of DRAM bandwidth.
struct Q8_0RowKernel {
  // For chunk phase ph (chunk index mod 17: 17 x 64 bytes = 32 blocks), the halfword of
  // [previous chunk | this chunk] holding the scale of each lane's block.
  struct ScaleIndex {
    alignas(64) int16_t idx[17][32];
    ScaleIndex() {
      for (int ph = 0; ph < 17; ++ph)
        for (int lane = 0; lane < 32; ++lane) {
          int block = 0;
          if (lane < 16)
            for (int k = 0; k < 4; ++k) {
              const int pos = 64 * ph + 4 * lane + k;
              if (pos % 34 >= 2) {
                block = pos / 34;
                break;
              }
            }
          else
            block = (64 * ph) / 34 + 1;  // unused half: any valid scale
          idx[ph][lane] = int16_t(17 * block - 32 * ph + 32);
        }
    }
  };

  template <int R, int C, bool tail>
  static void chunk(const uint8_t* const* rows, int64_t j, __m512i idx, __mmask64 m, const int8_t* const* xs,
                    const int32_t* const* biases, const float* const* dxs, __m512i (&prev)[R], __m512 (&acc)[R][C],
                    const uint8_t* pf) {
    const __m512i flip = _mm512_set1_epi8(char(0x80));
    __m512i w[R];
    __m512 dw[R];
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(pf + r * 64), _MM_HINT_T0);
      const __m512i raw = tail ? _mm512_maskz_loadu_epi8(m, rows[r] + j * 64) : _mm512_loadu_si512(rows[r] + j * 64);
      dw[r] = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(prev[r], idx, raw)));
      w[r] = _mm512_xor_si512(raw, flip);
      prev[r] = raw;
    }
    for (int c = 0; c < C; ++c) {
      const __m512i x = _mm512_loadu_si512(xs[c] + j * 64);
      const __m512i bias = _mm512_loadu_si512(biases[c] + j * 16);
      const __m512 dx = _mm512_loadu_ps(dxs[c] + j * 16);
      for (int r = 0; r < R; ++r) {
        const __m512i isum = _mm512_dpbusd_epi32(bias, w[r], x);
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw[r], dx), acc[r][c]);
      }
    }
  }

  template <int R, int C>
  static void tile(const MatmulArgs& a, int64_t r0, int c0) {
    static const ScaleIndex table;
    const QuantizedInput& q = *a.qx;
    const int64_t row_bytes = q.n_blocks * 34, full = row_bytes / 64;
    const uint8_t* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = a.w.row(r0 + r);
    const int8_t* xs[C];
    const int32_t* biases[C];
    const float* dxs[C];
    for (int c = 0; c < C; ++c) {
      xs[c] = q.shadow_row(c0 + c);
      biases[c] = q.shadow_bias_row(c0 + c);
      dxs[c] = q.shadow_d_row(c0 + c);
    }
    __m512 acc[R][C];
    __m512i prev[R];
    for (int r = 0; r < R; ++r) {
      prev[r] = _mm512_setzero_si512();
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    }
    const uint8_t* ahead = rows[0] + kPrefetchBytes;
    int phase = 0;
    for (int64_t j = 0; j < full; ++j) {
      chunk<R, C, false>(rows, j, _mm512_load_si512(table.idx[phase]), 0, xs, biases, dxs, prev, acc, ahead + j * R * 64);
      phase = phase == 16 ? 0 : phase + 1;
    }
    if (const int64_t left = row_bytes - full * 64; left > 0)
      chunk<R, C, true>(rows, full, _mm512_load_si512(table.idx[phase]), (__mmask64(1) << left) - 1, xs, biases, dxs, prev,
                        acc, ahead + full * R * 64);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) a.y[size_t(c0 + c) * a.w.rows + r0 + r] = _mm512_reduce_add_ps(acc[r][c]);
  }
};

// The 4- and 5-bit 32-value block types, two blocks per 512-bit register. Their quants are
// unsigned (nibbles, plus a fifth bit from qh), so they enter VPDPBUSD as the u8 operand
// against the signed activations; the offset types (Q4_0: q - 8, Q5_0: q - 16) start the sum
// at -offset * sum(x) per lane (QuantizedInput::q4_bias, doubled for 16), and the affine
// types (Q4_1, Q5_1: d*q + m) add m * s per block (s = d_x * sum(q_x), QuantizedInput::s_pair).
template <class B>
struct Block32Traits;
template <>
struct Block32Traits<BlockQ4_0> {
  static constexpr int kQuantOffset = 2, kScaleOffset = 0, kFifthBit = -1, kMinOffset = -1, kBiasShift = 0;
};
template <>
struct Block32Traits<BlockQ4_1> {
  static constexpr int kQuantOffset = 4, kScaleOffset = 0, kFifthBit = -1, kMinOffset = 2, kBiasShift = -1;
};
template <>
struct Block32Traits<BlockQ5_0> {
  static constexpr int kQuantOffset = 6, kScaleOffset = 0, kFifthBit = 2, kMinOffset = -1, kBiasShift = 1;
};
template <>
struct Block32Traits<BlockQ5_1> {
  static constexpr int kQuantOffset = 8, kScaleOffset = 0, kFifthBit = 4, kMinOffset = 2, kBiasShift = -1;
};

template <class B>
struct Block32Kernel {
  using T = Block32Traits<B>;
  static constexpr int kBytes = int(sizeof(B));

  // The 32 quants of block b0 (and b1, when two) as bytes 0..31 (32..63), in value order.
  template <bool two>
  static __m512i load_quants(const uint8_t* b0) {
    const uint8_t* b1 = b0 + kBytes;
    const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + T::kQuantOffset));
    const __m128i q1 = two ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(b1 + T::kQuantOffset)) : _mm_setzero_si128();
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
    const __m256i lo = _mm256_and_si256(both, low4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(both, 4), low4);
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);  // lo0 lo1 hi0 hi1
    __m512i w = _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(3, 1, 2, 0));         // lo0 hi0 lo1 hi1
    if constexpr (T::kFifthBit >= 0) {
      uint32_t h0, h1 = 0;
      std::memcpy(&h0, b0 + T::kFifthBit, 4);
      if (two) std::memcpy(&h1, b1 + T::kFifthBit, 4);
      const __mmask64 bits = __mmask64(h0) | __mmask64(h1) << 32;
      w = _mm512_or_si512(w, _mm512_maskz_mov_epi8(bits, _mm512_set1_epi8(16)));
    }
    return w;
  }

  template <bool two>
  static __m512 pair_f16(const uint8_t* b0, int offset) {
    return pair_scales(b0 + offset, b0 + kBytes + offset, two);
  }

  template <int R, int C, bool two>
  static void step(const uint8_t* const* rows, const uint8_t* ahead, const QuantizedInput& q, int c0, int64_t p,
                   __m512 (&acc)[R][C]) {
    __m512i w[R];
    __m512 dw[R], mw[R];
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + (p * R + r) * 2 * kBytes), _MM_HINT_T0);
      const uint8_t* b0 = rows[r] + p * 2 * kBytes;
      w[r] = load_quants<two>(b0);
      dw[r] = pair_f16<two>(b0, T::kScaleOffset);
      if constexpr (T::kMinOffset >= 0) mw[r] = pair_f16<two>(b0, T::kMinOffset);
    }
    for (int c = 0; c < C; ++c) {
      const __m512i x = _mm512_loadu_si512(q.qs_row(c0 + c) + p * 64);
      const __m512 dx = _mm512_loadu_ps(q.d_pair_row(c0 + c) + p * 16);
      __m512i bias = _mm512_setzero_si512();
      if constexpr (T::kBiasShift >= 0) {
        bias = _mm512_loadu_si512(q.q4_bias_row(c0 + c) + p * 16);
        if constexpr (T::kBiasShift > 0) bias = _mm512_slli_epi32(bias, T::kBiasShift);
      }
      __m512 sx;
      if constexpr (T::kMinOffset >= 0) sx = _mm512_loadu_ps(q.s_pair_row(c0 + c) + p * 16);
      for (int r = 0; r < R; ++r) {
        const __m512i isum = _mm512_dpbusd_epi32(bias, w[r], x);
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw[r], dx), acc[r][c]);
        if constexpr (T::kMinOffset >= 0) acc[r][c] = _mm512_fmadd_ps(mw[r], sx, acc[r][c]);
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

// Batch 1-2 (decode): tiles of 4 rows x 2 tokens stream the weights at memory speed;
// 3-7 tokens: 4 x 4 integer tiles; from kBf16MinTokens on: the bf16 GEMM.
template <class K>
void rows_fn(const MatmulArgs& a, int64_t r0, int64_t r1) {
  prefetch_first_rows(a.w, r0, r1);
  if (a.n_tokens <= 2)
    TileDriver<K, 4, 2>::run(a, r0, r1);
  else
    TileDriver<K, 4, 4>::run(a, r0, r1);
}

// Q8_0 at 1-2 tokens reads rows as they lie in memory (the shadow layout); 3-7 tokens unpack
// block pairs.
void q8_0_decode(const MatmulArgs& a, int64_t r0, int64_t r1) {
  if (a.n_tokens <= kShadowMaxTokens && !a.qx->shadow.empty())
    rows_fn<Q8_0RowKernel>(a, r0, r1);
  else
    rows_fn<Q8_0Kernel>(a, r0, r1);
}

MatmulKernels make_avx512() {
  MatmulKernels k;
  k.isa = "avx512-vnni";
  using F = InputFormat;
  auto& t = k.types;
  t[size_t(TensorType::F32)] = {rows_fn<FloatKernel<FloatWeights<float>>>, F::Float};
  t[size_t(TensorType::F16)] = {rows_fn<FloatKernel<FloatWeights<F16Tag>>>, F::Float};
  t[size_t(TensorType::BF16)] = {rows_fn<FloatKernel<FloatWeights<BF16Tag>>>, F::Float, gemm_bf16_rows_avx512, F::Bf16Lanes};
  t[size_t(TensorType::Q8_0)] = {q8_0_decode, F::Q8Blocks, gemm_i8_rows_avx512, F::Int8Lanes};
  t[size_t(TensorType::Q4_0)] = {rows_fn<Block32Kernel<BlockQ4_0>>, F::Q8Blocks, gemm_bf16_rows_avx512, F::Bf16Lanes};
  t[size_t(TensorType::Q4_1)] = {rows_fn<Block32Kernel<BlockQ4_1>>, F::Q8Blocks, gemm_bf16_rows_avx512, F::Bf16Lanes};
  t[size_t(TensorType::Q5_0)] = {rows_fn<Block32Kernel<BlockQ5_0>>, F::Q8Blocks, gemm_bf16_rows_avx512, F::Bf16Lanes};
  t[size_t(TensorType::Q5_1)] = {rows_fn<Block32Kernel<BlockQ5_1>>, F::Q8Blocks, gemm_bf16_rows_avx512, F::Bf16Lanes};
  add_kquant_kernels_avx512(k);
  k.row_tile = kGemmRows;
  k.gemm_min_tokens = kBf16MinTokens;
  k.pack_bf16 = pack_bf16_rows_avx512;
  k.quantize_lanes = quantize_int8_lanes_avx512;
  k.quantize_k_lanes = quantize_q8k_lanes_avx512;
  k.quantize_k_rows = quantize_q8k_rows_avx512;
  k.avx512_attention = true;
  return k;
}

}  // namespace

const MatmulKernels* avx512_kernels() {
  static const MatmulKernels k = make_avx512();
  return &k;
}

}  // namespace tutti::cpu
