// Shared helpers of the CPU kernels: the multi-versioning attribute for plain-C++ loops,
// and an inlinable exp so that loops over it vectorise (libm's expf is a call per value).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// Compiles a function for AVX-512 (x86-64-v4), AVX2 (v3) and baseline x86-64; the loader
// picks the best the CPU has (GCC target_clones, resolved once through an ifunc).
#if defined(__x86_64__)
#define TUTTI_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TUTTI_CLONES
#endif

namespace tutti::cpu {

// e^x to about 1 ulp over the float range (Cephes expf): Cody-Waite reduction by ln 2, a
// degree-6 polynomial, then 2^n through the exponent bits.
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

}  // namespace tutti::cpu
