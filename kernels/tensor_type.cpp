#include "kernels/tensor_type.h"

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>

namespace tutti {

namespace {

using detail::kTypes;

// ggml's rounding for the quantizers: to nearest, ties to even (valid for |x| < 2^22).
inline int nearest_int(float x) {
  float v = x + 12582912.f;
  int i;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// Groups whose largest magnitude is below this are quantized as all zero (as ggml).
constexpr float kGroupMaxEps = 1e-15f;

// ---- the five 32-value block types

void dequant_q8_0(const void* src, float* y, size_t n) {
  auto* b = static_cast<const BlockQ8_0*>(src);
  for (size_t i = 0; i < n / 32; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < 32; ++j) y[i * 32 + j] = d * b[i].q[j];
  }
}

void quant_q8_0(const float* x, void* dst, size_t n) {  // same rounding as ggml's reference quantizer
  auto* b = static_cast<BlockQ8_0*>(dst);
  for (size_t i = 0; i < n / 32; ++i) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[i * 32 + j]));
    const float d = amax / 127.f;
    const float id = d ? 1.f / d : 0.f;
    b[i].d = fp32_to_fp16(d);
    for (int j = 0; j < 32; ++j) b[i].q[j] = int8_t(std::lround(x[i * 32 + j] * id));
  }
}

void dequant_q4_0(const void* src, float* y, size_t n) {
  auto* b = static_cast<const BlockQ4_0*>(src);
  for (size_t i = 0; i < n / 32; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < 16; ++j) {
      y[i * 32 + j] = d * (int(b[i].qs[j] & 15) - 8);
      y[i * 32 + j + 16] = d * (int(b[i].qs[j] >> 4) - 8);
    }
  }
}

// The value of largest magnitude, sign kept.
float signed_max(const float* x, int n) {
  float amax = 0, max = 0;
  for (int j = 0; j < n; ++j)
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  return max;
}

void quant_q4_0(const float* src, void* dst, size_t n) {
  auto* b = static_cast<BlockQ4_0*>(dst);
  for (size_t i = 0; i < n / 32; ++i) {
    const float* x = src + i * 32;
    const float d = signed_max(x, 32) / -8.f;
    const float id = d ? 1.f / d : 0.f;
    b[i].d = fp32_to_fp16(d);
    for (int j = 0; j < 16; ++j) {
      const int lo = std::min(15, int(int8_t(x[j] * id + 8.5f)));
      const int hi = std::min(15, int(int8_t(x[j + 16] * id + 8.5f)));
      b[i].qs[j] = uint8_t(lo | hi << 4);
    }
  }
}

void dequant_q4_1(const void* src, float* y, size_t n) {
  auto* b = static_cast<const BlockQ4_1*>(src);
  for (size_t i = 0; i < n / 32; ++i) {
    const float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
    for (int j = 0; j < 16; ++j) {
      y[i * 32 + j] = d * (b[i].qs[j] & 15) + m;
      y[i * 32 + j + 16] = d * (b[i].qs[j] >> 4) + m;
    }
  }
}

// The affine 32-value blocks (Q4_1, Q5_1): d = (max - min) / nmax and m = min, stored f16;
// scaled[j] = (x[j] - min) / d + 0.5, which each type truncates its own way (as ggml).
void affine_block(const float* x, float nmax, uint16_t& d_out, uint16_t& m_out, float (&scaled)[32]) {
  float min = FLT_MAX, max = -FLT_MAX;
  for (int j = 0; j < 32; ++j) min = std::min(min, x[j]), max = std::max(max, x[j]);
  const float d = (max - min) / nmax;
  const float id = d ? 1.f / d : 0.f;
  d_out = fp32_to_fp16(d);
  m_out = fp32_to_fp16(min);
  for (int j = 0; j < 32; ++j) scaled[j] = (x[j] - min) * id + 0.5f;
}

void quant_q4_1(const float* src, void* dst, size_t n) {
  auto* b = static_cast<BlockQ4_1*>(dst);
  for (size_t i = 0; i < n / 32; ++i) {
    float scaled[32];
    affine_block(src + i * 32, 15.f, b[i].d, b[i].m, scaled);
    for (int j = 0; j < 16; ++j) {
      const int lo = std::min(15, int(int8_t(scaled[j])));
      const int hi = std::min(15, int(int8_t(scaled[j + 16])));
      b[i].qs[j] = uint8_t(lo | hi << 4);
    }
  }
}

