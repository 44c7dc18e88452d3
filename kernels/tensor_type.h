// Element and block formats of weight tensors, with the ids GGUF (ggml) gives them, and one
// traits table over them (as ggml's type traits): the block geometry every reader needs and
// the reference conversions. Shared by the weight loader (pipeline/) and every kernel backend
// (kernels/*). A new format is one enum value, one block struct and one table entry here, and
// one entry in each backend's kernel table.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>

namespace tutti {

enum class TensorType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  BF16 = 30,
};
// Every TensorType's id is below this: tables indexed by type are this long.
constexpr size_t kTensorTypeIdLimit = 31;

struct TensorTypeInfo {
  TensorType type;
  std::string_view name;
  uint32_t block_values;  // values per block (1 for plain arrays)
  uint32_t block_bytes;   // bytes per block
};

// ---- Block layouts, as GGUF defines them (little-endian; f16 fields as raw bits).
//
// 32-value blocks, value j of the block (qs[j % 16], low nibble for j < 16, high for j >= 16;
// Q5 types add bit j of qh as the fifth bit):
//   Q8_0 { f16 d; int8 q[32]; }                 value = d * q
//   Q4_0 { f16 d; u8 qs[16]; }                  value = d * (q4 - 8)
//   Q4_1 { f16 d, m; u8 qs[16]; }               value = d * q4 + m
//   Q5_0 { f16 d; u8 qh[4]; u8 qs[16]; }        value = d * (q5 - 16)
//   Q5_1 { f16 d, m; u8 qh[4]; u8 qs[16]; }     value = d * q5 + m
//
// 256-value super-blocks (K-quants). Values are grouped in sub-blocks, each with a small
// integer scale (and, for the affine types, a min) that the super-block's f16 d (and dmin)
// scale again:
//   Q2_K { u8 scales[16]; u8 qs[64]; f16 d, dmin; }      16 x 16: value = d*(sc&15)*q2 - dmin*(sc>>4)
//   Q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }
//                                                         16 x 16: value = d*(s6 - 32)*(q2 + 4*h - 4)
//   Q4_K { f16 d, dmin; u8 scales[12]; u8 qs[128]; }      8 x 32: value = d*s6*q4 - dmin*m6
//   Q5_K { f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }
//                                                         8 x 32: value = d*s6*(q4 + 16*h) - dmin*m6
//   Q6_K { u8 ql[128]; u8 qh[64]; int8 scales[16]; f16 d; }
//                                                         16 x 16: value = d*sc*(q4 + 16*q2 - 32)
// The bit positions of each are in tensor_type.cpp's dequantizers (the reference).
constexpr uint32_t kQuantBlock = 32;
constexpr uint32_t kSuperBlock = 256;

struct BlockQ8_0 { uint16_t d; int8_t q[32]; };
struct BlockQ4_0 { uint16_t d; uint8_t qs[16]; };
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[16]; };
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };
struct BlockQ5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; };
struct BlockQ2_K { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; };
struct BlockQ3_K { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; };
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; };
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };
struct BlockQ6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 &&
              sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144 &&
              sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);

// The activation format the K-quant kernels multiply with (ggml's Q8_K; never a weight type):
// 256 values as int8 with a float scale, and the sums of each 16 values.
struct BlockQ8_K {
  float d;
  int8_t qs[256];
  int16_t bsums[16];
};
static_assert(sizeof(BlockQ8_K) == 292);
// As ggml quantizes activations for the K-quant dot products: scale -127/max (max being the
// value of largest magnitude, sign kept), round to nearest even, clamp to 127.
void quantize_row_q8_k(const float* src, BlockQ8_K* dst, size_t n);

namespace detail {
// The one table of implemented types; everything else here is derived from it.
inline constexpr TensorTypeInfo kTypes[] = {
    {TensorType::F32, "f32", 1, 4},           {TensorType::F16, "f16", 1, 2},
    {TensorType::BF16, "bf16", 1, 2},         {TensorType::Q8_0, "q8_0", 32, sizeof(BlockQ8_0)},
    {TensorType::Q4_0, "q4_0", 32, sizeof(BlockQ4_0)}, {TensorType::Q4_1, "q4_1", 32, sizeof(BlockQ4_1)},
    {TensorType::Q5_0, "q5_0", 32, sizeof(BlockQ5_0)}, {TensorType::Q5_1, "q5_1", 32, sizeof(BlockQ5_1)},
    {TensorType::Q2_K, "q2_k", 256, sizeof(BlockQ2_K)}, {TensorType::Q3_K, "q3_k", 256, sizeof(BlockQ3_K)},
    {TensorType::Q4_K, "q4_k", 256, sizeof(BlockQ4_K)}, {TensorType::Q5_K, "q5_k", 256, sizeof(BlockQ5_K)},
    {TensorType::Q6_K, "q6_k", 256, sizeof(BlockQ6_K)},
};
// kTypes indexed by type id, for the per-row lookups; block_values == 0 marks an id this build
// does not implement.
struct TypeGeometry {
  uint32_t block_values = 0, block_bytes = 0;
};
inline constexpr auto kGeometry = [] {
  std::array<TypeGeometry, kTensorTypeIdLimit> g{};
  for (const TensorTypeInfo& t : kTypes) g[uint32_t(t.type)] = {t.block_values, t.block_bytes};
  return g;
}();
}  // namespace detail

// Returns nothing for a type id this build does not implement (the caller names it in its error).
std::optional<TensorTypeInfo> tensor_type_info(uint32_t ggml_type_id);
TensorTypeInfo tensor_type_info(TensorType type);
std::span<const TensorTypeInfo> all_tensor_types();
std::string_view ggml_type_name(uint32_t ggml_type_id);  // also names known-but-unsupported ids
std::optional<TensorType> parse_tensor_type(std::string_view name);  // "f32", "q8_0", "q4_k", ...
inline bool is_quantized(TensorType t) { return detail::kGeometry[uint32_t(t)].block_values > 1; }
inline bool is_super_block(TensorType t) { return detail::kGeometry[uint32_t(t)].block_values == kSuperBlock; }
inline uint32_t block_values(TensorType t) { return detail::kGeometry[uint32_t(t)].block_values; }

// Bytes of one row of `n` values; requires n % block_values == 0. Inline: kernels call it
// per row.
inline size_t row_bytes(TensorType type, size_t n) {
  const detail::TypeGeometry& g = detail::kGeometry[uint32_t(type)];
  return n / g.block_values * g.block_bytes;
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
// n must be a multiple of the type's block_values. The quantizers are ggml's reference
// quantizers (no importance matrix), so files tutti writes hold what llama.cpp's would.
void dequantize_row(TensorType type, const void* src, float* dst, size_t n);
void quantize_row(TensorType type, const float* src, void* dst, size_t n);

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block's packed scales.
inline void k4_scale_min(int j, const uint8_t* q, uint8_t& scale, uint8_t& min) {
  if (j < 4) {
    scale = q[j] & 63;
    min = q[j + 4] & 63;
  } else {
    scale = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    min = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}
// The 16 scales of a Q3_K super-block, unpacked from 12 bytes of 6-bit values, minus 32.
void q3k_scales(const uint8_t* packed, int8_t out[16]);

}  // namespace tutti
