#include "pipeline/model_builder.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "pipeline/unicode.h"

namespace tutti {

Expected<VocabularyMetadata> read_vocabulary(const GgufFile& f) {
  VocabularyMetadata v;
  for (const auto& [key, value] : f.metadata())
    if (key.rfind("tokenizer.", 0) == 0) v.entries.emplace_back(key, value);
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  if (!tokens || tokens->element_type != GgufValueType::STRING || tokens->count == 0)
    return Error{f.path() + ": has no tokenizer.ggml.tokens to take a vocabulary from"};
  v.n_tokens = uint32_t(tokens->count);
  return v;
}

namespace {

// Text for the built-in vocabulary: plain English about what tutti does, enough for common
// words and subwords to get merges of their own.
const char* kBuiltinCorpus = R"(
tutti is a real-time multimodal inference server. It serves one unified set of model weights for text,
audio, image, video and music. Every modality is tokens of one shared vocabulary, and one resident copy
of the weights generates them all. Codecs at the edges turn media into tokens and tokens back into media.
Real-time voice and video applications stream over WebSocket and expect answers that start within a few
hundred milliseconds. Media services pipe their streams in and out, and teams load-test their fleet
before they ship. The server runs on graphics processors where memory bandwidth is the ceiling: each
decode step reads every weight once, so batching many sessions into one step is how a processor earns
its keep. Scheduling real-time streams against their playback deadlines, so that they never stutter
while text stays snappy, is what sets the server apart. Hello, world! How are you today? The quick brown
fox jumps over the lazy dog. She said that the weather would be good for a walk in the park this
afternoon, and we agreed to meet at the station at three o'clock. Numbers like 1, 2, 3, 10, 42, 100,
2024 and 3.14 appear in text too. Questions, answers, stories, instructions and conversations: a model
learns the patterns of language from the text it reads, and it writes one token after another.
There are many things to say about the world, about people and places, about time and music and art.
)";

std::string key_of(const std::string& a, const std::string& b) { return a + " " + b; }

}  // namespace

VocabularyMetadata builtin_vocabulary(int n_merges) {
  // Pre-tokenize the corpus as the tokenizer will, map bytes to printable code points, and
  // learn merges greedily by pair frequency (ties broken by the pair's text, so the result
  // is deterministic).
  std::map<std::vector<std::string>, int> words;
  for (const std::string& w : unicode::pre_tokenize(kBuiltinCorpus, unicode::PreTokenizer::Llama3)) {
    std::vector<std::string> symbols;
    for (char c : w) symbols.push_back(unicode::byte_to_unicode(uint8_t(c)));
    ++words[symbols];
  }
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(unicode::byte_to_unicode(uint8_t(b)));
  std::vector<std::string> merges;
  for (int m = 0; m < n_merges; ++m) {
    std::map<std::pair<std::string, std::string>, int> pairs;
    for (const auto& [w, count] : words)
      for (size_t i = 0; i + 1 < w.size(); ++i) pairs[{w[i], w[i + 1]}] += count;
    if (pairs.empty()) break;
    auto best = pairs.begin();
    for (auto it = pairs.begin(); it != pairs.end(); ++it)
      if (it->second > best->second) best = it;
    if (best->second < 2) break;
    const auto [a, b] = best->first;
    merges.push_back(key_of(a, b));
    tokens.push_back(a + b);
    std::map<std::vector<std::string>, int> next;
    for (const auto& [w, count] : words) {
      std::vector<std::string> out;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
          out.push_back(a + b);
          ++i;
        } else {
          out.push_back(w[i]);
        }
      }
      next[out] += count;
    }
    words = std::move(next);
  }
  const int32_t bos = int32_t(tokens.size());
  tokens.push_back("<|begin_of_text|>");
  tokens.push_back("<|end_of_text|>");
  std::vector<int32_t> types(tokens.size(), int32_t(1));
  types[size_t(bos)] = types[size_t(bos) + 1] = 3;

  GgufWriter w;  // reuse the writer's value builders
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "llama-bpe");
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  w.set_string_array("tokenizer.ggml.merges", merges);
  w.set_u32("tokenizer.ggml.bos_token_id", uint32_t(bos));
  w.set_u32("tokenizer.ggml.eos_token_id", uint32_t(bos + 1));
  w.set_bool("tokenizer.ggml.add_bos_token", true);
  VocabularyMetadata v;
  v.entries = w.entries();
  v.n_tokens = uint32_t(tokens.size());
  return v;
}

