// `tutti model quantize`: a GGUF file's weight matrices re-encoded in a quantized type, with
// the per-tensor type mixes llama.cpp's quantizer uses (so its "_M" files and ours agree on
// which tensors get more bits), and ggml's reference quantizers (kernels/tensor_type.cpp).
// Everything that is not a weight matrix (norms, biases, rope_freqs, tutti's codec tables)
// is copied as it is, and so is all metadata but general.file_type.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/tensor_type.h"
#include "pipeline/expected.h"
#include "pipeline/gguf.h"

namespace tutti {

enum class QuantizeMix : uint8_t { Q8_0, Q4_0, Q4_K_M, Q5_K_M, Q6_K, Q3_K_M, Q2_K };

struct QuantizeMixInfo {
  QuantizeMix mix;
  std::string_view name;  // as the command line spells it
  TensorType base;        // the type of most matrices
  uint32_t file_type;     // general.file_type (llama.cpp's LLAMA_FTYPE_* numbering)
};
std::optional<QuantizeMixInfo> parse_quantize_mix(std::string_view name);
std::string quantize_mix_names();  // "q8_0, q4_0, ..." for messages

// One tensor's plan: its type in the output and why, in the file's order.
struct TensorPlan {
  std::string name;
  TensorType from, to;
  std::vector<uint64_t> shape;
  std::string reason;  // e.g. "more bits for attn_v (layer 1 of 2)", "kept: not a weight matrix"
};

// The output type of every tensor of `file` under `mix`. Matrices whose rows the chosen type's
// blocks do not divide fall back, as llama.cpp's do: Q2_K, Q3_K -> Q4_0 (llama.cpp: IQ4_NL,
// which tutti does not implement), Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and a 32-value
// type -> F16.
Expected<std::vector<TensorPlan>> plan_quantization(const GgufFile& file, QuantizeMix mix);

struct QuantizeOptions {
  int threads = 0;  // 0: one per core
  // Called after each tensor: (tensor index, tensor count, its plan).
  std::function<void(size_t, size_t, const TensorPlan&)> progress;
};

struct QuantizeSummary {
  uint64_t bytes_in = 0, bytes_out = 0;
  uint64_t weights = 0;          // values in quantized matrices
  double bits_per_weight = 0;    // over the matrices quantized
  size_t requantized = 0;        // matrices that were already quantized in the input
};

// Writes `out_path` (a complete file or nothing: written beside it, renamed when done).
// Tensors are converted one at a time, rows split between threads.
Expected<QuantizeSummary> quantize_model(const std::string& in_path, const std::string& out_path, QuantizeMix mix,
                                         const QuantizeOptions& options = {});

}  // namespace tutti
