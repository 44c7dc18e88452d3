// The AVX-512 GEMM tile of kernels/cpu/conv1d.h: 12 rows x 32 columns, 24 accumulators;
// per step of k two vectors of b and 12 broadcasts of a (consecutive in the packed panel).
#include <immintrin.h>

#include "kernels/cpu/conv1d.h"

namespace tutti::cpu::conv::detail {

void tile_avx512(const float* a, int k, const float* b, int ldb, float* c, int ldc, int rows, const float* bias, bool accumulate) {
  __m512 acc[kPanelRows][2];
  for (int i = 0; i < kPanelRows; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int l = 0; l < k; ++l) {
    const float* bl = b + size_t(l) * ldb;
    const __m512 b0 = _mm512_loadu_ps(bl), b1 = _mm512_loadu_ps(bl + 16);
    _mm_prefetch(reinterpret_cast<const char*>(bl + 4 * size_t(ldb)), _MM_HINT_T0);
    const float* al = a + l * kPanelRows;
#pragma GCC unroll 12
    for (int i = 0; i < kPanelRows; ++i) {
      const __m512 w = _mm512_set1_ps(al[i]);
      acc[i][0] = _mm512_fmadd_ps(w, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(w, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < rows; ++i) {
    float* out = c + size_t(i) * ldc;
    __m512 s0, s1;
    if (accumulate) {
      s0 = _mm512_loadu_ps(out);
      s1 = _mm512_loadu_ps(out + 16);
    } else {
      s0 = s1 = _mm512_set1_ps(bias ? bias[i] : 0.0f);
    }
    _mm512_storeu_ps(out, _mm512_add_ps(s0, acc[i][0]));
    _mm512_storeu_ps(out + 16, _mm512_add_ps(s1, acc[i][1]));
  }
}

}  // namespace tutti::cpu::conv::detail
