// `tutti model pack`: a unified GGUF from a text backbone (any Llama-architecture GGUF) plus
// media. For each modality given material, residual-VQ codebooks are trained by k-means on
// it (audio and music: MDCT frames; image and video: YCbCr patches), the vocabulary grows by
// the modality's begin/end tokens and codes, token_embd (and output, unless tied) by as many
// rows, and everything goes into one file with the tutti.* metadata and codec.* tensors
// (docs/unified-gguf.md). The layout per modality is default_modalities()'s.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "codecs/snac_import.h"
#include "pipeline/expected.h"
#include "pipeline/model_builder.h"
#include "pipeline/model_config.h"

namespace tutti::codecs {

struct PackMaterial {
  std::vector<std::string> files;               // decoded through FFmpeg
  std::vector<float> samples;                   // audio, music: mono at the modality's rate
  std::vector<std::vector<uint8_t>> frames;     // image, video: RGB24 at the modality's size
};

struct PackOptions {
  int kmeans_iterations = 8;
  size_t max_training_vectors = 20000;  // more are subsampled (bounds the training time)
  uint64_t seed = 1;
  Progress progress;                    // (what, fraction) while decoding and training
  // The audio modality's codec is this SNAC instead of codebooks trained on media (no audio
  // material needed), its codes laid out as `audio_layout` says (docs/unified-gguf.md).
  std::shared_ptr<const SnacWeights> snac;
  TokenLayout audio_layout = TokenLayout::Tutti;
};

// The ids an Orpheus-style vocabulary gives its speech prompt and codes.
struct OrpheusIds {
  static constexpr uint32_t kCustomBase = 128256;  // <custom_token_N> = kCustomBase + N
  static constexpr uint32_t kStartOfHuman = 128259, kEndOfText = 128009, kEndOfHuman = 128260, kStartOfAi = 128261;
  static constexpr uint32_t kStartOfSpeech = 128257, kEndOfSpeech = 128258;
  static constexpr uint32_t kFirstCode = kCustomBase + 10;  // code c of frame slot k: kFirstCode + k * 4096 + c
};

Status pack_unified_model(const std::string& backbone_path, const std::map<Modality, PackMaterial>& material,
                          const std::string& out_path, const PackOptions& options = {});

// Media tutti makes itself for the embedded default model: tones, chords, chirps and noise
// (audio, music), gradients, shapes and bars (image), moving patterns (video).
std::map<Modality, PackMaterial> generated_material(const ModalityTable& layout, uint64_t seed);

}  // namespace tutti::codecs
