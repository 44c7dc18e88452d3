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

#include <algorithm>
#include <cstring>

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

// Weights are prefetched kPrefetchBytes ahead of the tile's progress through its rows, at
// the pace they are consumed: the hardware prefetcher alone does not run far enough ahead to
// hide DRAM latency while the core is busy with the arithmetic (measured: 20 -> 40 GB/s per
// core on Zen 5 for Q8_0 at batch 1).
constexpr int64_t kPrefetchBytes = 12 * 1024;

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
    const uint8_t* ahead = rows[0] + kPrefetchBytes;
    for (int64_t p = 0; p < np; ++p) {
      const bool has_b1 = 2 * p + 1 < nb;
      __m512i w[R];
      __m512 dw[R];
      for (int r = 0; r < R; ++r) {
        if ((p & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(ahead + (p * R + 2 * r) * 36), _MM_HINT_T0);
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

// ---- Batched path: bf16 GEMM.
// At many tokens per step the product is compute-bound, and per-block int8 scaling costs
// three float ops per VPDPBUSD. Instead, a panel of R weight rows is widened once to bf16
// (scale applied) and multiplied with all tokens by VDPBF16PS, one instruction per 32
// multiply-adds. The panel is the only widened copy, R rows at a time per thread.

constexpr int kGemmRows = 12;  // panel height (<= 16); 12 rows x 2 token groups = 24 accumulators
constexpr int kBf16MinTokens = 8;

// Rows [r0, r0 + rows) of w as bf16, row-major with w.cols values per row.
void widen_rows_bf16(const MatrixView& w, int64_t r0, int rows, uint16_t* panel) {
  const int64_t k = w.cols;
  for (int r = 0; r < rows; ++r) {
    const uint8_t* src = w.row(r0 + r);
    uint16_t* dst = panel + size_t(r) * size_t(k);
    switch (w.type) {
      case TensorType::Q8_0: {
        auto* b = reinterpret_cast<const BlockQ8_0*>(src);
        for (int64_t i = 0; i < k / 32; ++i) {
          const __m512 d = _mm512_set1_ps(_cvtsh_ss(b[i].d));
          const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].q));
          const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].q + 16));
          const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), d);
          const __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), d);
          _mm512_storeu_si512(dst + i * 32, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
        }
        break;
      }
      case TensorType::Q4_0: {
        auto* b = reinterpret_cast<const BlockQ4_0*>(src);
        const __m512i eight = _mm512_set1_epi32(8);
        for (int64_t i = 0; i < k / 32; ++i) {
          const __m512 d = _mm512_set1_ps(_cvtsh_ss(b[i].d));
          const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs));
          const __m128i lo4 = _mm_and_si128(qs, _mm_set1_epi8(0x0f));
          const __m128i hi4 = _mm_and_si128(_mm_srli_epi16(qs, 4), _mm_set1_epi8(0x0f));
          const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(lo4), eight)), d);
          const __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(hi4), eight)), d);
          _mm512_storeu_si512(dst + i * 32, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
        }
        break;
      }
      case TensorType::BF16:
        std::memcpy(dst, src, size_t(k) * 2);
        break;
      default: {  // F32 / F16: through f32
        std::vector<float> tmp(static_cast<size_t>(k));
        dequantize_row(w.type, src, tmp.data(), size_t(k));
        for (int64_t i = 0; i < k; ++i) dst[i] = fp32_to_bf16(tmp[size_t(i)]);
      }
    }
  }
}