ModalityTable default_modalities(uint32_t n_text) {
  ModalityTable t;
  uint32_t next = n_text;
  auto add = [&](Modality m, uint32_t size, uint32_t stages, auto&& fill) {
    ModalityInfo mi;
    mi.modality = m;
    mi.begin_token = next++;
    mi.end_token = next++;
    mi.token_offset = next;
    mi.codebook_size = size;
    mi.num_stages = stages;
    next += size * stages;
    fill(mi);
    t.entries.push_back(mi);
  };
  // Audio: 20 ms MDCT frames at 24 kHz, 4 residual stages -> 200 tokens per second.
  add(Modality::Audio, 256, 4, [](ModalityInfo& m) {
    m.transform = "mdct"; m.sample_rate = 24000; m.frame_size = 480; m.codebook_dim = 480;
  });
  // Image: 8x8 YCbCr patches of a 256x256 image, 2 stages -> 2048 tokens per image.
  add(Modality::Image, 256, 2, [](ModalityInfo& m) {
    m.transform = "patch"; m.patch_size = 8; m.width = 256; m.height = 256; m.codebook_dim = 192;
  });
  // Video: 8x8 patches of 128x128 frames at 4 fps, 1 stage -> 1024 tokens per second.
  add(Modality::Video, 256, 1, [](ModalityInfo& m) {
    m.transform = "patch"; m.patch_size = 8; m.width = 128; m.height = 128; m.frame_rate = 4; m.codebook_dim = 192;
  });
  // Music: 40 ms MDCT frames at 48 kHz, 4 stages -> 100 tokens per second.
  add(Modality::Music, 256, 4, [](ModalityInfo& m) {
    m.transform = "mdct"; m.sample_rate = 48000; m.frame_size = 1920; m.codebook_dim = 1920;
  });
  return t;
}

namespace {

// Small, fast, seedable generator for weights (xoshiro256**), uniform in [-1, 1).
struct Rng {
  uint64_t s[4];
  explicit Rng(uint64_t seed) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    for (auto& x : s) {
      z += 0x9e3779b97f4a7c15ull;
      uint64_t v = z;
      v = (v ^ (v >> 30)) * 0xbf58476d1ce4e5b9ull;
      v = (v ^ (v >> 27)) * 0x94d049bb133111ebull;
      x = v ^ (v >> 31);
    }
  }
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t next() {
    const uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return r;
  }
  float uniform() { return float(int64_t(next() >> 11) - (int64_t(1) << 52)) * (1.0f / float(int64_t(1) << 52)); }
};

std::vector<uint8_t> random_matrix(Rng& rng, TensorType type, uint64_t cols, uint64_t rows, float scale) {
  std::vector<uint8_t> out(row_bytes(type, cols) * rows);
  std::vector<float> row(cols);
  for (uint64_t r = 0; r < rows; ++r) {
    for (auto& x : row) x = rng.uniform() * scale;
    quantize_row(type, row.data(), out.data() + r * row_bytes(type, cols), cols);
  }
  return out;
}

std::vector<uint8_t> ones(uint64_t n) {
  std::vector<float> v(n, 1.f);
  std::vector<uint8_t> out(n * 4);
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

}  // namespace

