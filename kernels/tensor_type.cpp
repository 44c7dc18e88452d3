#include "kernels/tensor_type.h"

#include <cmath>

namespace tutti {

namespace {
constexpr TensorTypeInfo kTypes[] = {
    {TensorType::F32, "f32", 1, 4},
    {TensorType::F16, "f16", 1, 2},
    {TensorType::Q4_0, "q4_0", 32, 18},
    {TensorType::Q8_0, "q8_0", 32, 34},
    {TensorType::BF16, "bf16", 1, 2},
};
}  // namespace

std::optional<TensorTypeInfo> tensor_type_info(uint32_t id) {
  for (const auto& t : kTypes)
    if (uint32_t(t.type) == id) return t;
  return std::nullopt;
}

TensorTypeInfo tensor_type_info(TensorType type) { return *tensor_type_info(uint32_t(type)); }

std::string_view ggml_type_name(uint32_t id) {
  if (auto t = tensor_type_info(id)) return t->name;
  switch (id) {
    case 3: return "q4_1";
    case 6: return "q5_0";
    case 7: return "q5_1";
    case 9: return "q8_1";
    case 10: return "q2_k";
    case 11: return "q3_k";
    case 12: return "q4_k";
    case 13: return "q5_k";
    case 14: return "q6_k";
    case 15: return "q8_k";
    default: return "unknown";
  }
}

std::optional<TensorType> parse_tensor_type(std::string_view name) {
  for (const auto& t : kTypes)
    if (t.name == name) return t.type;
  return std::nullopt;
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

void dequantize_row(TensorType type, const void* src, float* dst, size_t n) {
  switch (type) {
    case TensorType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case TensorType::F16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(s[i]);
      return;
    }
    case TensorType::BF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
      return;
    }
    case TensorType::Q8_0: {
      auto* b = static_cast<const BlockQ8_0*>(src);
      for (size_t i = 0; i < n / 32; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < 32; ++j) dst[i * 32 + j] = d * b[i].q[j];
      }
      return;
    }
    case TensorType::Q4_0: {
      auto* b = static_cast<const BlockQ4_0*>(src);
      for (size_t i = 0; i < n / 32; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < 16; ++j) {
          dst[i * 32 + j] = d * (int(b[i].qs[j] & 15) - 8);
          dst[i * 32 + j + 16] = d * (int(b[i].qs[j] >> 4) - 8);
        }
      }
      return;
    }
  }
}

void quantize_row(TensorType type, const float* src, void* dst, size_t n) {
  switch (type) {
    case TensorType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case TensorType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = fp32_to_fp16(src[i]);
      return;
    }
    case TensorType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = fp32_to_bf16(src[i]);
      return;
    }
    case TensorType::Q8_0: {  // same rounding as ggml's reference quantizer
      auto* b = static_cast<BlockQ8_0*>(dst);
      for (size_t i = 0; i < n / 32; ++i) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(src[i * 32 + j]));
        const float d = amax / 127.f;
        const float id = d ? 1.f / d : 0.f;
        b[i].d = fp32_to_fp16(d);
        for (int j = 0; j < 32; ++j) b[i].q[j] = int8_t(std::lround(src[i * 32 + j] * id));
      }
      return;
    }
    case TensorType::Q4_0: {
      auto* b = static_cast<BlockQ4_0*>(dst);
      for (size_t i = 0; i < n / 32; ++i) {
        const float* x = src + i * 32;
        float amax = 0, max = 0;
        for (int j = 0; j < 32; ++j)
          if (std::fabs(x[j]) > amax) { amax = std::fabs(x[j]); max = x[j]; }
        const float d = max / -8.f;
        const float id = d ? 1.f / d : 0.f;
        b[i].d = fp32_to_fp16(d);
        for (int j = 0; j < 16; ++j) {
          const int lo = std::min(15, int(x[j] * id + 8.5f));
          const int hi = std::min(15, int(x[j + 16] * id + 8.5f));
          b[i].qs[j] = uint8_t(lo | hi << 4);
        }
      }
      return;
    }
  }
}

}  // namespace tutti
