// The AVX2 GEMM tile of kernels/cpu/conv1d.h: the 12 x 32 tile as four 6 x 16 sub-tiles of
// 12 accumulators each (AVX2 has 16 registers).
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/conv1d.h"

namespace tutti::cpu::conv::detail {

namespace {
void subtile(const float* a, int k, const float* b, int ldb, float* c, int ldc, int rows, const float* bias, bool accumulate) {
  __m256 acc[6][2];
  for (int i = 0; i < 6; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int l = 0; l < k; ++l) {
    const float* bl = b + size_t(l) * ldb;
    const __m256 b0 = _mm256_loadu_ps(bl), b1 = _mm256_loadu_ps(bl + 8);
    const float* al = a + l * kPanelRows;
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) {
      const __m256 w = _mm256_broadcast_ss(al + i);
      acc[i][0] = _mm256_fmadd_ps(w, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(w, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < rows; ++i) {
    float* out = c + size_t(i) * ldc;
    __m256 s0, s1;
    if (accumulate) {
      s0 = _mm256_loadu_ps(out);
      s1 = _mm256_loadu_ps(out + 8);
    } else {
      s0 = s1 = _mm256_set1_ps(bias ? bias[i] : 0.0f);
    }
    _mm256_storeu_ps(out, _mm256_add_ps(s0, acc[i][0]));
    _mm256_storeu_ps(out + 8, _mm256_add_ps(s1, acc[i][1]));
  }
}
}  // namespace

void tile_avx2(const float* a, int k, const float* b, int ldb, float* c, int ldc, int rows, const float* bias, bool accumulate) {
  for (int half = 0; half < 2; ++half) {
    const int r0 = half * 6;
    const int r = std::min(6, rows - r0);
    if (r <= 0) break;
    for (int cols = 0; cols < kGemmColumns; cols += 16)
      subtile(a + r0, k, b + cols, ldb, c + size_t(r0) * ldc + cols, ldc, r, bias ? bias + r0 : nullptr, accumulate);
  }
}

}  // namespace tutti::cpu::conv::detail
