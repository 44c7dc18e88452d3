#include "codecs/model_codecs.h"

#include <cstring>

namespace tutti::codecs {

Expected<Codebooks> load_codebooks(const GgufFile& file, const ModalityInfo& m) {
  Codebooks cb;
  cb.dim = int(m.codebook_dim), cb.size = int(m.codebook_size), cb.stages = int(m.num_stages);
  for (uint32_t s = 0; s < m.num_stages; ++s) {
    const std::string name = "codec." + std::string(modality_name(m.modality)) + ".codebook." + std::to_string(s);
    const GgufTensorInfo* t = file.find_tensor(name);
    if (!t || t->type != TensorType::F32 || t->n_elements() != uint64_t(m.codebook_dim) * m.codebook_size)
      return Error{file.path() + ": " + name + " is missing or not an f32 [" + std::to_string(m.codebook_dim) + ", " +
                   std::to_string(m.codebook_size) + "] tensor"};
    std::vector<float> book(t->n_elements());
    std::memcpy(book.data(), t->data, book.size() * 4);
    cb.books.push_back(std::move(book));
  }
  if (Status s = cb.validate(); !s) return s.error();
  cb.prepare();
  return cb;
}

Expected<ModelCodecs> load_model_codecs(const GgufFile& file) {
  auto cfg = read_model_config(file);
  if (!cfg) return cfg.error();
  return load_model_codecs(file, cfg->modalities);
}

Expected<ModelCodecs> load_model_codecs(const GgufFile& file, const ModalityTable& table) {
  ModelCodecs mc;
  mc.modalities = table;
  for (const ModalityInfo& m : mc.modalities.entries) {
    if (m.modality == Modality::Audio || m.modality == Modality::Music) {
      auto codec = make_audio_codec(file, m);
      if (!codec) return codec.error();
      mc.audio_codecs[m.modality] = std::move(*codec);
      continue;
    }
    auto cb = load_codebooks(file, m);
    if (!cb) return cb.error();
    mc.codebooks[m.modality] = std::make_shared<const Codebooks>(std::move(*cb));
  }
  return mc;
}

}  // namespace tutti::codecs
