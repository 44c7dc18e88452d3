// AVX-512 kernels for many tokens per step (compiled with AVX-512 flags, chosen at run
// time through the avx512 kernel set): the integer GEMM for Q8_0 and the bf16 GEMM for
// Q4_0 and BF16 weights, with the activation packing they consume.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/gemm_avx512.h"

namespace tutti::cpu {

namespace {

// ---- Batched path: bf16 GEMM.
// At many tokens per step the product is compute-bound, and per-block int8 scaling costs
// three float ops per VPDPBUSD. Instead, a panel of R weight rows is widened once to bf16
// (scale applied) and multiplied with all tokens by VDPBF16PS, one instruction per 32
// multiply-adds. The panel is the only widened copy, R rows at a time per thread.


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
      default: {  // every other type through f32 (its reference dequantizer)
        thread_local std::vector<float> tmp;
        tmp.resize(size_t(k));
        dequantize_row(w.type, src, tmp.data(), size_t(k));
        int64_t i = 0;
        for (; i + 32 <= k; i += 32)
          _mm512_storeu_si512(dst + i, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(tmp.data() + i + 16),
                                                                                       _mm512_loadu_ps(tmp.data() + i))));
        for (; i < k; ++i) dst[i] = fp32_to_bf16(tmp[size_t(i)]);
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

}  // namespace

void gemm_bf16_rows_avx512(const MatmulArgs& a, int64_t r0, int64_t r1) {
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

namespace {

// ---- Batched path for Q8_0: integer GEMM, weights read in place.
// Tokens are the vector lanes. Per 4 weight columns, the weight row's 4 bytes are broadcast
// (as unsigned w + 128) and multiplied with 16 tokens' 4 activations by one VPDPBUSD;
// a block's 8 such products sum exactly in int32, then one conversion and one FMA with the
// scales (weight block scale x each token's block scale) add it to the float total.

constexpr int kI8Rows = 6;          // 6 rows x 2 token groups x (int32 + float) = 24 accumulators
constexpr int kI8PanelsAhead = 3;   // panels on their way from DRAM

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

}  // namespace

void gemm_i8_rows_avx512(const MatmulArgs& a, int64_t r0, int64_t r1) {
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

}  // namespace tutti::cpu
