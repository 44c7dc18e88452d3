#include "actors/cluster/front.hpp"

#include "actors/cluster/routing.hpp"
#include "actors/http/openai.hpp"

namespace tutti::cluster {

std::vector<uint8_t> model_front_bytes(const GgufFile& file) {
  GgufWriter w;
  for (const auto& [key, value] : file.metadata())
    if (key.rfind("tokenizer.ggml.", 0) != 0) w.set_value(key, value);
  for (const GgufTensorInfo& t : file.tensors())
    if (t.name.rfind("codec.", 0) == 0)
      w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), std::vector<uint8_t>(t.data, t.data + t.n_bytes));
  return w.to_bytes();
}

Expected<ModelFront> read_model_front(const std::vector<uint8_t>& bytes, uint32_t n_vocab, const std::string& name) {
  // The file is parsed in place: `bytes` outlives it (codecs copy what they keep).
  auto file = GgufFile::parse(bytes.data(), bytes.size(), "the front of model " + name);
  if (!file) return file.error();
  auto table = read_modality_table(**file, n_vocab);
  if (!table) return table.error();
  auto codecs = codecs::load_model_codecs(**file, *table);
  if (!codecs) return codecs.error();
  ModelFront front;
  http::ModelFacts& f = front.facts;
  auto general = (*file)->get_string("general.name");
  auto arch = (*file)->get_string("general.architecture");
  auto tmpl = (*file)->get_string("tokenizer.chat_template");
  if (!general || !arch || !tmpl) return Error{"the front of model " + name + " has a malformed general.* or chat template entry"};
  if (!*arch || arch->value().empty()) return Error{"the front of model " + name + " names no architecture"};
  auto context = (*file)->get_uint(**arch + ".context_length");
  if (!context) return context.error();
  f.name = general->value_or("");
  f.modalities = *table;
  f.chat_template = *tmpl && !(*tmpl)->empty() ? http::detect_chat_template(**tmpl) : http::ChatTemplate::Plain;
  f.n_vocab = n_vocab;
  f.context = uint32_t(context->value_or(4096));  // the default read_model_config takes
  front.codecs = std::make_shared<const codecs::ModelCodecs>(std::move(codecs).value());
  front.fingerprint = stable_hash(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  return front;
}

}  // namespace tutti::cluster
