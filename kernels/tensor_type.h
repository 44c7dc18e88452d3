// Element and block formats of weight tensors, with the ids GGUF (ggml) gives them.
// Shared by the weight loader (pipeline/) and every kernel backend (kernels/*).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace tutti {

enum class TensorType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
  BF16 = 30,
};

struct TensorTypeInfo {
  TensorType type;
  std::string_view name;
  uint32_t block_values;  // values per block (1 for plain arrays)
  uint32_t block_bytes;   // bytes per block
};

// Block layouts as GGUF defines them (little-endian):
//   Q8_0: { f16 d; int8 q[32]; }           value = d * q
//   Q4_0: { f16 d; uint8 qs[16]; }         value[j] = d * ((qs[j] & 15) - 8),
//                                          value[j+16] = d * ((qs[j] >> 4) - 8)
constexpr uint32_t kQuantBlock = 32;
struct BlockQ8_0 {
  uint16_t d;
  int8_t q[32];
};
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18);

// Returns nothing for a type id this build does not implement (the caller names it in its error).
std::optional<TensorTypeInfo> tensor_type_info(uint32_t ggml_type_id);
TensorTypeInfo tensor_type_info(TensorType type);
std::string_view ggml_type_name(uint32_t ggml_type_id);  // also names known-but-unsupported ids
std::optional<TensorType> parse_tensor_type(std::string_view name);  // "f32", "q8_0", ...

// Bytes of one row of `n` values; requires n % block_values == 0. Inline: kernels call it
// per row.
inline size_t row_bytes(TensorType type, size_t n) {
  switch (type) {
    case TensorType::F32: return n * 4;
    case TensorType::F16:
    case TensorType::BF16: return n * 2;
    case TensorType::Q8_0: return n / 32 * 34;
    case TensorType::Q4_0: return n / 32 * 18;
  }
  return 0;
}

// IEEE half and bfloat16 conversions (scalar; the kernels use F16C/AVX-512 where present).
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);  // round to nearest even
inline float bf16_to_fp32(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
uint16_t fp32_to_bf16(float f);  // round to nearest even, NaN kept NaN

// Reference (scalar) row conversions; used by tests, tools and the CPU backend's edges.
void dequantize_row(TensorType type, const void* src, float* dst, size_t n);
void quantize_row(TensorType type, const float* src, void* dst, size_t n);

}  // namespace tutti
