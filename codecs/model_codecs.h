// The codecs a unified model carries: for each media modality in its tutti.* table, the
// residual-VQ codebooks from its codec.<modality>.codebook.<stage> tensors. Loaded once,
// shared read-only by every session's encoders and decoders.
#pragma once

#include <map>
#include <memory>

#include "codecs/rvq.h"
#include "pipeline/gguf.h"
#include "pipeline/model_config.h"

namespace tutti::codecs {

struct ModelCodecs {
  ModalityTable modalities;
  std::map<Modality, std::shared_ptr<const Codebooks>> codebooks;
  const ModalityInfo* info(Modality m) const { return modalities.find(m); }
  std::shared_ptr<const Codebooks> books(Modality m) const {
    auto it = codebooks.find(m);
    return it == codebooks.end() ? nullptr : it->second;
  }
};

// Text-only files give an empty table. Tensors were shape-checked by read_model_config.
Expected<ModelCodecs> load_model_codecs(const GgufFile& file);

}  // namespace tutti::codecs
