// Small element-wise primitives of the CPU backend, compiled for several x86-64 levels
// with the best chosen at load time (GCC target_clones).
#pragma once

#include <cstddef>
#include <cstdint>

namespace tutti::cpu {

void f32_to_f16(const float* x, uint16_t* y, size_t n);                  // round to nearest even
double sum_squares(const float* x, size_t n);  // accumulated in double, as ggml's rms_norm does
void silu_mul(const float* gate, const float* up, float* out, size_t n);  // out = silu(gate) * up
void add_f32(float* x, const float* y, size_t n);                        // x += y

}  // namespace tutti::cpu
