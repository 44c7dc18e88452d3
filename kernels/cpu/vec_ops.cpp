#include "kernels/cpu/vec_ops.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/cpu/cpu_math.h"
#include "kernels/tensor_type.h"

namespace tutti::cpu {

TUTTI_CLONES void silu_mul(const float* gate, const float* up, float* out, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + fast_exp(-gate[i])) * up[i];
}

TUTTI_CLONES void add_f32(float* x, const float* y, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) x[i] += y[i];
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void f32_to_f16_avx512(const float* x, uint16_t* y, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}
#endif

void f32_to_f16(const float* x, uint16_t* y, size_t n) {
#if defined(__x86_64__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) return f32_to_f16_avx512(x, y, n);
#endif
  for (size_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

TUTTI_CLONES double sum_squares(const float* x, size_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (size_t i = 0; i < n; ++i) s += double(x[i] * x[i]);
  return s;
}

}  // namespace tutti::cpu
