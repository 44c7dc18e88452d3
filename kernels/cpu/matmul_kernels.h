// Internal to the CPU backend: the matrix-product kernels of one instruction set, as one table
// indexed by tensor type, and the activation layouts those kernels consume.
//
// Weights are read in place from the mmap (the K-quant GEMM paths unpack a few rows at a time
// into a thread's own panel, never a copy of the matrix). Quantized weights multiply
// quantized activations, as ggml does, so the inner loops are integer dot products: 32-value
// int8 blocks for the 32-value types, 256-value Q8_K super-blocks for the K-quants. Each
// kernel computes rows [row_begin, row_end) of y for all tokens, so threads split a product
// by rows and never write the same output.
//
// A type's entry names a decode kernel (few tokens) and optionally a GEMM kernel (from
// MatmulKernels::gemm_min_tokens tokens on), each with the input layout it reads; the
// backend prepares every layout a product needs once, then runs the kernels. A new type is
// one entry per kernel set.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace tutti::cpu {

// The activation layouts. Float is x as given; the others are prepared per product.
enum class InputFormat : uint8_t {
  Float,      // f32 rows
  Q8Blocks,   // QuantizedInput: 32-value int8 blocks
  Q8KBlocks,  // Q8KInput: 256-value Q8_K super-blocks
  Bf16Lanes,  // Bf16Input: bf16, tokens as vector lanes (AVX-512 GEMM)
  Int8Lanes,  // Int8Lanes: 32-value int8 blocks, tokens as lanes (AVX-512 Q8_0 GEMM)
  Q8KLanes,   // Q8KLanes: Q8_K super-blocks, tokens as lanes (AVX-512 K-quant GEMM)
};
constexpr int kInputFormats = 6;

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
  std::vector<float> s;          // [n_tokens][n_blocks] d * sum of the block's values, f16-rounded
                                 // (ggml's Q8_1 "s": the Q4_1 / Q5_1 min term)
  std::vector<float> d_pair;     // [n_tokens][n_pairs * 16]
  std::vector<float> s_pair;     // [n_tokens][n_pairs * 16]: s / 8 in each of its block's 8 lanes
  std::vector<int32_t> q4_bias;  // [n_tokens][n_pairs * 16]

  const int8_t* qs_row(int t) const { return qs.data() + size_t(t) * n_pairs * 64; }
  const uint8_t* qu_row(int t) const { return qu.data() + size_t(t) * n_pairs * 64; }
  const float* d_row(int t) const { return d.data() + size_t(t) * n_blocks; }
  const float* s_row(int t) const { return s.data() + size_t(t) * n_blocks; }
  const float* d_pair_row(int t) const { return d_pair.data() + size_t(t) * n_pairs * 16; }
  const float* s_pair_row(int t) const { return s_pair.data() + size_t(t) * n_pairs * 16; }
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

// Activations as ggml's Q8_K super-blocks (tensor_type.h), for the K-quant kernels.
struct Q8KInput {
  int n_tokens = 0;
  int64_t cols = 0, n_super = 0;
  std::vector<BlockQ8_K> blocks;  // [n_tokens][n_super]
  const BlockQ8_K* row(int t) const { return blocks.data() + size_t(t) * size_t(n_super); }
};
void resize_q8k_input(Q8KInput& q, int n_tokens, int64_t cols);
void quantize_q8k_rows(const float* x, Q8KInput& q, int t_begin, int t_end);

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

// Q8_K activations with tokens as lanes, for the K-quant integer GEMM:
//   q:     byte  ((g * cols/4 + k/4) * 16 + t % 16) * 4 + k % 4   (as Int8Lanes)
//   d:     float (g * n_super + s) * 16 + t % 16                  (super-block scales)
//   bsums: int32 ((g * n_super + s) * 8 + i) * 16 + t % 16        = the sums of values
//          [32i, 32i + 16) (low half) and [32i + 16, 32i + 32) (high half), as int16 pairs
// Missing tokens of the last group are zero.
struct Q8KLanes {
  int n_tokens = 0, n_groups = 0;
  int64_t cols = 0, n_super = 0;
  std::vector<int8_t> q;
  std::vector<float> d;
  std::vector<int32_t> bsums;
};
void resize_q8k_lanes(Q8KLanes& l, int n_tokens, int64_t cols);

struct MatmulArgs {
  MatrixView w;
  const float* x = nullptr;             // [n_tokens][cols]
  const QuantizedInput* qx = nullptr;   // the prepared layouts (each null unless prepared)
  const Q8KInput* qk = nullptr;
  const Bf16Input* xb = nullptr;
  const Int8Lanes* xl = nullptr;
  const Q8KLanes* xkl = nullptr;
  float* y = nullptr;                   // [n_tokens][w.rows]
  int n_tokens = 0;
};

using MatmulRowsFn = void (*)(const MatmulArgs& args, int64_t row_begin, int64_t row_end);

struct TypeKernels {
  MatmulRowsFn decode = nullptr;  // null: the type has no kernel in this set
  InputFormat decode_input = InputFormat::Float;
  MatmulRowsFn gemm = nullptr;    // null: decode runs at every size
  InputFormat gemm_input = InputFormat::Float;
};

struct MatmulKernels {
  const char* isa = "";
  std::array<TypeKernels, kTensorTypeIdLimit> types{};  // indexed by tensor type id
  // Rows a kernel prefers to own as a unit (splitting finer costs tile efficiency).
  int row_tile = 1;
  // From this many tokens on, a type's gemm kernel runs (0: the set has no GEMM paths).
  int gemm_min_tokens = 0;
  // Layout preparation the set vectorizes itself (null: the portable code). Each fills
  // tokens [t_begin, t_end) (pack_bf16) or one 16-token group (the lanes); thread-safe for
  // disjoint ranges.
  void (*pack_bf16)(const float* x, Bf16Input& b, int t_begin, int t_end) = nullptr;
  void (*quantize_lanes)(const float* x, Int8Lanes& l, int group) = nullptr;
  void (*quantize_k_lanes)(const float* x, Q8KLanes& l, int group) = nullptr;
  void (*quantize_k_rows)(const float* x, Q8KInput& q, int t_begin, int t_end) = nullptr;
  // Whether attend_group_avx512 may run with this kernel set (it needs the same ISA).
  bool avx512_attention = false;

  const TypeKernels& for_type(TensorType t) const { return types[size_t(t)]; }
  // The kernel and input layout for a product of n_tokens tokens.
  MatmulRowsFn kernel(TensorType t, int n_tokens, InputFormat& input) const {
    const TypeKernels& k = types[size_t(t)];
    const bool gemm = k.gemm && gemm_min_tokens > 0 && n_tokens >= gemm_min_tokens;
    input = gemm ? k.gemm_input : k.decode_input;
    return gemm ? k.gemm : k.decode;
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
