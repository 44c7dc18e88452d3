// What a GGUF file says about the model: Llama hyper-parameters, the tensor shapes the
// architecture requires, and the tutti.* modality table of a unified model. Pure functions
// over a parsed GgufFile; no weights are touched here. See docs/unified-gguf.md for the
// tutti.* namespace.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "pipeline/expected.h"
#include "pipeline/gguf.h"
#include "pipeline/request_kinds.h"
#include "pipeline/token_range.h"

namespace tutti {

// What a decoder block of one architecture is made of, in the one place the forward pass
// reads it from (Model::forward never asks for an architecture's name). Every block is the
// Llama block, pre-norm RMSNorm attention and SwiGLU feed-forward, plus these variations.
// A new architecture is an entry in kArchitectures (model_config.cpp) and any op it newly
// needs; one that needs something unimplemented is refused there with the thing named.
enum class TensorUse : uint8_t { Absent, Optional, Required };
struct BlockDescription {
  const char* architecture = "llama";
  RopeLayout rope = RopeLayout::Normal;  // which pairs the rotary embedding turns
  TensorUse qkv_bias = TensorUse::Absent;  // blk.N.attn_{q,k,v}.bias, added after the projections
  bool qk_norm = false;                    // blk.N.attn_{q,k}_norm.weight [head_dim]: RMSNorm per head before RoPE
  bool rope_freqs = false;                 // rope_freqs.weight [n_rot/2] may divide each pair's frequency
  bool head_dim_keys = false;              // {arch}.attention.key_length / value_length set the head size
};

struct LlamaHparams {
  std::string architecture;  // general.architecture
  std::string name;          // general.name, if any
  BlockDescription block;
  uint32_t n_vocab = 0;
  uint32_t n_ctx_train = 0;
  uint32_t n_embd = 0;
  uint32_t n_layer = 0;
  uint32_t n_ff = 0;
  uint32_t n_head = 0;
  uint32_t n_head_kv = 0;
  uint32_t head_dim = 0;  // n_embd / n_head, or key_length where the block reads it
  uint32_t n_rot = 0;     // rotary dimensions per head
  float rms_eps = 1e-5f;
  float rope_freq_base = 10000.f;
  float rope_freq_scale = 1.f;   // linear rope scaling: 1 / {arch}.rope.scaling.factor
  bool rope_freqs = false;       // rope_freqs.weight present (Llama 3.1+ frequency factors)
  bool tied_output = false;      // output.weight absent: logits use token_embd.weight
  bool qkv_bias = false;         // the block's attention biases are present

  uint32_t q_dim() const { return n_head * head_dim; }
  uint32_t kv_dim() const { return n_head_kv * head_dim; }
};

// The block of an architecture tutti implements, or null.
const BlockDescription* find_block_description(const std::string& architecture);


// One media modality's slice of the shared vocabulary and its codec parameters.
// Token ids [token_offset, token_offset + codebook_size * num_stages) are its codes: residual
// stage s uses [token_offset + s * codebook_size, token_offset + (s + 1) * codebook_size).
// How a modality's codes sit in the vocabulary: tutti's own rows added after the backbone's
// ("tutti"), or, for SNAC, the rows an Orpheus-style backbone already has (<custom_token_N>
// = 128256 + N; docs/unified-gguf.md).
enum class TokenLayout { Tutti, Orpheus };
const char* token_layout_name(TokenLayout l);
std::optional<TokenLayout> parse_token_layout(const std::string& name);

struct ModalityInfo {
  Modality modality = Modality::Audio;
  uint32_t token_offset = 0;
  uint32_t codebook_size = 0;
  uint32_t num_stages = 0;
  uint32_t begin_token = 0;
  uint32_t end_token = 0;
  // Codec parameters (0 where they do not apply to this modality).
  std::string transform;     // the codec type: "mdct" or "snac" (audio, music), "patch" (image, video)
  uint32_t sample_rate = 0;  // audio, music: samples per second
  uint32_t frame_size = 0;   // audio, music: samples per transform frame
  uint32_t patch_size = 0;   // image, video: square patch edge in pixels
  uint32_t width = 0;        // image, video: frame size the codec works at
  uint32_t height = 0;
  float frame_rate = 0;      // video frames per second
  uint32_t codebook_dim = 0; // length of one codebook vector (codec.<m>.codebook.<s> is [dim, size])
  // A frame is num_stages slots; slot s samples codebook_size codes from slot_offset(s), and
  // its code belongs to level slot_levels[s]. Empty (MDCT, patches): slot s is stage s, at
  // token_offset + s * codebook_size. SNAC files carry both (tutti.<m>.slot_offsets,
  // tutti.<m>.frame_levels): slots of one level share ids in the tutti layout, and every
  // slot has its own ids in the Orpheus layout.
  std::vector<uint32_t> slot_offsets;
  std::vector<uint32_t> slot_levels;
  TokenLayout layout = TokenLayout::Tutti;

  uint32_t slot_offset(uint32_t slot) const {
    return slot_offsets.empty() ? token_offset + slot * codebook_size : slot_offsets[slot];
  }
  // The code ids are [token_offset, token_end()): contiguous in every layout.
  uint32_t token_end() const;
  // Tokens per second of media, which decides how many real-time streams a step can carry.
  double tokens_per_second() const;
};

struct ModalityTable {
  std::vector<ModalityInfo> entries;  // empty: a text-only model
  const ModalityInfo* find(Modality m) const;
  bool empty() const { return entries.empty(); }
  // Sampling masks: what a sequence generating text may produce (everything that is not a
  // media code or a media begin/end token), and what one generating modality m may (its
  // codes and its end token).
  std::vector<TokenRange> text_ranges(uint32_t n_vocab) const;
  std::vector<TokenRange> ranges_for(Modality m) const;
};

struct ModelConfig {
  LlamaHparams hparams;
  ModalityTable modalities;
};

// Reads and validates everything the forward pass and the modality table need: required
// keys, consistent sizes, every required tensor present with the right shape and a supported
// type. Errors are one line naming the file.
Expected<ModelConfig> read_model_config(const GgufFile& file);
// The tutti.* modality table alone (read_model_config reads it too), checked against a
// vocabulary of `n_vocab` ids: what a file of metadata and codec tensors without the
// transformer's weights (a cluster ingress's model front) still says.
Expected<ModalityTable> read_modality_table(const GgufFile& file, uint32_t n_vocab);

// The tutti.* keys for one modality (used by writers of unified files).
void write_modality_metadata(GgufWriter& w, const ModalityInfo& m);
void write_modality_list(GgufWriter& w, const ModalityTable& table);

}  // namespace tutti
