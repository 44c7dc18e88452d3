#include "codecs/model_pack.h"

#include <cmath>
#include <fstream>
#include <future>
#include <random>
#include <sstream>

#include "codecs/mdct.h"
#include "codecs/media_decoder.h"
#include "codecs/patch_tokenizer.h"
#include "codecs/rvq.h"
#include "pipeline/gguf.h"

namespace tutti::codecs {

namespace {

constexpr double kPi = 3.14159265358979323846;

Expected<std::vector<uint8_t>> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Error{path + ": cannot open"};
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string s = ss.str();
  return std::vector<uint8_t>(s.begin(), s.end());
}

// Training vectors of one modality from its material.
Expected<std::vector<float>> training_vectors(const ModalityInfo& m, const PackMaterial& mat) {
  std::vector<float> out;
  if (m.transform == "mdct") {
    std::vector<float> pcm = mat.samples;
    for (const std::string& file : mat.files) {
      auto bytes = read_bytes(file);
      if (!bytes) return bytes.error();
      auto decoded = decode_audio_bytes(*bytes, int(m.sample_rate));
      if (!decoded) return Error{file + ": " + decoded.error().message};
      pcm.insert(pcm.end(), decoded->begin(), decoded->end());
    }
    MdctAnalyzer a(int(m.frame_size));
    std::vector<float> c(m.frame_size);
    for (size_t at = 0; at + m.frame_size <= pcm.size(); at += m.frame_size) {
      a.push(std::span<const float>(pcm.data() + at, m.frame_size), c);
      out.insert(out.end(), c.begin(), c.end());
    }
    return out;
  }
  const PatchGeometry g{int(m.width), int(m.height), int(m.patch_size)};
  auto add = [&](const std::vector<uint8_t>& rgb) {
    const auto p = frame_to_patches(g, rgb);
    out.insert(out.end(), p.begin(), p.end());
  };
  for (const auto& f : mat.frames) add(f);
  for (const std::string& file : mat.files) {
    auto bytes = read_bytes(file);
    if (!bytes) return bytes.error();
    ByteQueue q(bytes->size() + 1);
    (void)q.push(*bytes);
    q.close();
    if (Status s = decode_video(q, g.width, g.height, [&](const VideoFrame& f) { add(f.rgb); }); !s)
      return Error{file + ": " + s.message()};
  }
  return out;
}

std::vector<uint8_t> as_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// The audio modality of a SNAC codec. Tutti layout: begin, end and the codes of every level
// as new rows from `next` on. Orpheus layout: the backbone's own rows, which must be there.
Expected<ModalityInfo> snac_modality(const SnacWeights& snac, TokenLayout layout, const VocabularyMetadata& vocab, uint32_t& next) {
  const SnacConfig& c = snac.config;
  ModalityInfo m;
  m.modality = Modality::Audio;
  m.transform = "snac";
  m.layout = layout;
  m.sample_rate = uint32_t(c.sampling_rate);
  m.frame_size = uint32_t(c.frame_samples());
  m.codebook_size = uint32_t(c.codebook_size);
  m.codebook_dim = uint32_t(c.codebook_dim);
  m.num_stages = uint32_t(c.codes_per_frame());
  for (int l : c.frame_levels()) m.slot_levels.push_back(uint32_t(l));
  if (layout == TokenLayout::Tutti) {
    m.begin_token = next++;
    m.end_token = next++;
    m.token_offset = next;
    for (uint32_t l : m.slot_levels) m.slot_offsets.push_back(m.token_offset + l * m.codebook_size);
    next += uint32_t(c.vq_strides.size()) * m.codebook_size;
    return m;
  }
  // Orpheus: seven slots of 4096 codes, each slot its own ids.
  if (c.codes_per_frame() != 7 || c.codebook_size != 4096)
    return Error{"the orpheus layout needs SNAC frames of 7 codes of 4096 (the 24 kHz speech model's)"};
  const uint32_t end = OrpheusIds::kFirstCode + 7 * 4096;
  if (vocab.n_tokens < end)
    return Error{"the orpheus layout needs a vocabulary of at least " + std::to_string(end) + " tokens (<custom_token_N> = 128256 + N); this one has " +
                 std::to_string(vocab.n_tokens)};
  const GgufValue* tokens = nullptr;
  for (auto& [k, v] : vocab.entries)
    if (k == "tokenizer.ggml.tokens") tokens = &v;
  for (uint32_t id : {OrpheusIds::kStartOfSpeech, OrpheusIds::kEndOfSpeech, OrpheusIds::kStartOfHuman, OrpheusIds::kEndOfHuman,
                      OrpheusIds::kStartOfAi, OrpheusIds::kFirstCode}) {
    const std::string want = "<custom_token_" + std::to_string(id - OrpheusIds::kCustomBase) + ">";
    if (!tokens || tokens->strings.size() <= id || tokens->strings[id] != want)
      return Error{"the orpheus layout needs token " + std::to_string(id) + " to be " + want +
                   (tokens && tokens->strings.size() > id ? " (it is " + tokens->strings[id] + ")" : "")};
  }
  m.begin_token = OrpheusIds::kStartOfSpeech;
  m.end_token = OrpheusIds::kEndOfSpeech;
  m.token_offset = OrpheusIds::kFirstCode;
  for (uint32_t k = 0; k < 7; ++k) m.slot_offsets.push_back(OrpheusIds::kFirstCode + k * 4096);
  return m;
}

}  // namespace

