// Builders of model files: random-weight Llama models for tests and benchmarks (with the
// vocabulary of another GGUF, or the built-in one), optionally unified with the tutti.*
// modality ranges and codec tensors. `tutti model random` and `tutti model init` use them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/tensor_type.h"
#include "pipeline/expected.h"
#include "pipeline/gguf.h"
#include "pipeline/model_config.h"

namespace tutti {

// The tokenizer.* metadata of a vocabulary, copied between files.
struct VocabularyMetadata {
  std::vector<std::pair<std::string, GgufValue>> entries;  // every "tokenizer.*" key
  uint32_t n_tokens = 0;
};
Expected<VocabularyMetadata> read_vocabulary(const GgufFile& file);

// A byte-level BPE vocabulary ("gpt2" model, "llama-bpe" split) trained on tutti's built-in
// English text: 256 byte tokens, `n_merges` learned merges, BOS/EOS control tokens. Lets a
// fresh clone make a working model without downloading anything.
VocabularyMetadata builtin_vocabulary(int n_merges = 2000);

struct RandomModelSpec {
  // "llama", "llama31" (llama with Llama 3.1 rope frequency factors), "qwen2" (attention
  // biases, rotary halves) or "qwen3" (per-head q/k norms, rotary halves).
  std::string architecture = "llama";
  uint32_t dim = 256, layers = 2, heads = 4, kv_heads = 4, ffn = 512;
  uint32_t head_dim = 0;  // 0: dim / heads; qwen3 may set another (attention.key_length)
  bool tied = false;      // no output.weight: logits use token_embd.weight
  uint32_t context = 4096;
  TensorType type = TensorType::F32;  // matrices; norms stay f32
  uint64_t seed = 1;
  float rope_base = 10000.f;
  bool unified = false;  // add the default media modality ranges and codec tensors
  std::string name = "tutti-random";
};

// The media modality layout of a unified model whose text vocabulary has n_text tokens.
ModalityTable default_modalities(uint32_t n_text);

// Writes the vocabulary's tokenizer.* keys to `w`, extended by each modality's begin/end
// tokens and codes (named <|M_begin|>, <|M_end|>, <|M_S_C|>), and the tutti.* keys of the
// table. Returns the extended vocabulary size. The modality table's token ids must follow
// the vocabulary (default_modalities(vocab.n_tokens) lays them out so).
class GgufWriter;
uint32_t extend_vocabulary(GgufWriter& w, const VocabularyMetadata& vocab, const ModalityTable& modalities);

using Progress = std::function<void(const std::string& what, double fraction)>;
Status write_random_model(const RandomModelSpec& spec, const VocabularyMetadata& vocab, const std::string& path,
                          const Progress& progress = {});

}  // namespace tutti