// Value j of a Q5 block's 5-bit quants: the nibble and bit j of qh.
inline int q5_value(const uint8_t* qs, uint32_t qh, int j) {
  const int nib = j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
  return nib | int((qh >> j) & 1) << 4;
}

void dequant_q5_0(const void* src, float* y, size_t n) {
  auto* b = static_cast<const BlockQ5_0*>(src);
  for (size_t i = 0; i < n / 32; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    uint32_t qh;
    std::memcpy(&qh, b[i].qh, 4);
    for (int j = 0; j < 32; ++j) y[i * 32 + j] = d * (q5_value(b[i].qs, qh, j) - 16);
  }
}

// Packs 32 five-bit values into nibbles and the fifth bits.
void pack_q5(const int* q, uint8_t* qs, uint8_t* qh_bytes) {
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    qs[j] = uint8_t((q[j] & 15) | (q[j + 16] & 15) << 4);
    qh |= uint32_t((q[j] >> 4) & 1) << j;
    qh |= uint32_t((q[j + 16] >> 4) & 1) << (j + 16);
  }
  std::memcpy(qh_bytes, &qh, 4);
}

void quant_q5_0(const float* src, void* dst, size_t n) {
  auto* b = static_cast<BlockQ5_0*>(dst);
  for (size_t i = 0; i < n / 32; ++i) {
    const float* x = src + i * 32;
    const float d = signed_max(x, 32) / -16.f;
    const float id = d ? 1.f / d : 0.f;
    b[i].d = fp32_to_fp16(d);
    int q[32];
    for (int j = 0; j < 32; ++j) q[j] = std::min(31, int(int8_t(x[j] * id + 16.5f)));
    pack_q5(q, b[i].qs, b[i].qh);
  }
}

void dequant_q5_1(const void* src, float* y, size_t n) {
  auto* b = static_cast<const BlockQ5_1*>(src);
  for (size_t i = 0; i < n / 32; ++i) {
    const float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
    uint32_t qh;
    std::memcpy(&qh, b[i].qh, 4);
    for (int j = 0; j < 32; ++j) y[i * 32 + j] = d * q5_value(b[i].qs, qh, j) + m;
  }
}

void quant_q5_1(const float* src, void* dst, size_t n) {
  auto* b = static_cast<BlockQ5_1*>(dst);
  for (size_t i = 0; i < n / 32; ++i) {
    float scaled[32];
    affine_block(src + i * 32, 31.f, b[i].d, b[i].m, scaled);
    int q[32];
    for (int j = 0; j < 32; ++j) q[j] = int(uint8_t(scaled[j]));
    pack_q5(q, b[i].qs, b[i].qh);
  }
}

// ---- K-quant helpers: ggml's searches for a sub-block's scale (and min).

// Symmetric: L[i] in [0, 2*nmax) such that x ~ scale * (L - nmax); weighted least squares
// over 19 candidate scales around -nmax/max (rmse weighting x^2, or qw where given).
float search_symmetric(int n, int nmax, const float* x, int8_t* L, const float* qw) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), max = x[i];
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, int8_t(0));
    return 0.f;
  }
  auto weight = [&](int i) { return qw ? qw[i] : x[i] * x[i]; };
  float iscale = -float(nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = int8_t(l + nmax);
    sumlx += weight(i) * x[i] * l;
    suml2 += weight(i) * l * l;
  }
  float scale = suml2 ? sumlx / suml2 : 0.f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      sumlx += weight(i) * x[i] * l;
      suml2 += weight(i) * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = int8_t(nmax + std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q3_K's variant: start from -nmax/max, then move single values while the weighted
// (x^2) fit improves. L[i] in [0, 2*nmax).
float search_q3(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), max = x[i];
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, int8_t(0));
    return 0.f;
  }
  const float iscale = -float(nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = int8_t(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int itry = 0; itry < 5; ++itry) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx > 0) {
        float sl2 = suml2 - w * L[i] * L[i];
        const int nl = std::clamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (nl != L[i]) {
          slx += w * x[i] * nl;
          sl2 += w * nl * nl;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = int8_t(nl);
            sumlx = slx;
            suml2 = sl2;
            ++changed;
          }
        }
      }
    }
    if (!changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = int8_t(L[i] + nmax);
  return suml2 > 0 ? sumlx / suml2 : 0.f;
}