uint32_t extend_vocabulary(GgufWriter& w, const VocabularyMetadata& vocab, const ModalityTable& modalities) {
  for (const auto& [key, value] : vocab.entries) w.set_value(key, value);
  if (modalities.empty()) return vocab.n_tokens;
  // The vocabulary grows by each modality's begin/end tokens and codes.
  const GgufValue* tok = nullptr;
  for (auto& [k, v] : vocab.entries)
    if (k == "tokenizer.ggml.tokens") tok = &v;
  std::vector<std::string> tokens = tok ? tok->strings : std::vector<std::string>{};
  std::vector<int32_t> types(tokens.size(), 1);
  for (auto& [k, v] : vocab.entries)
    if (k == "tokenizer.ggml.token_type")
      for (uint64_t i = 0; i < v.count && i < types.size(); ++i) types[i] = int32_t(v.array_i64(i));
  std::vector<float> scores;
  for (auto& [k, v] : vocab.entries)
    if (k == "tokenizer.ggml.scores")
      for (uint64_t i = 0; i < v.count; ++i) scores.push_back(float(v.array_f64(i)));
  uint32_t n_vocab = uint32_t(tokens.size());
  for (const ModalityInfo& m : modalities.entries) {
    if (m.layout == TokenLayout::Orpheus) continue;  // the backbone's own rows
    const std::string name = modality_name(m.modality);
    tokens.push_back("<|" + name + "_begin|>");
    tokens.push_back("<|" + name + "_end|>");
    types.push_back(3);
    types.push_back(3);
    // Codes of stage (MDCT, patches) or level (SNAC) s: <|M_s_c|>.
    for (uint32_t i = 0; i < m.token_end() - m.token_offset; ++i) {
      tokens.push_back("<|" + name + "_" + std::to_string(i / m.codebook_size) + "_" + std::to_string(i % m.codebook_size) + "|>");
      types.push_back(5);  // unused as text: only sampling under the modality mask makes them
    }
    n_vocab = m.token_end();
  }
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  if (!scores.empty()) {
    scores.resize(tokens.size(), -1e9f);
    w.set_f32_array("tokenizer.ggml.scores", scores);
  }
  write_modality_list(w, modalities);
  return n_vocab;
}

