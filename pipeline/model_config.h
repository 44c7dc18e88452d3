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

#include "pipeline/expected.h"
#include "pipeline/gguf.h"
#include "pipeline/token_range.h"

namespace tutti {

struct LlamaHparams {
  std::string architecture;  // general.architecture
  std::string name;          // general.name, if any
  uint32_t n_vocab = 0;
  uint32_t n_ctx_train = 0;
  uint32_t n_embd = 0;
  uint32_t n_layer = 0;
  uint32_t n_ff = 0;
  uint32_t n_head = 0;
  uint32_t n_head_kv = 0;
  uint32_t head_dim = 0;  // n_embd / n_head
  uint32_t n_rot = 0;     // rotary dimensions per head
  float rms_eps = 1e-5f;
  float rope_freq_base = 10000.f;
  bool tied_output = false;  // output.weight absent: logits use token_embd.weight
};

enum class Modality : uint8_t { Text = 0, Audio, Image, Video, Music };
constexpr std::array<Modality, 4> kMediaModalities = {Modality::Audio, Modality::Image, Modality::Video,
                                                     Modality::Music};
const char* modality_name(Modality m);
std::optional<Modality> parse_modality(const std::string& name);

// One media modality's slice of the shared vocabulary and its codec parameters.
// Token ids [token_offset, token_offset + codebook_size * num_stages) are its codes: residual
// stage s uses [token_offset + s * codebook_size, token_offset + (s + 1) * codebook_size).
struct ModalityInfo {
  Modality modality = Modality::Audio;
  uint32_t token_offset = 0;
  uint32_t codebook_size = 0;
  uint32_t num_stages = 0;
  uint32_t begin_token = 0;
  uint32_t end_token = 0;
  // Codec parameters (0 where they do not apply to this modality).
  std::string transform;     // "mdct" for audio and music, "patch" for image and video
  uint32_t sample_rate = 0;  // audio, music: samples per second
  uint32_t frame_size = 0;   // audio, music: samples per transform frame
  uint32_t patch_size = 0;   // image, video: square patch edge in pixels
  uint32_t width = 0;        // image, video: frame size the codec works at
  uint32_t height = 0;
  float frame_rate = 0;      // video frames per second
  uint32_t codebook_dim = 0; // length of one codebook vector (codec.<m>.codebook.<s> is [dim, size])

  uint32_t token_end() const { return token_offset + codebook_size * num_stages; }
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

// The tutti.* keys for one modality (used by writers of unified files).
void write_modality_metadata(GgufWriter& w, const ModalityInfo& m);
void write_modality_list(GgufWriter& w, const ModalityTable& table);

}  // namespace tutti