// Affine: L[i] in [0, nmax] with x ~ scale * L - min (min >= 0 returned in *the_min); the
// scale candidates (rmin + rdelta*is + nmax)/(max - min) for is in 0..nstep, each refit by
// weighted least squares, the lowest weighted error (absolute or squared) kept.
float search_affine(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min, uint8_t* Laux,
                    float rmin, float rdelta, int nstep, bool use_mad) {
  float min = x[0], max = x[0];
  float sum_w = weights[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += weights[i];
    sum_x += weights[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::fill(L, L + n, uint8_t(0));
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = uint8_t(std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax));
    const float diff = scale * L[i] + min - x[i];
    best_error += weights[i] * (use_mad ? std::fabs(diff) : diff * diff);
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = uint8_t(l);
      sum_l += weights[i] * l;
      sum_l2 += weights[i] * l * l;
      sum_xl += weights[i] * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float err = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * Laux[i] + this_min - x[i];
        err += weights[i] * (use_mad ? std::fabs(diff) : diff * diff);
      }
      if (err < best_error) {
        std::copy(Laux, Laux + n, L);
        best_error = err;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// Q2_K / Q3_K / Q6_K pack the first 2 bits of each value as 4 values per byte: within each
// 128-value half, byte l holds values l, l+32, l+64, l+96 (bits 0-1, 2-3, 4-5, 6-7).
void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < 256; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] = uint8_t(L[j + l] | L[j + l + 32] << 2 | L[j + l + 64] << 4 | L[j + l + 96] << 6);
}

// ---- Q2_K

void dequant_q2_k(const void* src, float* y, size_t n) {
  auto* b = static_cast<const BlockQ2_K*>(src);
  for (size_t i = 0; i < n / 256; ++i) {
    const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
    const uint8_t* q = b[i].qs;
    int is = 0;
    for (int half = 0; half < 2; ++half, q += 32)
      for (int shift = 0; shift < 8; shift += 2)
        for (int part = 0; part < 2; ++part) {
          const uint8_t sc = b[i].scales[is++];
          const float dl = d * (sc & 15), ml = dmin * (sc >> 4);
          for (int l = 0; l < 16; ++l) *y++ = dl * ((q[l + 16 * part] >> shift) & 3) - ml;
        }
  }
}

void quant_q2_k(const float* x, void* dst, size_t n) {
  auto* y = static_cast<BlockQ2_K*>(dst);
  for (size_t i = 0; i < n / 256; ++i, x += 256) {
    uint8_t L[256], Laux[16];
    float weights[16], mins[16], scales[16];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = search_affine(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    if (max_scale > 0) {
      const float iscale = 15.f / max_scale;
      for (int j = 0; j < 16; ++j) y[i].scales[j] = uint8_t(nearest_int(iscale * scales[j]));
      y[i].d = fp32_to_fp16(max_scale / 15.f);
    } else {
      std::fill(y[i].scales, y[i].scales + 16, uint8_t(0));
      y[i].d = fp32_to_fp16(0.f);
    }
    if (max_min > 0) {
      const float iscale = 15.f / max_min;
      for (int j = 0; j < 16; ++j) y[i].scales[j] = uint8_t(y[i].scales[j] | nearest_int(iscale * mins[j]) << 4);
      y[i].dmin = fp32_to_fp16(max_min / 15.f);
    } else {
      y[i].dmin = fp32_to_fp16(0.f);
    }
    for (int j = 0; j < 16; ++j) {  // requantize against the stored (rounded) scales
      const float d = fp16_to_fp32(y[i].d) * (y[i].scales[j] & 15);
      if (!d) continue;
      const float dm = fp16_to_fp32(y[i].dmin) * (y[i].scales[j] >> 4);
      for (int l = 0; l < 16; ++l) L[16 * j + l] = uint8_t(std::clamp(nearest_int((x[16 * j + l] + dm) / d), 0, 3));
    }
    pack_2bit(L, y[i].qs);
  }
}

// ---- Q3_K

}  // namespace