// acc[r][g] holds 16 tokens of row r; tokens are the vector lanes, so one weight pair is
// broadcast per row and one activation vector serves all R rows.
template <int R, int G>
void gemm_tile(const uint16_t* panel, int64_t k, const Bf16Input& xb, int g0, int rows, int64_t r0, const MatmulArgs& a) {
  __m512 acc[R][G];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_ps();
  const uint16_t* xg[G];
  for (int g = 0; g < G; ++g) xg[g] = xb.group(g0 + g);
  for (int64_t j = 0; j < k / 2; ++j) {
    __m512bh x[G];
    for (int g = 0; g < G; ++g) x[g] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xg[g] + j * 32));
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, panel + size_t(r) * size_t(k) + size_t(2 * j), 4);
      const __m512bh w = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
      for (int g = 0; g < G; ++g) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], w, x[g]);
    }
  }
  // Transpose through L1 so each token's R outputs leave in one masked store: y rows are
  // often 4 KiB apart, and scattering single floats there thrashes one cache set.
  alignas(64) float tmp[R][16];
  const __mmask16 row_mask = __mmask16((1u << rows) - 1);
  for (int g = 0; g < G; ++g) {
    for (int r = 0; r < R; ++r) _mm512_store_ps(tmp[r], acc[r][g]);
    const int t0 = (g0 + g) * 16, n = std::min(16, a.n_tokens - t0);
    for (int t = 0; t < n; ++t) {
      alignas(64) float out[16];
      for (int r = 0; r < R; ++r) out[r] = tmp[r][t];
      _mm512_mask_storeu_ps(a.y + size_t(t0 + t) * size_t(a.w.rows) + size_t(r0), row_mask, _mm512_load_ps(out));
    }
  }
}

void gemm_bf16_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  thread_local std::vector<uint16_t> panel;
  const int64_t k = a.w.cols;
  panel.resize(size_t(kGemmRows) * size_t(k));
  const Bf16Input& xb = *a.xb;
  const size_t row_bytes = a.w.row_bytes();
  for (int64_t r = r0; r < r1; r += kGemmRows) {
    const int rows = int(std::min<int64_t>(kGemmRows, r1 - r));
    // Start fetching the next panel from DRAM now, so it arrives while this one computes.
    if (r + kGemmRows < r1) {
      const char* next = reinterpret_cast<const char*>(a.w.row(r + kGemmRows));
      const size_t bytes = row_bytes * size_t(std::min<int64_t>(kGemmRows, r1 - r - kGemmRows));
      for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(next + b, _MM_HINT_T1);
    }
    widen_rows_bf16(a.w, r, rows, panel.data());
    if (rows < kGemmRows) std::fill(panel.begin() + long(rows) * k, panel.end(), uint16_t(0));
    int g = 0;
    for (; g + 2 <= xb.n_groups; g += 2) gemm_tile<kGemmRows, 2>(panel.data(), k, xb, g, rows, r, a);
    if (g < xb.n_groups) gemm_tile<kGemmRows, 1>(panel.data(), k, xb, g, rows, r, a);
  }
}

// ---- Batched path for Q8_0: integer GEMM, weights read in place.
// Tokens are the vector lanes. Per 4 weight columns, the weight row's 4 bytes are broadcast
// (as unsigned w + 128) and multiplied with 16 tokens' 4 activations by one VPDPBUSD;
// a block's 8 such products sum exactly in int32, then one conversion and one FMA with the
// scales (weight block scale x each token's block scale) add it to the float total.

constexpr int kI8Rows = 6;
constexpr int kI8PanelsAhead = 3;  // 6 rows x 2 token groups x (int32 + float) = 24 accumulators

