// Internal to the CPU backend: the matrix-product kernels of one instruction set, and the
// quantized activation format that the Q8_0 / Q4_0 kernels consume.
//
// Quantized weights are read in place from the mmap; the activations are quantized once per
// product into 32-value blocks (int8 with an f16-rounded scale, as ggml does), so the inner
// loops are integer dot products. Each kernel computes rows [row_begin, row_end) of y for
// all tokens, so threads split a product by rows and never write the same output.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace tutti::cpu {

// Activations of n_tokens rows of `cols` values in 32-value blocks. Per token, block pairs
// p = (2p, 2p+1) carry pre-expanded data for 512-bit kernels: 16 scales (8 for each block,
// 0 for a missing odd block) and 16 int32 lane biases (-8 * sum of 4 consecutive values)
// used by Q4_0, whose unsigned nibbles need the -8 offset folded back in.
struct QuantizedInput {
  int n_tokens = 0;
  int64_t cols = 0;
  int64_t n_blocks = 0;
  int64_t n_pairs = 0;
  std::vector<int8_t> qs;        // [n_tokens][n_pairs * 64] signed values (zero padded)
  std::vector<uint8_t> qu;       // qs + 128, for kernels whose weights are the signed operand
  std::vector<float> d;          // [n_tokens][n_blocks] scales
  std::vector<float> d_pair;     // [n_tokens][n_pairs * 16]
  std::vector<int32_t> q4_bias;  // [n_tokens][n_pairs * 16]

  const int8_t* qs_row(int t) const { return qs.data() + size_t(t) * n_pairs * 64; }
  const uint8_t* qu_row(int t) const { return qu.data() + size_t(t) * n_pairs * 64; }
  const float* d_row(int t) const { return d.data() + size_t(t) * n_blocks; }
  const float* d_pair_row(int t) const { return d_pair.data() + size_t(t) * n_pairs * 16; }
  const int32_t* q4_bias_row(int t) const { return q4_bias.data() + size_t(t) * n_pairs * 16; }

  // The activations laid out like a Q8_0 weight row (34-byte blocks: two zero bytes where
  // the weight has its scale, then the 32 values), in 64-byte chunks, so a kernel can load
  // a weight row 64 bytes at a time and multiply it as it is: the scale bytes meet zeros,
  // and no 4-byte lane holds values of two blocks. Per chunk: 16 lane biases (-128 * the
  // lane's sum) and 16 lane scales (the scale of the lane's block). Filled for small
  // batches only (see shadow_max_tokens).
  int64_t n_chunks = 0;             // ceil(row bytes / 64)
  std::vector<int8_t> shadow;       // [n_tokens][n_chunks * 64]
  std::vector<int32_t> shadow_bias; // [n_tokens][n_chunks * 16]
  std::vector<float> shadow_d;      // [n_tokens][n_chunks * 16]
  const int8_t* shadow_row(int t) const { return shadow.data() + size_t(t) * n_chunks * 64; }
  const int32_t* shadow_bias_row(int t) const { return shadow_bias.data() + size_t(t) * n_chunks * 16; }
  const float* shadow_d_row(int t) const { return shadow_d.data() + size_t(t) * n_chunks * 16; }
};
constexpr int kShadowMaxTokens = 2;  // decode sizes, where the Q8_0 kernel uses the shadow layout

void resize_quantized_input(QuantizedInput& q, int n_tokens, int64_t cols);
// Quantizes tokens [t_begin, t_end) of x; thread-safe for disjoint token ranges.
void quantize_input_rows(const float* x, QuantizedInput& q, int t_begin, int t_end);

// Activations as bf16 for the batched (GEMM) kernels: tokens in groups of 16, and within a
// group, for each pair of columns k = 2j, 2j+1, the 16 tokens' pairs side by side:
//   element ((g * cols/2 + j) * 16 + t % 16) * 2 + (k & 1), g = t / 16,
// so one 512-bit load gives one column pair of 16 tokens. Missing tokens are zero.
struct Bf16Input {
  int n_tokens = 0;
  int64_t cols = 0;
  int n_groups = 0;
  std::vector<uint16_t> data;
  const uint16_t* group(int g) const { return data.data() + size_t(g) * size_t(cols) * 16; }
};
void resize_bf16_input(Bf16Input& b, int n_tokens, int64_t cols);