void q3k_scales(const uint8_t* packed, int8_t out[16]) {
  // Bytes 0-7 hold the low nibbles (scales 0-7 low, 8-15 high nibble); bytes 8-11 the top
  // two bits, scale j's at bits 2*(j/4) of byte 8 + j%4.
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? packed[j] & 15 : packed[j - 8] >> 4;
    const int high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
    out[j] = int8_t((low | high << 4) - 32);
  }
}

namespace {

void dequant_q3_k(const void* src, float* y, size_t n) {
  auto* b = static_cast<const BlockQ3_K*>(src);
  for (size_t i = 0; i < n / 256; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    int8_t sc[16];
    q3k_scales(b[i].scales, sc);
    const uint8_t* q = b[i].qs;
    uint8_t m = 1;
    int is = 0;
    for (int half = 0; half < 2; ++half, q += 32)
      for (int shift = 0; shift < 8; shift += 2, m = uint8_t(m << 1))
        for (int part = 0; part < 2; ++part) {
          const float dl = d * sc[is++];
          for (int l = 0; l < 16; ++l) {
            const int k = l + 16 * part;
            *y++ = dl * (((q[k] >> shift) & 3) - ((b[i].hmask[k] & m) ? 0 : 4));
          }
        }
  }
}

void quant_q3_k(const float* x, void* dst, size_t n) {
  auto* y = static_cast<BlockQ3_K*>(dst);
  for (size_t i = 0; i < n / 256; ++i, x += 256) {
    int8_t L[256];
    float scales[16];
    float max_scale = 0, amax = 0;
    for (int j = 0; j < 16; ++j) {
      scales[j] = search_q3(16, 4, x + 16 * j, L + 16 * j);
      if (std::fabs(scales[j]) > amax) amax = std::fabs(scales[j]), max_scale = scales[j];
    }
    std::fill(y[i].scales, y[i].scales + 12, uint8_t(0));
    if (max_scale) {
      const float iscale = -32.f / max_scale;
      for (int j = 0; j < 16; ++j) {
        int l = std::clamp(nearest_int(iscale * scales[j]), -32, 31) + 32;
        if (j < 8)
          y[i].scales[j] = uint8_t(l & 15);
        else
          y[i].scales[j - 8] = uint8_t(y[i].scales[j - 8] | (l & 15) << 4);
        l >>= 4;
        y[i].scales[j % 4 + 8] = uint8_t(y[i].scales[j % 4 + 8] | l << (2 * (j / 4)));
      }
      y[i].d = fp32_to_fp16(1 / iscale);
    } else {
      y[i].d = fp32_to_fp16(0.f);
    }
    int8_t sc[16];
    q3k_scales(y[i].scales, sc);
    for (int j = 0; j < 16; ++j) {
      const float d = fp16_to_fp32(y[i].d) * sc[j];
      if (!d) continue;
      for (int l = 0; l < 16; ++l) L[16 * j + l] = int8_t(std::clamp(nearest_int(x[16 * j + l] / d), -4, 3) + 4);
    }
    // The third bit: value j's in bit j/32 of hmask[j % 32].
    std::fill(y[i].hmask, y[i].hmask + 32, uint8_t(0));
    uint8_t low[256];
    for (int j = 0; j < 256; ++j) {
      if (L[j] > 3) y[i].hmask[j % 32] = uint8_t(y[i].hmask[j % 32] | 1 << (j / 32));
      low[j] = uint8_t(L[j] & 3);
    }
    pack_2bit(low, y[i].qs);
  }
}

// ---- Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins packed into 12 bytes.

void pack_k4_scales(const uint8_t* ls, const uint8_t* lm, uint8_t* q) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      q[j] = ls[j];
      q[j + 4] = lm[j];
    } else {
      q[j + 4] = uint8_t((ls[j] & 15) | (lm[j] & 15) << 4);
      q[j - 4] = uint8_t(q[j - 4] | (ls[j] >> 4) << 6);
      q[j] = uint8_t(q[j] | (lm[j] >> 4) << 6);
    }
  }
}

