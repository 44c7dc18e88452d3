// Portable kernels: the fallback on CPUs without AVX2, and the reference that the vector
// kernels are tested against. Same arithmetic as the vector kernels (integer block dot
// products for quantized weights), only the order of float additions differs.
#include "kernels/cpu/matmul_kernels.h"

namespace tutti::cpu {

namespace {

template <class Load>
void float_rows(const MatmulArgs& a, int64_t r0, int64_t r1, Load load) {
  const int64_t k = a.w.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = a.w.row(r);
    for (int t = 0; t < a.n_tokens; ++t) {
      const float* x = a.x + size_t(t) * k;
      float s = 0.f;
      for (int64_t i = 0; i < k; ++i) s += load(row, i) * x[i];
      a.y[size_t(t) * a.w.rows + r] = s;
    }
  }
}

void f32_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  float_rows(a, r0, r1, [](const uint8_t* row, int64_t i) { return reinterpret_cast<const float*>(row)[i]; });
}
void f16_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  float_rows(a, r0, r1, [](const uint8_t* row, int64_t i) { return fp16_to_fp32(reinterpret_cast<const uint16_t*>(row)[i]); });
}
void bf16_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  float_rows(a, r0, r1, [](const uint8_t* row, int64_t i) { return bf16_to_fp32(reinterpret_cast<const uint16_t*>(row)[i]); });
}

void q8_0_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const QuantizedInput& q = *a.qx;
  for (int64_t r = r0; r < r1; ++r) {
    auto* blocks = reinterpret_cast<const BlockQ8_0*>(a.w.row(r));
    for (int t = 0; t < a.n_tokens; ++t) {
      const int8_t* qs = q.qs_row(t);
      const float* d = q.d_row(t);
      float s = 0.f;
      for (int64_t b = 0; b < q.n_blocks; ++b) {
        int32_t isum = 0;
        for (int j = 0; j < 32; ++j) isum += int32_t(blocks[b].q[j]) * qs[b * 32 + j];
        s += float(isum) * (fp16_to_fp32(blocks[b].d) * d[b]);
      }
      a.y[size_t(t) * a.w.rows + r] = s;
    }
  }
}

void q4_0_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const QuantizedInput& q = *a.qx;
  for (int64_t r = r0; r < r1; ++r) {
    auto* blocks = reinterpret_cast<const BlockQ4_0*>(a.w.row(r));
    for (int t = 0; t < a.n_tokens; ++t) {
      const int8_t* qs = q.qs_row(t);
      const float* d = q.d_row(t);
      float s = 0.f;
      for (int64_t b = 0; b < q.n_blocks; ++b) {
        int32_t isum = 0;
        for (int j = 0; j < 16; ++j) {
          isum += (int32_t(blocks[b].qs[j] & 15) - 8) * qs[b * 32 + j];
          isum += (int32_t(blocks[b].qs[j] >> 4) - 8) * qs[b * 32 + j + 16];
        }
        s += float(isum) * (fp16_to_fp32(blocks[b].d) * d[b]);
      }
      a.y[size_t(t) * a.w.rows + r] = s;
    }
  }
}

}  // namespace

const MatmulKernels& scalar_kernels() {
  static const MatmulKernels k{"scalar", f32_rows, f16_rows, bf16_rows, q8_0_rows, q4_0_rows, 1, 0};
  return k;
}

}  // namespace tutti::cpu
