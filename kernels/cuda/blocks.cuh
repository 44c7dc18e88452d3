// Device-side decoding of the weight types the CUDA backend keeps in their GGUF block layout
// (Q4_1, Q5_0, Q5_1 and the K-quants): the same bit positions as the reference dequantizers
// in kernels/tensor_type.cpp, for 16 consecutive values of a row (the unit the warp-per-row
// products and the widening kernel read) or one value (embedding rows).
//
// Within one call every value shares a sub-block (16-value sub-blocks for Q2_K, Q3_K, Q6_K;
// half of a 32-value block or sub-block for the others), so the scale is decoded once.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/tensor_type.h"

namespace tutti::cuda {

__device__ __forceinline__ float f16(const uint8_t* p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return __half2float(__ushort_as_half(h));
}

__device__ __forceinline__ uint32_t u32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

// 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block's 12 packed bytes.
__device__ __forceinline__ void k4_scale_min_dev(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q3_K's scale of sub-block j (0..15), minus 32.
__device__ __forceinline__ int q3k_scale_dev(int j, const uint8_t* packed) {
  const int low = j < 8 ? packed[j] & 15 : packed[j - 8] >> 4;
  const int high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (low | high << 4) - 32;
}

// Values [k, k + 16) of a row (k % 16 == 0) of `type`, whose bytes start at `row`.
__device__ __forceinline__ void decode16(TensorType type, const uint8_t* row, int64_t k, float (&v)[16]) {
  switch (type) {
    case TensorType::Q4_1:
    case TensorType::Q5_0:
    case TensorType::Q5_1: {
      const int64_t block = k / 32;
      const int half = int(k % 32) / 16;
      const bool affine = type != TensorType::Q5_0;
      const bool five = type != TensorType::Q4_1;
      const uint8_t* b = row + block * (type == TensorType::Q4_1 ? 20 : type == TensorType::Q5_0 ? 22 : 24);
      const float d = f16(b);
      const float m = affine ? f16(b + 2) : 0.f;
      const uint8_t* qs = b + (type == TensorType::Q4_1 ? 4 : type == TensorType::Q5_0 ? 6 : 8);
      const uint32_t qh = five ? u32(b + (affine ? 4 : 2)) : 0;
      for (int i = 0; i < 16; ++i) {
        int q = (qs[i] >> (4 * half)) & 15;
        if (five) q |= int((qh >> (16 * half + i)) & 1) << 4;
        v[i] = affine ? d * q + m : d * (q - 16);
      }
      return;
    }
    case TensorType::Q2_K: {
      const uint8_t* b = row + (k / 256) * 84;
      const int v0 = int(k % 256), j = v0 / 16, h = v0 / 128, s = (v0 % 128) / 32, p = (v0 % 32) / 16;
      const uint8_t sc = b[j];
      const float dl = f16(b + 80) * (sc & 15), ml = f16(b + 82) * (sc >> 4);
      const uint8_t* qs = b + 16 + 32 * h + 16 * p;
      for (int i = 0; i < 16; ++i) v[i] = dl * ((qs[i] >> (2 * s)) & 3) - ml;
      return;
    }
    case TensorType::Q3_K: {
      const uint8_t* b = row + (k / 256) * 110;
      const int v0 = int(k % 256), j = v0 / 16, h = v0 / 128, s = (v0 % 128) / 32, p = (v0 % 32) / 16;
      const float dl = f16(b + 108) * q3k_scale_dev(j, b + 96);
      const uint8_t* hm = b + 16 * p;
      const uint8_t* qs = b + 32 + 32 * h + 16 * p;
      for (int i = 0; i < 16; ++i) v[i] = dl * (((qs[i] >> (2 * s)) & 3) - ((hm[i] >> (4 * h + s)) & 1 ? 0 : 4));
      return;
    }
    case TensorType::Q4_K:
    case TensorType::Q5_K: {
      const bool five = type == TensorType::Q5_K;
      const uint8_t* b = row + (k / 256) * (five ? 176 : 144);
      const int v0 = int(k % 256), c = v0 / 64, upper = (v0 % 64) / 32, off = v0 % 32;
      int sc, m;
      k4_scale_min_dev(2 * c + upper, b + 4, sc, m);
      const float dl = f16(b) * sc, ml = f16(b + 2) * m;
      const uint8_t* qh = b + 16;
      const uint8_t* qs = b + (five ? 48 : 16) + 32 * c + off;
      for (int i = 0; i < 16; ++i) {
        int q = (qs[i] >> (4 * upper)) & 15;
        if (five) q |= ((qh[off + i] >> (2 * c + upper)) & 1) << 4;
        v[i] = dl * q - ml;
      }
      return;
    }
    case TensorType::Q6_K: {
      const uint8_t* b = row + (k / 256) * 210;
      const int v0 = int(k % 256), h = v0 / 128, w = v0 % 128, quarter = w / 32, l0 = w % 32;
      const float dl = f16(b + 208) * float(int8_t(b[192 + v0 / 16]));
      const uint8_t* ql = b + 64 * h + (quarter & 1) * 32 + l0;
      const uint8_t* qh = b + 128 + 32 * h + l0;
      for (int i = 0; i < 16; ++i) {
        const int q = ((ql[i] >> (4 * (quarter >> 1))) & 15) | ((qh[i] >> (2 * quarter)) & 3) << 4;
        v[i] = dl * (q - 32);
      }
      return;
    }
    default:
      for (int i = 0; i < 16; ++i) v[i] = 0.f;
  }
}

// One value k of such a row.
__device__ __forceinline__ float decode1(TensorType type, const uint8_t* row, int64_t k) {
  float v[16];
  decode16(type, row, k & ~int64_t(15), v);
  return v[k & 15];
}

}  // namespace tutti::cuda