// Sub-block scales and mins for Q4_K (nmax 15) / Q5_K (31), then every value requantized
// against the stored scales. L gets each value's quant.
void quant_k4_common(const float* x, int nmax, float rmin, int nstep, uint16_t& d_out, uint16_t& dmin_out,
                     uint8_t* packed_scales, uint8_t* L) {
  uint8_t Laux[32];
  float weights[32], mins[8], scales[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
    scales[j] = search_affine(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, false);
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[j])));
    lm[j] = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[j])));
  }
  std::fill(packed_scales, packed_scales + 12, uint8_t(0));
  pack_k4_scales(ls, lm, packed_scales);
  d_out = fp32_to_fp16(max_scale / 63.f);
  dmin_out = fp32_to_fp16(max_min / 63.f);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    k4_scale_min(j, packed_scales, sc, m);
    const float d = fp16_to_fp32(d_out) * sc;
    if (!d) continue;
    const float dm = fp16_to_fp32(dmin_out) * m;
    for (int l = 0; l < 32; ++l) L[32 * j + l] = uint8_t(std::clamp(nearest_int((x[32 * j + l] + dm) / d), 0, nmax));
  }
}

void dequant_q4_k(const void* src, float* y, size_t n) {
  auto* b = static_cast<const BlockQ4_K*>(src);
  for (size_t i = 0; i < n / 256; ++i) {
    const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
    const uint8_t* q = b[i].qs;
    // Each 64 values: 32 bytes, low nibbles the first 32 values, high nibbles the next 32.
    for (int j = 0; j < 8; j += 2, q += 32) {
      uint8_t sc, m;
      k4_scale_min(j, b[i].scales, sc, m);
      const float d1 = d * sc, m1 = dmin * m;
      k4_scale_min(j + 1, b[i].scales, sc, m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 15) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
    }
  }
}

void quant_q4_k(const float* x, void* dst, size_t n) {
  auto* y = static_cast<BlockQ4_K*>(dst);
  for (size_t i = 0; i < n / 256; ++i, x += 256) {
    uint8_t L[256];
    quant_k4_common(x, 15, -1.f, 20, y[i].d, y[i].dmin, y[i].scales, L);
    for (int j = 0; j < 256; j += 64)
      for (int l = 0; l < 32; ++l) y[i].qs[j / 2 + l] = uint8_t(L[j + l] | L[j + l + 32] << 4);
  }
}

void dequant_q5_k(const void* src, float* y, size_t n) {
  auto* b = static_cast<const BlockQ5_K*>(src);
  for (size_t i = 0; i < n / 256; ++i) {
    const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
    const uint8_t* ql = b[i].qs;
    // As Q4_K, with the fifth bit of value 64c + l in bit 2c of qh[l], of 64c + 32 + l in 2c+1.
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < 8; j += 2, ql += 32, u1 = uint8_t(u1 << 2), u2 = uint8_t(u2 << 2)) {
      uint8_t sc, m;
      k4_scale_min(j, b[i].scales, sc, m);
      const float d1 = d * sc, m1 = dmin * m;
      k4_scale_min(j + 1, b[i].scales, sc, m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 15) + (b[i].qh[l] & u1 ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (b[i].qh[l] & u2 ? 16 : 0)) - m2;
    }
  }
}

void quant_q5_k(const float* x, void* dst, size_t n) {
  auto* y = static_cast<BlockQ5_K*>(dst);
  for (size_t i = 0; i < n / 256; ++i, x += 256) {
    uint8_t L[256];
    quant_k4_common(x, 31, -0.5f, 15, y[i].d, y[i].dmin, y[i].scales, L);
    std::fill(y[i].qh, y[i].qh + 32, uint8_t(0));
    uint8_t m1 = 1, m2 = 2;
    for (int c = 0; c < 256; c += 64, m1 = uint8_t(m1 << 2), m2 = uint8_t(m2 << 2))
      for (int l = 0; l < 32; ++l) {
        int l1 = L[c + l], l2 = L[c + l + 32];
        if (l1 > 15) l1 -= 16, y[i].qh[l] = uint8_t(y[i].qh[l] | m1);
        if (l2 > 15) l2 -= 16, y[i].qh[l] = uint8_t(y[i].qh[l] | m2);
        y[i].qs[c / 2 + l] = uint8_t(l1 | l2 << 4);
      }
  }
}