template <int R, int G>
void gemm_i8_tile(const MatmulArgs& a, const Int8Lanes& xl, int64_t r0, int rows, int g0) {
  const int64_t nb = xl.n_blocks, k4s = xl.cols / 4;
  const uint8_t* wr[R];
  for (int r = 0; r < R; ++r) wr[r] = a.w.row(r0 + std::min(r, rows - 1));
  __m512 total[R][G];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) total[r][g] = _mm512_setzero_ps();
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  for (int64_t b = 0; b < nb; ++b) {
    __m512i acc[R][G];
    for (int g = 0; g < G; ++g) {
      const __m512i bias = _mm512_loadu_si512(xl.bias.data() + (size_t(g0 + g) * nb + b) * 16);
      for (int r = 0; r < R; ++r) acc[r][g] = bias;
    }
#pragma GCC unroll 8
    for (int k4 = 0; k4 < 8; ++k4) {
      __m512i x[G];
      for (int g = 0; g < G; ++g)
        x[g] = _mm512_loadu_si512(xl.q.data() + ((size_t(g0 + g) * k4s + size_t(b * 8 + k4)) * 16) * 4);
      for (int r = 0; r < R; ++r) {
        int32_t w4;
        std::memcpy(&w4, wr[r] + b * 34 + 2 + k4 * 4, 4);
        const __m512i w = _mm512_xor_si512(_mm512_set1_epi32(w4), flip);
        for (int g = 0; g < G; ++g) acc[r][g] = _mm512_dpbusd_epi32(acc[r][g], w, x[g]);
      }
    }
    __m512 dx[G];
    for (int g = 0; g < G; ++g) dx[g] = _mm512_loadu_ps(xl.d.data() + (size_t(g0 + g) * nb + b) * 16);
    for (int r = 0; r < R; ++r) {
      uint16_t h;
      std::memcpy(&h, wr[r] + b * 34, 2);
      const __m512 dw = _mm512_set1_ps(_cvtsh_ss(h));
      for (int g = 0; g < G; ++g)
        total[r][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][g]), _mm512_mul_ps(dw, dx[g]), total[r][g]);
    }
  }
  alignas(64) float tmp[R][16];
  for (int g = 0; g < G; ++g) {
    for (int r = 0; r < R; ++r) _mm512_store_ps(tmp[r], total[r][g]);
    const int t0 = (g0 + g) * 16, n = std::min(16, a.n_tokens - t0);
    for (int t = 0; t < n; ++t) {
      float* y = a.y + size_t(t0 + t) * size_t(a.w.rows) + size_t(r0);
      for (int r = 0; r < rows; ++r) y[r] = tmp[r][t];
    }
  }
}

void gemm_i8_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const Int8Lanes& xl = *a.xl;
  const size_t row_bytes = a.w.row_bytes();
  for (int64_t r = r0; r < r1; r += kI8Rows) {
    const int rows = int(std::min<int64_t>(kI8Rows, r1 - r));
    // Keep the panel kI8PanelsAhead ahead on its way from DRAM while this one computes.
    if (r == r0) {
      const char* first = reinterpret_cast<const char*>(a.w.row(r));
      const size_t bytes = row_bytes * size_t(std::min<int64_t>(kI8Rows * kI8PanelsAhead, r1 - r));
      for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(first + b, _MM_HINT_T1);
    }
    if (r + kI8Rows * kI8PanelsAhead < r1) {
      const char* next = reinterpret_cast<const char*>(a.w.row(r + kI8Rows * kI8PanelsAhead));
      const size_t bytes = row_bytes * size_t(std::min<int64_t>(kI8Rows, r1 - r - kI8Rows * kI8PanelsAhead));
      for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(next + b, _MM_HINT_T1);
    }
    int g = 0;
    for (; g + 2 <= xl.n_groups; g += 2) gemm_i8_tile<kI8Rows, 2>(a, xl, r, rows, g);
    if (g < xl.n_groups) gemm_i8_tile<kI8Rows, 1>(a, xl, r, rows, g);
  }
}

// Quantizes the 16 tokens of group g straight into the Int8Lanes layout (same rounding as
// quantize_input_rows: exact scale for the values, f16-rounded scale stored).
void quantize_int8_lanes_avx512(const float* x, Int8Lanes& l, int g) {
  auto* dst = reinterpret_cast<int32_t*>(l.q.data()) + size_t(g) * size_t(l.cols / 4) * 16;
  float* d = l.d.data() + size_t(g) * size_t(l.n_blocks) * 16;
  int32_t* bias = l.bias.data() + size_t(g) * size_t(l.n_blocks) * 16;
  const __m512 sign_off = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  for (int lane = 0; lane < 16; ++lane) {
    const int t = g * 16 + lane;
    if (t >= l.n_tokens) {
      for (int64_t k4 = 0; k4 < l.cols / 4; ++k4) dst[size_t(k4) * 16 + size_t(lane)] = 0;
      for (int64_t b = 0; b < l.n_blocks; ++b) d[size_t(b) * 16 + size_t(lane)] = 0.f, bias[size_t(b) * 16 + size_t(lane)] = 0;
      continue;
    }
    const float* xr = x + size_t(t) * size_t(l.cols);
    for (int64_t b = 0; b < l.n_blocks; ++b) {
      const __m512 v0 = _mm512_loadu_ps(xr + b * 32), v1 = _mm512_loadu_ps(xr + b * 32 + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(v0, sign_off), _mm512_and_ps(v1, sign_off)));
      const float scale = amax / 127.f;
      const __m512 inv = _mm512_set1_ps(scale != 0.f ? 1.f / scale : 0.f);
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
      bias[size_t(b) * 16 + size_t(lane)] = -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      d[size_t(b) * 16 + size_t(lane)] = _cvtsh_ss(_cvtss_sh(scale, _MM_FROUND_TO_NEAREST_INT));
      alignas(32) int32_t words[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(words),
                         _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtsepi32_epi8(q0)), _mm512_cvtsepi32_epi8(q1), 1));
      for (int w = 0; w < 8; ++w) dst[(size_t(b) * 8 + size_t(w)) * 16 + size_t(lane)] = words[w];
    }
  }
}

