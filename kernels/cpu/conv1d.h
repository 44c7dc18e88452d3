// The operations of 1-D convolutional codecs (SNAC): a packed-matrix GEMM that every
// convolution lowers to, depthwise dilated convolution, and the Snake activation. Plain
// functions over float rows; the codec (codecs/snac.*) owns the buffers and the layer graph.
//
// Activations are [channels, time] with time contiguous: a row per channel, `ld` floats
// apart. Every row is padded to a multiple of kGemmColumns floats and the kernels may read
// and write that padding (it holds garbage the caller ignores), so no kernel needs a
// masked tail.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace tutti {
class ThreadPool;
}

namespace tutti::cpu::conv {

constexpr int kPanelRows = 12;    // rows of A per packed panel (every kernel set's tile height)
constexpr int kGemmColumns = 32;  // columns one tile covers; row strides are a multiple of it

inline int padded_columns(int n) { return (n + kGemmColumns - 1) / kGemmColumns * kGemmColumns; }

// A [m x k] row-major matrix repacked as ceil(m / 12) panels of [k][12] (rows past m zero),
// so a tile broadcasts 12 consecutive floats per step of k.
struct PackedMatrix {
  int m = 0, k = 0;
  std::vector<float> data;
  const float* panel(int p) const { return data.data() + size_t(p) * size_t(k) * kPanelRows; }
  int panels() const { return (m + kPanelRows - 1) / kPanelRows; }
};
PackedMatrix pack_matrix(const float* a, int m, int k, int lda);

// c[i][j] = bias[i] (or 0) + sum_l a[i][l] * b[l][j] for i < a.m, j < n (columns up to
// padded_columns(n) may be written too). b rows are ldb apart, c rows ldc apart; both
// multiples of kGemmColumns. With a pool, column tiles are split between its threads.
void gemm(const PackedMatrix& a, const float* b, int ldb, int n, float* c, int ldc, const float* bias,
          ThreadPool* pool = nullptr);

// y[t] = bias + sum_j w[j] * x[t + j * dilation] for t < n: x points at the padded input
// (the first tap's sample), so the caller provides (k - 1) * dilation samples of context.
void depthwise_row(const float* x, int n, const float* w, int k, int dilation, float bias, float* y);

// x[t] += sin(alpha * x[t])^2 / (alpha + 1e-9) for t < n, in place (the Snake activation).
void snake_row(float* x, int n, float alpha);

// Which GEMM kernel runs: the best this CPU has unless forced (tests compare them).
enum class GemmIsa { Scalar, Avx2, Avx512 };
GemmIsa best_gemm_isa();
void force_gemm_isa(GemmIsa isa);  // for tests and benchmarks; not thread-safe
const char* gemm_isa_name(GemmIsa isa);

namespace detail {
// One tile: rows [0, 12) of panel `a` (k steps) times columns [0, 32) of b, into c.
// `accumulate`: add to c instead of starting from bias.
using TileKernel = void (*)(const float* a, int k, const float* b, int ldb, float* c, int ldc, int rows,
                            const float* bias, bool accumulate);
void tile_scalar(const float* a, int k, const float* b, int ldb, float* c, int ldc, int rows, const float* bias, bool accumulate);
void tile_avx2(const float* a, int k, const float* b, int ldb, float* c, int ldc, int rows, const float* bias, bool accumulate);
void tile_avx512(const float* a, int k, const float* b, int ldb, float* c, int ldc, int rows, const float* bias, bool accumulate);
}  // namespace detail

}  // namespace tutti::cpu::conv
