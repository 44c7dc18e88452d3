// Internal to the CPU backend: the AVX-512 batched (GEMM) paths, used by the avx512 kernel
// set from kBf16MinTokens tokens on. See gemm_avx512.cpp.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/matmul_kernels.h"

namespace tutti::cpu {

// Weights are prefetched this far ahead of a tile's progress through its rows, at the pace
// they are consumed: the hardware prefetcher alone does not run far enough ahead to hide DRAM
// latency while the core is busy with the arithmetic (measured: 20 -> 40 GB/s per core on
// Zen 5 for Q8_0 at batch 1).
constexpr int64_t kPrefetchBytes = 12 * 1024;

// Starts the first kPrefetchBytes of rows [r0, r1) on their way (the tiles then keep the
// window ahead of themselves).
inline void prefetch_first_rows(const MatrixView& w, int64_t r0, int64_t r1) {
  const char* first = reinterpret_cast<const char*>(w.row(r0));
  const size_t window = size_t(std::min<int64_t>(kPrefetchBytes, (r1 - r0) * int64_t(w.row_bytes())));
  for (size_t b = 0; b < window; b += 64) _mm_prefetch(first + b, _MM_HINT_T0);
}

constexpr int kGemmRows = 12;       // bf16 GEMM panel height (<= 16); also the row unit of the kernel set
constexpr int kBf16MinTokens = 8;   // from this many tokens on, the GEMM paths run

// Rows [r0, r1) of y for all tokens. Q8_0: needs MatmulArgs::xl; the 4/5-bit 32-value types
// and BF16: needs xb.
void gemm_i8_rows_avx512(const MatmulArgs& a, int64_t r0, int64_t r1);
void gemm_bf16_rows_avx512(const MatmulArgs& a, int64_t r0, int64_t r1);

// Activation packing for the two paths (thread-safe for disjoint groups / token ranges).
void quantize_int8_lanes_avx512(const float* x, Int8Lanes& l, int group);
void pack_bf16_rows_avx512(const float* x, Bf16Input& b, int t_begin, int t_end);

// The K-quant kernels (kquant_avx512.cpp): decode and GEMM entries of every K-quant type,
// and the Q8_K lanes their GEMM reads.
void add_kquant_kernels_avx512(MatmulKernels& k);
void quantize_q8k_lanes_avx512(const float* x, Q8KLanes& l, int group);
void quantize_q8k_rows_avx512(const float* x, Q8KInput& q, int t_begin, int t_end);

}  // namespace tutti::cpu