Status pack_unified_model(const std::string& backbone_path, const std::map<Modality, PackMaterial>& material,
                          const std::string& out_path, const PackOptions& o) {
  auto file = GgufFile::open(backbone_path);
  if (!file) return file.error();
  const GgufFile& f = **file;
  auto cfg = read_model_config(f);
  if (!cfg) return cfg.error();
  if (!cfg->modalities.empty()) return Error{backbone_path + ": already a unified model"};
  if (material.empty() && !o.snac) return Error{"no media given: name training files for at least one modality"};
  if (o.snac && material.count(Modality::Audio)) return Error{"audio is given both as a SNAC checkpoint and as training media"};
  auto vocab = read_vocabulary(f);
  if (!vocab) return vocab.error();
  const uint32_t n_text = vocab->n_tokens;
  if (cfg->hparams.n_vocab != n_text)
    return Error{backbone_path + ": the vocabulary has " + std::to_string(n_text) + " tokens, token_embd " +
                 std::to_string(cfg->hparams.n_vocab) + " rows"};

  // The default layout of the modalities given, laid out one after the other.
  ModalityTable layout;
  uint32_t next = n_text;
  for (ModalityInfo m : default_modalities(n_text).entries) {
    if (m.modality == Modality::Audio && o.snac) {
      auto snac = snac_modality(*o.snac, o.audio_layout, *vocab, next);
      if (!snac) return Error{backbone_path + ": " + snac.error().message};
      layout.entries.push_back(*snac);
      continue;
    }
    if (!material.count(m.modality)) continue;
    m.begin_token = next++;
    m.end_token = next++;
    m.token_offset = next;
    next += m.codebook_size * m.num_stages;
    layout.entries.push_back(m);
  }
  if (layout.empty()) return Error{"none of the media given belongs to a known modality"};

  // Train each modality's codebooks (in parallel: they are independent).
  std::vector<std::future<Expected<Codebooks>>> jobs;
  for (const ModalityInfo& m : layout.entries)
    if (m.transform != "snac") jobs.push_back(std::async(std::launch::async, [&, m]() -> Expected<Codebooks> {
      auto data = training_vectors(m, material.at(m.modality));
      if (!data) return data.error();
      const size_t dim = m.codebook_dim, n = data->size() / dim;
      if (n < m.codebook_size)
        return Error{std::string(modality_name(m.modality)) + ": " + std::to_string(n) + " training vectors for " +
                     std::to_string(m.codebook_size) + " codes; give more media"};
      if (n > o.max_training_vectors) {  // an even subsample
        std::vector<float> sub;
        sub.reserve(o.max_training_vectors * dim);
        for (size_t k = 0; k < o.max_training_vectors; ++k) {
          const size_t i = k * n / o.max_training_vectors;
          sub.insert(sub.end(), data->begin() + long(i * dim), data->begin() + long((i + 1) * dim));
        }
        *data = std::move(sub);
      }
      KmeansOptions ko;
      ko.iterations = o.kmeans_iterations;
      ko.seed = uint32_t(o.seed);
      const std::string name = modality_name(m.modality);
      if (o.progress)
        ko.progress = [&, name, m](int stage, int it, double) {
          o.progress("training " + name + " codebooks", double(stage * o.kmeans_iterations + it + 1) / double(m.num_stages * o.kmeans_iterations));
        };
      return train_rvq(*data, int(dim), int(m.codebook_size), int(m.num_stages), ko);
    }));
  std::vector<Codebooks> books;
  for (size_t i = 0; i < jobs.size(); ++i) {
    auto cb = jobs[i].get();
    if (!cb) return cb.error();
    books.push_back(std::move(cb).value());
  }

  // The file: every key and tensor of the backbone, the vocabulary extended, two matrices
  // grown by the new tokens' rows (small random values, in the matrix's own type).
  GgufWriter w;
  for (const auto& [key, value] : f.metadata())
    if (key.rfind("tokenizer.", 0) != 0) w.set_value(key, value);
  const uint32_t n_vocab = extend_vocabulary(w, *vocab, layout);
  std::mt19937 rng(static_cast<uint32_t>(o.seed));
  std::normal_distribution<float> small(0.f, 0.02f);
  for (const GgufTensorInfo& t : f.tensors()) {
    std::vector<uint8_t> data(t.data, t.data + t.n_bytes);
    std::vector<uint64_t> shape(t.ne, t.ne + t.n_dims);
    if (t.name == "token_embd.weight" || t.name == "output.weight") {
      const size_t cols = t.ne[0], rb = row_bytes(t.type, cols);
      std::vector<float> row(cols);
      std::vector<uint8_t> q(rb);
      for (uint32_t r = n_text; r < n_vocab; ++r) {
        for (auto& x : row) x = small(rng);
        quantize_row(t.type, row.data(), q.data(), cols);
        data.insert(data.end(), q.begin(), q.end());
      }
      shape[1] = n_vocab;
    }
    w.add_tensor(t.name, t.type, shape, std::move(data));
  }
  size_t trained = 0;
  for (const ModalityInfo& m : layout.entries) {
    const std::string name = modality_name(m.modality);
    if (m.transform == "snac") {
      add_snac_tensors(w, "codec." + name + ".", "tutti." + name + ".snac.", *o.snac);
      continue;
    }
    const Codebooks& cb = books[trained++];
    for (uint32_t s = 0; s < m.num_stages; ++s)
      w.add_tensor("codec." + name + ".codebook." + std::to_string(s), TensorType::F32, {m.codebook_dim, m.codebook_size}, as_bytes(cb.books[s]));
  }
  if (o.progress) o.progress("writing", 1.0);
  return w.write(out_path);
}

