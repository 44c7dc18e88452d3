// Small vector primitives of the CPU backend (dot, axpy, conversions), compiled for several
// x86-64 levels with the best chosen at load time (GCC target_clones).
#pragma once

#include <cstddef>
#include <cstdint>

namespace tutti::cpu {

float dot_f32(const float* a, const float* b, size_t n);
float dot_f32_f16(const float* a, const uint16_t* b, size_t n);
void axpy_f32(float alpha, const float* x, float* y, size_t n);       // y += alpha * x
void axpy_f16(float alpha, const uint16_t* x, float* y, size_t n);    // y += alpha * x
void f32_to_f16(const float* x, uint16_t* y, size_t n);
void f16_to_f32(const uint16_t* x, float* y, size_t n);
double sum_squares(const float* x, size_t n);
void silu_mul(const float* gate, const float* up, float* out, size_t n);  // out = silu(gate) * up
void add_f32(float* x, const float* y, size_t n);                        // x += y  // accumulated in double, as ggml's rms_norm does

}  // namespace tutti::cpu