void pack_bf16_rows_avx512(const float* x, Bf16Input& b, int t_begin, int t_end) {
  alignas(64) uint32_t pairs[16];
  for (int t = t_begin; t < t_end; ++t) {
    uint32_t* g = reinterpret_cast<uint32_t*>(b.data.data() + size_t(t / 16) * size_t(b.cols) * 16);
    const float* xr = x + size_t(t) * b.cols;
    const int lane = t % 16;
    int64_t j = 0;
    for (; j + 16 <= b.cols / 2; j += 16) {
      const __m512 lo = _mm512_loadu_ps(xr + 2 * j), hi = _mm512_loadu_ps(xr + 2 * j + 16);
      _mm512_store_si512(pairs, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
      for (int i = 0; i < 16; ++i) g[size_t(j + i) * 16 + size_t(lane)] = pairs[i];
    }
    for (; j < b.cols / 2; ++j)
      g[size_t(j) * 16 + size_t(lane)] = uint32_t(fp32_to_bf16(xr[2 * j])) | uint32_t(fp32_to_bf16(xr[2 * j + 1])) << 16;
  }
}

// Batch 1-2 (decode): tiles of 4 rows x 2 tokens stream the weights at memory speed;
// 3-7 tokens: 4 x 4 integer tiles; from kBf16MinTokens on: the bf16 GEMM.
template <class K>
void rows_fn(const MatmulArgs& a, int64_t r0, int64_t r1) {
  // The tiles prefetch kPrefetchBytes ahead of themselves; start that window now.
  const char* first = reinterpret_cast<const char*>(a.w.row(r0));
  const size_t window = std::min<size_t>(kPrefetchBytes, size_t(r1 - r0) * a.w.row_bytes());
  for (size_t b = 0; b < window; b += 64) _mm_prefetch(first + b, _MM_HINT_T0);
  if (a.n_tokens <= 2)
    TileDriver<K, 4, 2>::run(a, r0, r1);
  else
    TileDriver<K, 4, 4>::run(a, r0, r1);
}

template <class K>
void quant_rows_fn(const MatmulArgs& a, int64_t r0, int64_t r1) {
  if (a.xl && a.n_tokens >= kBf16MinTokens && a.w.type == TensorType::Q8_0)
    gemm_i8_rows(a, r0, r1);
  else if (a.w.type == TensorType::Q8_0 && a.n_tokens <= kShadowMaxTokens && !a.qx->shadow.empty())
    rows_fn<Q8_0RowKernel>(a, r0, r1);
  else if (a.xb && a.n_tokens >= kBf16MinTokens)
    gemm_bf16_rows(a, r0, r1);
  else
    rows_fn<K>(a, r0, r1);
}

}  // namespace

const MatmulKernels* avx512_kernels() {
  static const MatmulKernels k{"avx512-vnni",
                               rows_fn<FloatKernel<FloatWeights<float>>>,
                               rows_fn<FloatKernel<FloatWeights<F16Tag>>>,
                               quant_rows_fn<FloatKernel<FloatWeights<BF16Tag>>>,
                               quant_rows_fn<Q8_0Kernel>,
                               quant_rows_fn<Q4_0Kernel>,
                               kGemmRows,
                               kBf16MinTokens,
                               pack_bf16_rows_avx512,
                               quantize_int8_lanes_avx512,
                               true};
  return &k;
}

}  // namespace tutti::cpu