std::map<Modality, PackMaterial> generated_material(const ModalityTable& layout, uint64_t seed) {
  std::map<Modality, PackMaterial> out;
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<double> u(0, 1);
  std::normal_distribution<float> noise(0, 1);
  for (const ModalityInfo& m : layout.entries) {
    PackMaterial mat;
    if (m.modality == Modality::Audio || m.modality == Modality::Music) {
      // Harmonic tones with vibrato, chirps, and noise bursts: 12 one-second pieces.
      const int rate = int(m.sample_rate);
      for (int piece = 0; piece < 12; ++piece) {
        const double f0 = 110 * std::pow(2.0, u(rng) * 3), vib = 3 + 4 * u(rng);
        const int kind = piece % 3;
        double phase = 0;
        for (int i = 0; i < rate; ++i) {
          const double t = double(i) / rate;
          float v = 0;
          if (kind == 0) {  // a voice-like harmonic tone
            phase += 2 * kPi * f0 * (1 + 0.02 * std::sin(2 * kPi * vib * t)) / rate;
            for (int h = 1; h <= 8; ++h) v += float(0.25 / h * std::sin(h * phase));
          } else if (kind == 1) {  // a chirp
            phase += 2 * kPi * (f0 + 2000 * t) / rate;
            v = float(0.3 * std::sin(phase));
          } else {  // noise in bursts
            v = float(0.1 * (std::sin(2 * kPi * 4 * t) > 0 ? 1 : 0.1)) * noise(rng);
          }
          mat.samples.push_back(v);
        }
      }
    } else {
      // Gradients, circles, bars and checkerboards with random colours; video frames move.
      const int w = int(m.width), h = int(m.height);
      const int count = m.modality == Modality::Video ? 24 : 16;
      for (int k = 0; k < count; ++k) {
        std::vector<uint8_t> rgb(size_t(w) * size_t(h) * 3);
        const double r0 = u(rng), g0 = u(rng), b0 = u(rng), cx = u(rng) * w, cy = u(rng) * h, rad = (0.1 + 0.3 * u(rng)) * w;
        const int kind = k % 4, shift = m.modality == Modality::Video ? k * 4 : 0;
        for (int y = 0; y < h; ++y)
          for (int x = 0; x < w; ++x) {
            double r = r0, g = g0, b = b0;
            const int xs = x + shift;
            if (kind == 0) r = double(xs % w) / w, g = double(y) / h;
            if (kind == 1 && std::hypot(xs - cx, y - cy) < rad) r = 1 - r0, g = 1 - g0, b = 1 - b0;
            if (kind == 2) { const int bar = (xs * 7 / w) % 7; r = bar & 1, g = (bar >> 1) & 1, b = (bar >> 2) & 1; }
            if (kind == 3 && ((xs / 16 + y / 16) & 1)) r *= 0.3, g *= 0.3, b *= 0.3;
            uint8_t* p = rgb.data() + (size_t(y) * size_t(w) + size_t(x)) * 3;
            p[0] = uint8_t(255 * std::clamp(r, 0.0, 1.0));
            p[1] = uint8_t(255 * std::clamp(g, 0.0, 1.0));
            p[2] = uint8_t(255 * std::clamp(b, 0.0, 1.0));
          }
        mat.frames.push_back(std::move(rgb));
      }
    }
    out[m.modality] = std::move(mat);
  }
  return out;
}

}  // namespace tutti::codecs
