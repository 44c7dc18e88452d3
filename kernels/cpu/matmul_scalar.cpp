// Portable kernels: the fallback on CPUs without AVX2, and the reference that the vector
// kernels are tested against. Same arithmetic as the vector kernels (integer block dot
// products for quantized weights), only the order of float additions differs.
#include <vector>

#include "kernels/cpu/kquant.h"
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

// The 32-value block types against 32-value int8 activation blocks. Block<B>::quant(b, j)
// gives value j's integer quant; scaled(b, isum, dx, sx) its block's contribution.
template <class B>
struct Block32;
template <>
struct Block32<BlockQ8_0> {
  static int quant(const BlockQ8_0& b, int j) { return b.q[j]; }
  static float scaled(const BlockQ8_0& b, int32_t isum, float dx, float) { return float(isum) * (fp16_to_fp32(b.d) * dx); }
};
template <>
struct Block32<BlockQ4_0> {
  static int quant(const BlockQ4_0& b, int j) { return (j < 16 ? b.qs[j] & 15 : b.qs[j - 16] >> 4) - 8; }
  static float scaled(const BlockQ4_0& b, int32_t isum, float dx, float) { return float(isum) * (fp16_to_fp32(b.d) * dx); }
};
template <>
struct Block32<BlockQ4_1> {
  static int quant(const BlockQ4_1& b, int j) { return j < 16 ? b.qs[j] & 15 : b.qs[j - 16] >> 4; }
  static float scaled(const BlockQ4_1& b, int32_t isum, float dx, float sx) {
    return float(isum) * (fp16_to_fp32(b.d) * dx) + fp16_to_fp32(b.m) * sx;
  }
};
inline int q5_quant(const uint8_t* qs, const uint8_t* qh_bytes, int j) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  return (j < 16 ? qs[j] & 15 : qs[j - 16] >> 4) | int((qh >> j) & 1) << 4;
}
template <>
struct Block32<BlockQ5_0> {
  static int quant(const BlockQ5_0& b, int j) { return q5_quant(b.qs, b.qh, j) - 16; }
  static float scaled(const BlockQ5_0& b, int32_t isum, float dx, float) { return float(isum) * (fp16_to_fp32(b.d) * dx); }
};
template <>
struct Block32<BlockQ5_1> {
  static int quant(const BlockQ5_1& b, int j) { return q5_quant(b.qs, b.qh, j); }
  static float scaled(const BlockQ5_1& b, int32_t isum, float dx, float sx) {
    return float(isum) * (fp16_to_fp32(b.d) * dx) + fp16_to_fp32(b.m) * sx;
  }
};

template <class B>
void block32_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const QuantizedInput& q = *a.qx;
  for (int64_t r = r0; r < r1; ++r) {
    auto* blocks = reinterpret_cast<const B*>(a.w.row(r));
    for (int t = 0; t < a.n_tokens; ++t) {
      const int8_t* qs = q.qs_row(t);
      const float* d = q.d_row(t);
      const float* s = q.s_row(t);
      float sum = 0.f;
      for (int64_t b = 0; b < q.n_blocks; ++b) {
        int32_t isum = 0;
        for (int j = 0; j < 32; ++j) isum += Block32<B>::quant(blocks[b], j) * qs[b * 32 + j];
        sum += Block32<B>::scaled(blocks[b], isum, d[b], s[b]);
      }
      a.y[size_t(t) * a.w.rows + r] = sum;
    }
  }
}

// K-quants, few tokens: unpack each super-block, then its integer sums per token.
template <TensorType T>
void kquant_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const Q8KInput& q = *a.qk;
  UnpackedSuperBlock u;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = a.w.row(r);
    for (int t = 0; t < a.n_tokens; ++t) a.y[size_t(t) * a.w.rows + r] = 0.f;
    for (int64_t s = 0; s < q.n_super; ++s) {
      unpack_super_block<T>(row, s, u);
      for (int t = 0; t < a.n_tokens; ++t) {
        const BlockQ8_K& x = q.row(t)[s];
        int32_t sumi, summ;
        kquant_sums(u, x, sumi, summ);
        a.y[size_t(t) * a.w.rows + r] += x.d * (u.d * float(sumi) - u.dmin * float(summ));
      }
    }
  }
}

// K-quants, many tokens: each row unpacked once for all tokens (a thread's own panel).
template <TensorType T>
void kquant_gemm_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const Q8KInput& q = *a.qk;
  thread_local std::vector<UnpackedSuperBlock> panel;
  panel.resize(size_t(q.n_super));
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = a.w.row(r);
    for (int64_t s = 0; s < q.n_super; ++s) unpack_super_block<T>(row, s, panel[size_t(s)]);
    for (int t = 0; t < a.n_tokens; ++t) {
      float sum = 0.f;
      for (int64_t s = 0; s < q.n_super; ++s) {
        const UnpackedSuperBlock& u = panel[size_t(s)];
        const BlockQ8_K& x = q.row(t)[s];
        int32_t sumi, summ;
        kquant_sums(u, x, sumi, summ);
        sum += x.d * (u.d * float(sumi) - u.dmin * float(summ));
      }
      a.y[size_t(t) * a.w.rows + r] = sum;
    }
  }
}

template <TensorType T>
constexpr TypeKernels kquant_entry() {
  return {kquant_rows<T>, InputFormat::Q8KBlocks, kquant_gemm_rows<T>, InputFormat::Q8KBlocks};
}

MatmulKernels make_scalar() {
  MatmulKernels k;
  k.isa = "scalar";
  auto entry = [&](TensorType t, MatmulRowsFn f, InputFormat in) { k.types[size_t(t)] = {f, in, nullptr, in}; };
  entry(TensorType::F32, f32_rows, InputFormat::Float);
  entry(TensorType::F16, f16_rows, InputFormat::Float);
  entry(TensorType::BF16, bf16_rows, InputFormat::Float);
  entry(TensorType::Q8_0, block32_rows<BlockQ8_0>, InputFormat::Q8Blocks);
  entry(TensorType::Q4_0, block32_rows<BlockQ4_0>, InputFormat::Q8Blocks);
  entry(TensorType::Q4_1, block32_rows<BlockQ4_1>, InputFormat::Q8Blocks);
  entry(TensorType::Q5_0, block32_rows<BlockQ5_0>, InputFormat::Q8Blocks);
  entry(TensorType::Q5_1, block32_rows<BlockQ5_1>, InputFormat::Q8Blocks);
  k.types[size_t(TensorType::Q2_K)] = kquant_entry<TensorType::Q2_K>();
  k.types[size_t(TensorType::Q3_K)] = kquant_entry<TensorType::Q3_K>();
  k.types[size_t(TensorType::Q4_K)] = kquant_entry<TensorType::Q4_K>();
  k.types[size_t(TensorType::Q5_K)] = kquant_entry<TensorType::Q5_K>();
  k.types[size_t(TensorType::Q6_K)] = kquant_entry<TensorType::Q6_K>();
  k.row_tile = 1;
  k.gemm_min_tokens = 8;
  return k;
}

}  // namespace

const MatmulKernels& scalar_kernels() {
  static const MatmulKernels k = make_scalar();
  return k;
}

}  // namespace tutti::cpu