namespace {

// Llama 3.1's rope frequency factors (what converters write as rope_freqs.weight): pairs whose
// wavelength exceeds the original context / low_freq_factor are slowed by `factor`, those
// below original / high_freq_factor are kept, and those between blend smoothly.
std::vector<float> llama31_rope_factors(uint32_t n_rot, float base) {
  const double factor = 8, low_freq_factor = 1, high_freq_factor = 4, original = 8192;
  const double low_wavelen = original / low_freq_factor, high_wavelen = original / high_freq_factor;
  std::vector<float> out;
  for (uint32_t i = 0; i < n_rot / 2; ++i) {
    const double freq = std::pow(double(base), -2.0 * i / n_rot), wavelen = 2 * 3.14159265358979323846 / freq;
    double f = 1;
    if (wavelen > low_wavelen) {
      f = factor;
    } else if (wavelen > high_wavelen) {
      const double smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      f = 1 / ((1 - smooth) / factor + smooth);
    }
    out.push_back(float(f));
  }
  return out;
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

}  // namespace

Status write_random_model(const RandomModelSpec& s, const VocabularyMetadata& vocab, const std::string& path,
                          const Progress& progress) {
  // "llama31" is the llama block with Llama 3.1 frequency factors; otherwise the name is a
  // block description's, and the file gets the tensors that description reads.
  const bool llama31 = s.architecture == "llama31";
  const std::string arch = llama31 ? "llama" : s.architecture, a = arch + ".";
  const BlockDescription* desc = find_block_description(arch);
  if (!desc) return Error{"architecture '" + s.architecture + "' is not one tutti can make (llama, llama31, qwen2, qwen3)"};
  const bool biases = desc->qkv_bias == TensorUse::Required;
  if (s.dim == 0 || s.heads == 0) return Error{"dim and heads must be positive"};
  if (s.head_dim == 0 && s.dim % s.heads) return Error{"dim must be a multiple of heads"};
  if (s.head_dim && !desc->head_dim_keys) return Error{"a head size other than dim / heads needs the qwen3 block"};
  if (s.kv_heads == 0 || s.heads % s.kv_heads) return Error{"heads must be a multiple of kv-heads"};
  if (s.layers == 0 || s.ffn == 0) return Error{"layers and ffn must be positive"};
  const uint64_t hd = s.head_dim ? s.head_dim : s.dim / s.heads;
  if (hd % 2) return Error{"head size must be even for rotary embeddings"};
  const uint64_t q_dim = s.heads * hd, kv_dim = s.kv_heads * hd;
  const uint32_t block = tensor_type_info(s.type).block_values;
  if (s.dim % block || s.ffn % block || q_dim % block)
    return Error{"dim, ffn and heads x head size must be multiples of " + std::to_string(block) + " for this type"};

  GgufWriter w;
  w.set_string("general.architecture", arch);
  w.set_string("general.name", s.name);
  w.set_u32("general.file_type", uint32_t(s.type));
  w.set_u32(a + "block_count", s.layers);
  w.set_u32(a + "context_length", s.context);
  w.set_u32(a + "embedding_length", s.dim);
  w.set_u32(a + "feed_forward_length", s.ffn);
  w.set_u32(a + "attention.head_count", s.heads);
  w.set_u32(a + "attention.head_count_kv", s.kv_heads);
  w.set_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_f32(a + "rope.freq_base", s.rope_base);
  w.set_u32(a + "rope.dimension_count", uint32_t(hd));
  if (desc->head_dim_keys) {
    w.set_u32(a + "attention.key_length", uint32_t(hd));
    w.set_u32(a + "attention.value_length", uint32_t(hd));
  }

  uint32_t n_vocab = vocab.n_tokens;
  ModalityTable modalities;
  if (s.unified) modalities = default_modalities(n_vocab);
  n_vocab = extend_vocabulary(w, vocab, modalities);

  Rng rng(s.seed);
  const float in_scale = 1.f / std::sqrt(float(s.dim)), q_scale = 1.f / std::sqrt(float(q_dim)),
              ff_scale = 1.f / std::sqrt(float(s.ffn));
  const double total = s.layers + 2;
  if (progress) progress("embeddings", 0);
  w.add_tensor("token_embd.weight", s.type, {s.dim, n_vocab}, random_matrix(rng, s.type, s.dim, n_vocab, 1.f));
  if (llama31) w.add_tensor("rope_freqs.weight", TensorType::F32, {hd / 2}, f32_bytes(llama31_rope_factors(uint32_t(hd), s.rope_base)));
  for (uint32_t l = 0; l < s.layers; ++l) {
    if (progress) progress("layer " + std::to_string(l), (l + 1) / total);
    const std::string b = "blk." + std::to_string(l) + ".";
    w.add_tensor(b + "attn_norm.weight", TensorType::F32, {s.dim}, ones(s.dim));
    w.add_tensor(b + "attn_q.weight", s.type, {s.dim, q_dim}, random_matrix(rng, s.type, s.dim, q_dim, in_scale));
    w.add_tensor(b + "attn_k.weight", s.type, {s.dim, kv_dim}, random_matrix(rng, s.type, s.dim, kv_dim, in_scale));
    w.add_tensor(b + "attn_v.weight", s.type, {s.dim, kv_dim}, random_matrix(rng, s.type, s.dim, kv_dim, in_scale));
    if (biases)
      for (const auto& [name, n] : {std::pair<const char*, uint64_t>{"attn_q.bias", q_dim}, {"attn_k.bias", kv_dim}, {"attn_v.bias", kv_dim}})
        w.add_tensor(b + name, TensorType::F32, {n}, random_matrix(rng, TensorType::F32, n, 1, 0.1f));
    if (desc->qk_norm)
      for (const char* name : {"attn_q_norm.weight", "attn_k_norm.weight"}) {
        std::vector<float> g(hd);
        for (auto& x : g) x = 1.f + 0.1f * rng.uniform();
        w.add_tensor(b + name, TensorType::F32, {hd}, f32_bytes(g));
      }
    w.add_tensor(b + "attn_output.weight", s.type, {q_dim, s.dim}, random_matrix(rng, s.type, q_dim, s.dim, q_scale));
    w.add_tensor(b + "ffn_norm.weight", TensorType::F32, {s.dim}, ones(s.dim));
    w.add_tensor(b + "ffn_gate.weight", s.type, {s.dim, s.ffn}, random_matrix(rng, s.type, s.dim, s.ffn, in_scale));
    w.add_tensor(b + "ffn_up.weight", s.type, {s.dim, s.ffn}, random_matrix(rng, s.type, s.dim, s.ffn, in_scale));
    w.add_tensor(b + "ffn_down.weight", s.type, {s.ffn, s.dim}, random_matrix(rng, s.type, s.ffn, s.dim, ff_scale));
  }
  w.add_tensor("output_norm.weight", TensorType::F32, {s.dim}, ones(s.dim));
  if (!s.tied) w.add_tensor("output.weight", s.type, {s.dim, n_vocab}, random_matrix(rng, s.type, s.dim, n_vocab, in_scale));
  for (const ModalityInfo& m : modalities.entries)
    for (uint32_t st = 0; st < m.num_stages; ++st)
      w.add_tensor("codec." + std::string(modality_name(m.modality)) + ".codebook." + std::to_string(st), TensorType::F32,
                   {m.codebook_dim, m.codebook_size}, random_matrix(rng, TensorType::F32, m.codebook_dim, m.codebook_size, 1.f));
  if (progress) progress("writing", 1.0);
  return w.write(path);
}

}  // namespace tutti
