#include "kernels/cpu/vec_ops.h"

#include <cstring>

#include "kernels/tensor_type.h"

#if defined(__x86_64__) && !defined(TUTTI_NO_CLONES)
#define TUTTI_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TUTTI_CLONES
#endif

namespace tutti::cpu {

namespace {
// Branch-free half -> float for the vectoriser (normals, zero and subnormals flushed as
// in-range values; the KV cache only stores finite activations).
inline float h2f(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t em = uint32_t(h & 0x7fff);
  // Shift exponent and mantissa into place and rescale by 2^112 to rebias.
  uint32_t bits = em << 13;
  float f;
  std::memcpy(&f, &bits, 4);
  f *= 5.192296858534828e+33f;  // 2^112
  uint32_t out;
  std::memcpy(&out, &f, 4);
  out |= sign;
  std::memcpy(&f, &out, 4);
  return f;
}
}  // namespace

TUTTI_CLONES float dot_f32(const float* a, const float* b, size_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

TUTTI_CLONES float dot_f32_f16(const float* a, const uint16_t* b, size_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (size_t i = 0; i < n; ++i) s += a[i] * h2f(b[i]);
  return s;
}

TUTTI_CLONES void axpy_f32(float alpha, const float* x, float* y, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

TUTTI_CLONES void axpy_f16(float alpha, const uint16_t* x, float* y, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) y[i] += alpha * h2f(x[i]);
}

void f32_to_f16(const float* x, uint16_t* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

TUTTI_CLONES void f16_to_f32(const uint16_t* x, float* y, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) y[i] = h2f(x[i]);
}

TUTTI_CLONES double sum_squares(const float* x, size_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (size_t i = 0; i < n; ++i) s += double(x[i] * x[i]);
  return s;
}

}  // namespace tutti::cpu