// Row-quantized activations re-laid out for the integer GEMM: tokens in groups of 16 as
// vector lanes, 4 consecutive columns per lane (one VPDPBUSD operand per 4 columns):
//   q:    byte  ((g * cols/4 + k/4) * 16 + t % 16) * 4 + k % 4     (signed values)
//   d:    float (g * n_blocks + b) * 16 + t % 16                   (block scales)
//   bias: int32 (g * n_blocks + b) * 16 + t % 16  = -128 * sum of the block's values
// (the weights enter VPDPBUSD as unsigned w + 128; the bias takes the 128 back out).
// Missing tokens of the last group are zero.
struct Int8Lanes {
  int n_tokens = 0, n_groups = 0;
  int64_t cols = 0, n_blocks = 0;
  std::vector<int8_t> q;
  std::vector<float> d;
  std::vector<int32_t> bias;
};
void resize_int8_lanes(Int8Lanes& l, int n_tokens, int64_t cols);

struct MatmulArgs {
  MatrixView w;
  const float* x = nullptr;             // [n_tokens][cols] for float weights
  const QuantizedInput* qx = nullptr;   // for quantized weights
  const Bf16Input* xb = nullptr;        // for the batched bf16 path, when the kernel set has one
  const Int8Lanes* xl = nullptr;        // for the batched integer path (Q8_0)
  float* y = nullptr;                   // [n_tokens][w.rows]
  int n_tokens = 0;
};

using MatmulRowsFn = void (*)(const MatmulArgs& args, int64_t row_begin, int64_t row_end);

struct MatmulKernels {
  const char* isa;
  MatmulRowsFn f32, f16, bf16, q8_0, q4_0;
  // Rows a kernel prefers to own as a unit (splitting finer costs tile efficiency).
  int row_tile;
  // From this many tokens on, quantized and bf16 weights go through the bf16 GEMM path
  // (weights widened to bf16 a panel at a time, products with VDPBF16PS), which needs
  // MatmulArgs::xb. 0: this kernel set has no such path.
  int bf16_gemm_min_tokens = 0;
  // Fills tokens [t_begin, t_end) of a Bf16Input (thread-safe for disjoint ranges).
  void (*pack_bf16)(const float* x, Bf16Input& b, int t_begin, int t_end) = nullptr;
  // Quantizes token group g of x into Int8Lanes (thread-safe per group), for the integer GEMM.
  void (*quantize_lanes)(const float* x, Int8Lanes& l, int group) = nullptr;
  // Whether attend_group_avx512 may run with this kernel set (it needs the same ISA).
  bool avx512_attention = false;
  MatmulRowsFn for_type(TensorType t) const {
    switch (t) {
      case TensorType::F32: return f32;
      case TensorType::F16: return f16;
      case TensorType::BF16: return bf16;
      case TensorType::Q8_0: return q8_0;
      case TensorType::Q4_0: return q4_0;
    }
    return nullptr;
  }
};

const MatmulKernels& scalar_kernels();
const MatmulKernels* avx2_kernels();    // null when not compiled in
const MatmulKernels* avx512_kernels();  // null when not compiled in

bool cpu_has_avx2();
bool cpu_has_avx512();  // F, BW, VL, DQ, VNNI and BF16: what the avx512 kernels use

// Row tiles x column tiles over a kernel's tile<R, C>(args, row, col) template, handling
// the remainders with smaller tiles. K provides `template <int R, int C> static void tile`.
template <class K, int RM, int CM>
struct TileDriver {
  template <int R>
  static void columns(const MatmulArgs& a, int64_t r) {
    int c = 0;
    for (; c + CM <= a.n_tokens; c += CM) K::template tile<R, CM>(a, r, c);
    const int left = a.n_tokens - c;
    if constexpr (CM > 1) if (left == 1) K::template tile<R, 1>(a, r, c);
    if constexpr (CM > 2) if (left == 2) K::template tile<R, 2>(a, r, c);
    if constexpr (CM > 3) if (left == 3) K::template tile<R, 3>(a, r, c);
  }
  static void run(const MatmulArgs& a, int64_t row_begin, int64_t row_end) {
    int64_t r = row_begin;
    for (; r + RM <= row_end; r += RM) columns<RM>(a, r);
    for (; r < row_end; ++r) columns<1>(a, r);
  }
};

}  // namespace tutti::cpu