// ---- Q6_K

void dequant_q6_k(const void* src, float* y, size_t n) {
  auto* b = static_cast<const BlockQ6_K*>(src);
  for (size_t i = 0; i < n / 256; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const int8_t* sc = b[i].scales;
    // Per 128 values: ql[l] low/high nibble = values l / l+64, ql[l+32] = l+32 / l+96; the top
    // two bits of l, l+32, l+64, l+96 in qh[l] bits 0-1, 2-3, 4-5, 6-7.
    for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8)
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4) - 32;
        const int q2 = ((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32;
        const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
        const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
        y[l] = d * sc[is] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
  }
}

void quant_q6_k(const float* x, void* dst, size_t n) {
  auto* y = static_cast<BlockQ6_K*>(dst);
  for (size_t i = 0; i < n / 256; ++i, x += 256) {
    int8_t L[256];
    float scales[16];
    float max_scale = 0, max_abs = 0;
    for (int j = 0; j < 16; ++j) {
      scales[j] = search_symmetric(16, 32, x + 16 * j, L + 16 * j, nullptr);
      if (std::fabs(scales[j]) > max_abs) max_abs = std::fabs(scales[j]), max_scale = scales[j];
    }
    if (max_abs < kGroupMaxEps) {
      std::memset(&y[i], 0, sizeof(BlockQ6_K));
      continue;
    }
    const float iscale = -128.f / max_scale;
    y[i].d = fp32_to_fp16(1 / iscale);
    for (int j = 0; j < 16; ++j) y[i].scales[j] = int8_t(std::min(127, nearest_int(iscale * scales[j])));
    for (int j = 0; j < 16; ++j) {
      const float d = fp16_to_fp32(y[i].d) * y[i].scales[j];
      if (!d) continue;
      for (int l = 0; l < 16; ++l) L[16 * j + l] = int8_t(std::clamp(nearest_int(x[16 * j + l] / d), -32, 31) + 32);
    }
    uint8_t* ql = y[i].ql;
    uint8_t* qh = y[i].qh;
    for (int j = 0; j < 256; j += 128, ql += 64, qh += 32)
      for (int l = 0; l < 32; ++l) {
        const int v0 = L[j + l], v1 = L[j + l + 32], v2 = L[j + l + 64], v3 = L[j + l + 96];
        ql[l] = uint8_t((v0 & 15) | (v2 & 15) << 4);
        ql[l + 32] = uint8_t((v1 & 15) | (v3 & 15) << 4);
        qh[l] = uint8_t(v0 >> 4 | (v1 >> 4) << 2 | (v2 >> 4) << 4 | (v3 >> 4) << 6);
      }
  }
}

// ---- plain arrays

void dequant_f32(const void* src, float* dst, size_t n) { std::memcpy(dst, src, n * 4); }
void quant_f32(const float* src, void* dst, size_t n) { std::memcpy(dst, src, n * 4); }
void dequant_f16(const void* src, float* dst, size_t n) {
  auto* s = static_cast<const uint16_t*>(src);
  for (size_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(s[i]);
}
void quant_f16(const float* src, void* dst, size_t n) {
  auto* d = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; ++i) d[i] = fp32_to_fp16(src[i]);
}
void dequant_bf16(const void* src, float* dst, size_t n) {
  auto* s = static_cast<const uint16_t*>(src);
  for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
}
void quant_bf16(const float* src, void* dst, size_t n) {
  auto* d = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; ++i) d[i] = fp32_to_bf16(src[i]);
}

struct Conversions {
  void (*to_float)(const void*, float*, size_t) = nullptr;
  void (*from_float)(const float*, void*, size_t) = nullptr;
};

