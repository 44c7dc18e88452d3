// Internal to the CPU backend: every K-quant super-block in one unpacked form, so that the
// dot products and GEMM panels are written once for all five types. Header-only: each kernel
// set's file compiles it with its own instruction set.
//
// An unpacked super-block holds, for its 256 values,
//   value[i] = d * scale[i/16] * q[i]  -  dmin * min[i/16]
// with q unsigned (0..63). The symmetric types fold their offset into the min term
// (Q6_K: q in 0..63, value d*sc*(q - 32), so min = 32*sc and dmin = d; Q3_K likewise with 4),
// so one integer dot product against Q8_K activations serves them all:
//   dot = dx * (d * sum_j scale_j * sum_{i in j} q_i x_i  -  dmin * sum_j min_j * bsum_j)
// where x = dx * qx and bsum_j is the sum of qx over sub-block j (BlockQ8_K::bsums).
#pragma once

#include <cstdint>

#include "kernels/tensor_type.h"

namespace tutti::cpu {

struct UnpackedSuperBlock {
  alignas(64) uint8_t q[256];
  alignas(16) int8_t scale[16];
  alignas(32) int16_t min[16];
  float d = 0, dmin = 0;
};

template <TensorType T>
struct KQuant;

template <>
struct KQuant<TensorType::Q2_K> {
  using Block = BlockQ2_K;
  static void unpack(const Block& b, UnpackedSuperBlock& u) {
    // Value 128h + 32s + l (l < 32): bits 2s..2s+1 of qs[32h + l].
    for (int h = 0; h < 2; ++h)
      for (int s = 0; s < 4; ++s)
        for (int l = 0; l < 32; ++l) u.q[128 * h + 32 * s + l] = uint8_t((b.qs[32 * h + l] >> (2 * s)) & 3);
    for (int j = 0; j < 16; ++j) {
      u.scale[j] = int8_t(b.scales[j] & 15);
      u.min[j] = int16_t(b.scales[j] >> 4);
    }
    u.d = fp16_to_fp32(b.d);
    u.dmin = fp16_to_fp32(b.dmin);
  }
};

template <>
struct KQuant<TensorType::Q3_K> {
  using Block = BlockQ3_K;
  static void unpack(const Block& b, UnpackedSuperBlock& u) {
    // Value v = 128h + 32s + l: 2 bits as Q2_K, plus 4 * bit (4h + s) of hmask[l].
    for (int h = 0; h < 2; ++h)
      for (int s = 0; s < 4; ++s)
        for (int l = 0; l < 32; ++l)
          u.q[128 * h + 32 * s + l] =
              uint8_t(((b.qs[32 * h + l] >> (2 * s)) & 3) | (((b.hmask[l] >> (4 * h + s)) & 1) << 2));
    q3k_scales(b.scales, u.scale);
    for (int j = 0; j < 16; ++j) u.min[j] = int16_t(4 * u.scale[j]);
    u.d = u.dmin = fp16_to_fp32(b.d);
  }
};

inline void unpack_k4_scales(const uint8_t* packed, UnpackedSuperBlock& u) {
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    k4_scale_min(j, packed, sc, m);
    u.scale[2 * j] = u.scale[2 * j + 1] = int8_t(sc);
    u.min[2 * j] = u.min[2 * j + 1] = int16_t(m);
  }
}

template <>
struct KQuant<TensorType::Q4_K> {
  using Block = BlockQ4_K;
  static void unpack(const Block& b, UnpackedSuperBlock& u) {
    // Value 64c + l: low nibble of qs[32c + l]; 64c + 32 + l: its high nibble.
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        u.q[64 * c + l] = uint8_t(b.qs[32 * c + l] & 15);
        u.q[64 * c + 32 + l] = uint8_t(b.qs[32 * c + l] >> 4);
      }
    unpack_k4_scales(b.scales, u);
    u.d = fp16_to_fp32(b.d);
    u.dmin = fp16_to_fp32(b.dmin);
  }
};

template <>
struct KQuant<TensorType::Q5_K> {
  using Block = BlockQ5_K;
  static void unpack(const Block& b, UnpackedSuperBlock& u) {
    // As Q4_K, with the fifth bit of 64c + l in bit 2c of qh[l], of 64c + 32 + l in bit 2c + 1.
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        u.q[64 * c + l] = uint8_t((b.qs[32 * c + l] & 15) | ((b.qh[l] >> (2 * c)) & 1) << 4);
        u.q[64 * c + 32 + l] = uint8_t((b.qs[32 * c + l] >> 4) | ((b.qh[l] >> (2 * c + 1)) & 1) << 4);
      }
    unpack_k4_scales(b.scales, u);
    u.d = fp16_to_fp32(b.d);
    u.dmin = fp16_to_fp32(b.dmin);
  }
};

template <>
struct KQuant<TensorType::Q6_K> {
  using Block = BlockQ6_K;
  static void unpack(const Block& b, UnpackedSuperBlock& u) {
    // Per half h: value 128h + l and + 64 from the low / high nibble of ql[64h + l], + 32 and
    // + 96 from ql[64h + 32 + l]; their top two bits in qh[32h + l] (bits 0-1, 4-5, 2-3, 6-7).
    for (int h = 0; h < 2; ++h)
      for (int l = 0; l < 32; ++l) {
        const uint8_t lo = b.ql[64 * h + l], hi = b.ql[64 * h + 32 + l], top = b.qh[32 * h + l];
        u.q[128 * h + l] = uint8_t((lo & 15) | (top & 3) << 4);
        u.q[128 * h + 32 + l] = uint8_t((hi & 15) | ((top >> 2) & 3) << 4);
        u.q[128 * h + 64 + l] = uint8_t((lo >> 4) | ((top >> 4) & 3) << 4);
        u.q[128 * h + 96 + l] = uint8_t((hi >> 4) | ((top >> 6) & 3) << 4);
      }
    for (int j = 0; j < 16; ++j) {
      u.scale[j] = b.scales[j];
      u.min[j] = int16_t(32 * b.scales[j]);
    }
    u.d = u.dmin = fp16_to_fp32(b.d);
  }
};

// The integer sums of one unpacked super-block against one Q8_K block: sumi = sum_j
// scale_j * (q . x over sub-block j), summ = sum_j min_j * bsum_j. Exact in int32.
inline void kquant_sums(const UnpackedSuperBlock& u, const BlockQ8_K& x, int32_t& sumi, int32_t& summ) {
  sumi = 0;
  summ = 0;
  for (int j = 0; j < 16; ++j) {
    int32_t s = 0;
    for (int l = 0; l < 16; ++l) s += int32_t(u.q[16 * j + l]) * x.qs[16 * j + l];
    sumi += s * u.scale[j];
    summ += int32_t(u.min[j]) * x.bsums[j];
  }
}

// Unpacks super-block `s` of a row of type T.
template <TensorType T>
inline void unpack_super_block(const uint8_t* row, int64_t s, UnpackedSuperBlock& u) {
  using B = typename KQuant<T>::Block;  // 2-byte aligned: every block size is even
  KQuant<T>::unpack(reinterpret_cast<const B*>(row)[s], u);
}

}  // namespace tutti::cpu
