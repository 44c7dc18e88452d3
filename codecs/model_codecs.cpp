#include "codecs/model_codecs.h"

#include <cstring>

namespace tutti::codecs {

Expected<ModelCodecs> load_model_codecs(const GgufFile& file) {
  auto cfg = read_model_config(file);
  if (!cfg) return cfg.error();
  ModelCodecs mc;
  mc.modalities = cfg->modalities;
  for (const ModalityInfo& m : mc.modalities.entries) {
    auto cb = std::make_shared<Codebooks>();
    cb->dim = int(m.codebook_dim), cb->size = int(m.codebook_size), cb->stages = int(m.num_stages);
    for (uint32_t s = 0; s < m.num_stages; ++s) {
      const std::string name = "codec." + std::string(modality_name(m.modality)) + ".codebook." + std::to_string(s);
      const GgufTensorInfo* t = file.find_tensor(name);
      if (!t || t->type != TensorType::F32 || t->n_elements() != uint64_t(m.codebook_dim) * m.codebook_size)
        return Error{file.path() + ": " + name + " is missing or not an f32 [" + std::to_string(m.codebook_dim) + ", " +
                     std::to_string(m.codebook_size) + "] tensor"};
      std::vector<float> book(t->n_elements());
      std::memcpy(book.data(), t->data, book.size() * 4);
      cb->books.push_back(std::move(book));
    }
    if (Status s = cb->validate(); !s) return s.error();
    cb->prepare();
    mc.codebooks[m.modality] = std::move(cb);
  }
  return mc;
}

}  // namespace tutti::codecs