constexpr auto kConversions = [] {
  std::array<Conversions, kTensorTypeIdLimit> c{};
  c[size_t(TensorType::F32)] = {dequant_f32, quant_f32};
  c[size_t(TensorType::F16)] = {dequant_f16, quant_f16};
  c[size_t(TensorType::BF16)] = {dequant_bf16, quant_bf16};
  c[size_t(TensorType::Q8_0)] = {dequant_q8_0, quant_q8_0};
  c[size_t(TensorType::Q4_0)] = {dequant_q4_0, quant_q4_0};
  c[size_t(TensorType::Q4_1)] = {dequant_q4_1, quant_q4_1};
  c[size_t(TensorType::Q5_0)] = {dequant_q5_0, quant_q5_0};
  c[size_t(TensorType::Q5_1)] = {dequant_q5_1, quant_q5_1};
  c[size_t(TensorType::Q2_K)] = {dequant_q2_k, quant_q2_k};
  c[size_t(TensorType::Q3_K)] = {dequant_q3_k, quant_q3_k};
  c[size_t(TensorType::Q4_K)] = {dequant_q4_k, quant_q4_k};
  c[size_t(TensorType::Q5_K)] = {dequant_q5_k, quant_q5_k};
  c[size_t(TensorType::Q6_K)] = {dequant_q6_k, quant_q6_k};
  return c;
}();

}  // namespace

std::optional<TensorTypeInfo> tensor_type_info(uint32_t id) {
  for (const auto& t : kTypes)
    if (uint32_t(t.type) == id) return t;
  return std::nullopt;
}

TensorTypeInfo tensor_type_info(TensorType type) { return *tensor_type_info(uint32_t(type)); }

std::span<const TensorTypeInfo> all_tensor_types() { return kTypes; }

std::string_view ggml_type_name(uint32_t id) {
  if (auto t = tensor_type_info(id)) return t->name;
  switch (id) {
    case 9: return "q8_1";
    case 15: return "q8_k";
    case 16: return "iq2_xxs";
    case 17: return "iq2_xs";
    case 18: return "iq3_xxs";
    case 19: return "iq1_s";
    case 20: return "iq4_nl";
    case 21: return "iq3_s";
    case 22: return "iq2_s";
    case 23: return "iq4_xs";
    case 24: return "i8";
    case 25: return "i16";
    case 26: return "i32";
    case 27: return "i64";
    case 28: return "f64";
    case 29: return "iq1_m";
    case 34: return "tq1_0";
    case 35: return "tq2_0";
    case 39: return "mxfp4";
    default: return "unknown";
  }
}

std::optional<TensorType> parse_tensor_type(std::string_view name) {
  for (const auto& t : kTypes)
    if (t.name == name) return t.type;
  return std::nullopt;
}

void quantize_row_q8_k(const float* x, BlockQ8_K* y, size_t n) {
  for (size_t i = 0; i < n / 256; ++i, x += 256) {
    const float max = signed_max(x, 256);
    if (max == 0) {
      std::memset(&y[i], 0, sizeof(BlockQ8_K));
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < 256; ++j) y[i].qs[j] = int8_t(std::min(127, nearest_int(iscale * x[j])));
    for (int j = 0; j < 16; ++j) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += y[i].qs[j * 16 + l];
      y[i].bsums[j] = int16_t(sum);
    }
    y[i].d = 1 / iscale;
  }
}

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 112) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t fp32_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return sign | 0x7c00 | (abs > 0x7f800000u ? 0x200 : 0);  // inf / nan
  if (abs >= 0x477ff000u) return sign | 0x7c00;                                  // overflow
  if (abs < 0x38800000u) {  // subnormal or zero in half
    // Scale into the subnormal range with a float add, which rounds to nearest even.
    float a;
    std::memcpy(&a, &abs, 4);
    a += 0.5f;
    uint32_t r;
    std::memcpy(&r, &a, 4);
    return sign | uint16_t(r - 0x3f000000u);
  }
  uint32_t mant_odd = (abs >> 13) & 1;
  uint32_t r = abs + 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round
  return sign | uint16_t(r >> 13);
}

uint16_t fp32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 64);  // quiet NaN
  return uint16_t((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

void dequantize_row(TensorType type, const void* src, float* dst, size_t n) { kConversions[size_t(type)].to_float(src, dst, n); }

void quantize_row(TensorType type, const float* src, void* dst, size_t n) { kConversions[size_t(type)].from_float(src, dst, n); }

}  // namespace tutti
