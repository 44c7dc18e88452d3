#include "kernels/cpu/vec_ops.h"

#include <algorithm>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstring>

#include "kernels/tensor_type.h"

#if defined(__x86_64__) && !defined(TUTTI_NO_CLONES)
#define TUTTI_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TUTTI_CLONES
#endif

namespace tutti::cpu {

namespace {
// e^x to about 1 ulp over the float range (Cephes expf), inlinable so loops vectorise.
inline float fast_exp(float x) {
  x = std::min(88.3762626647949f, std::max(-87.3365447505531f, x));
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += int32_t(n) << 23;
  std::memcpy(&p, &bits, 4);
  return p;
}
}  // namespace

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
