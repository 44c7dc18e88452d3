// The codecs a unified model carries: for each media modality in its tutti.* table, either
// an AudioCodec (audio, music: MDCT + residual VQ, or SNAC) or the residual-VQ codebooks of
// the patch tokenizer (image, video). Loaded once, shared read-only by every session's
// encoders and decoders.
#pragma once

#include <map>
#include <memory>

#include "codecs/audio_codec.h"
#include "codecs/rvq.h"
#include "pipeline/gguf.h"
#include "pipeline/model_config.h"

namespace tutti::codecs {

struct ModelCodecs {
  ModalityTable modalities;
  std::map<Modality, std::shared_ptr<const Codebooks>> codebooks;     // image, video
  std::map<Modality, std::shared_ptr<const AudioCodec>> audio_codecs; // audio, music
  const ModalityInfo* info(Modality m) const { return modalities.find(m); }
  std::shared_ptr<const Codebooks> books(Modality m) const {
    auto it = codebooks.find(m);
    return it == codebooks.end() ? nullptr : it->second;
  }
  std::shared_ptr<const AudioCodec> audio(Modality m) const {
    auto it = audio_codecs.find(m);
    return it == audio_codecs.end() ? nullptr : it->second;
  }
};

// Text-only files give an empty table. Tensors were shape-checked by read_model_config
// (codebooks) or are checked by the audio codec's loader.
Expected<ModelCodecs> load_model_codecs(const GgufFile& file);
// The same for a modality table read already (read_modality_table: a model front without
// the transformer's weights).
Expected<ModelCodecs> load_model_codecs(const GgufFile& file, const ModalityTable& table);

// The codec.<m>.codebook.<s> tensors of one modality.
Expected<Codebooks> load_codebooks(const GgufFile& file, const ModalityInfo& m);

}  // namespace tutti::codecs
