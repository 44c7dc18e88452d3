// GGUF reader and writer: round trips of every value type, and hostile files (truncated at
// every offset, corrupted counts and sizes, unknown types) that must give a clear one-line
// error naming the file, never a crash or a huge allocation.
#include <gtest/gtest.h>

#include <cstring>

#include "pipeline/gguf.h"
#include "pipeline/model_builder.h"
#include "pipeline/model_config.h"
#include "test_support.h"

namespace tutti {
namespace {

std::vector<uint8_t> small_file() {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("a.u32", 7);
  w.set_i32("a.i32", -5);
  w.set_u64("a.u64", 1ull << 40);
  w.set_f32("a.f32", 0.25f);
  w.set_bool("a.bool", true);
  w.set_string_array("a.strs", {"x", "yy", ""});
  w.set_f32_array("a.f32s", {1.f, 2.f, 3.f});
  w.set_i32_array("a.i32s", {-1, 0, 1});
  std::vector<float> m(64);
  for (int i = 0; i < 64; ++i) m[size_t(i)] = float(i) / 8;
  std::vector<uint8_t> f32(64 * 4);
  std::memcpy(f32.data(), m.data(), f32.size());
  w.add_tensor("m.f32", TensorType::F32, {32, 2}, f32);
  std::vector<uint8_t> q8(2 * 34);
  quantize_row(TensorType::Q8_0, m.data(), q8.data(), 64);
  w.add_tensor("m.q8", TensorType::Q8_0, {64}, q8);
  return w.to_bytes();
}

TEST(Gguf, RoundTripsEveryValueType) {
  const auto bytes = small_file();
  auto f = GgufFile::parse(bytes.data(), bytes.size(), "mem.gguf");
  ASSERT_TRUE(f) << f.error().message;
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.find("a.u32")->u, 7u);
  EXPECT_EQ(g.find("a.i32")->i, -5);
  EXPECT_EQ(g.find("a.u64")->u, 1ull << 40);
  EXPECT_FLOAT_EQ(float(g.find("a.f32")->f), 0.25f);
  EXPECT_EQ(*g.get_bool("a.bool").value(), true);
  EXPECT_EQ(g.find("a.strs")->strings, (std::vector<std::string>{"x", "yy", ""}));
  EXPECT_EQ(g.find("a.f32s")->array_f64(2), 3.0);
  EXPECT_EQ(g.find("a.i32s")->array_i64(0), -1);
  const GgufTensorInfo* t = g.find_tensor("m.f32");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->ne[0], 32u);
  EXPECT_EQ(t->ne[1], 2u);
  EXPECT_EQ(reinterpret_cast<const float*>(t->data)[63], 63.f / 8);
  EXPECT_EQ(uintptr_t(t->data - bytes.data()) % 32, 0u);
  const GgufTensorInfo* q = g.find_tensor("m.q8");
  float back[64];
  dequantize_row(TensorType::Q8_0, q->data, back, 64);
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(back[i], float(i) / 8, 0.035f);  // half a Q8_0 step
  // Typed getters name a key of the wrong type.
  auto wrong = g.get_uint("a.strs");
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("a.strs"), std::string::npos);
}

TEST(Gguf, ReadsVersion2) {
  auto bytes = small_file();
  const uint32_t v2 = 2;
  std::memcpy(bytes.data() + 4, &v2, 4);  // v2 differs from v3 only in the number
  auto f = GgufFile::parse(bytes.data(), bytes.size(), "v2.gguf");
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ((*f)->version(), 2u);
  EXPECT_EQ((*f)->tensors().size(), 2u);
}

TEST(Gguf, TruncatedAtEveryOffsetFailsCleanly) {
  const auto bytes = small_file();
  // Only the padding after the last tensor's data may go without harm.
  auto whole = GgufFile::parse(bytes.data(), bytes.size(), "whole.gguf");
  ASSERT_TRUE(whole);
  size_t data_end = 0;
  for (auto& t : (*whole)->tensors()) data_end = std::max(data_end, size_t(t.data - bytes.data()) + t.n_bytes);
  for (size_t n = 0; n < data_end; ++n) {
    // A copy of exactly n bytes, so reading past it is caught by sanitizers and valgrind too.
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + long(n));
    auto f = GgufFile::parse(cut.data(), cut.size(), "cut.gguf");
    ASSERT_FALSE(f) << "truncated to " << n << " bytes parsed";
    EXPECT_EQ(f.error().message.rfind("cut.gguf: ", 0), 0u) << f.error().message;
    EXPECT_EQ(f.error().message.find('\n'), std::string::npos);
  }
}

// Offsets inside the image of small_file() for targeted corruption.
struct Layout {
  size_t n_tensors = 8, n_kv = 16, first_key_len = 24;
};

void put_u64(std::vector<uint8_t>& b, size_t at, uint64_t v) { std::memcpy(b.data() + at, &v, 8); }
void put_u32(std::vector<uint8_t>& b, size_t at, uint32_t v) { std::memcpy(b.data() + at, &v, 4); }

std::string parse_error(const std::vector<uint8_t>& b) {
  auto f = GgufFile::parse(b.data(), b.size(), "bad.gguf");
  return f ? std::string() : f.error().message;
}

TEST(Gguf, CorruptedHeaderFieldsAreRejected) {
  const auto good = small_file();
  Layout L;
  {
    auto b = good;
    b[0] = 'X';
    EXPECT_NE(parse_error(b).find("bad magic"), std::string::npos);
  }
  {
    auto b = good;
    put_u32(b, 4, 4);
    EXPECT_NE(parse_error(b).find("version 4"), std::string::npos);
  }
  {
    auto b = good;
    put_u64(b, L.n_kv, ~0ull);
    EXPECT_NE(parse_error(b).find("metadata count"), std::string::npos);
  }
  {
    auto b = good;
    put_u64(b, L.n_tensors, 1ull << 60);
    EXPECT_NE(parse_error(b).find("tensor count"), std::string::npos);
  }
  {
    auto b = good;
    put_u64(b, L.first_key_len, 1ull << 62);  // key length far past the end
    EXPECT_NE(parse_error(b).find("truncated"), std::string::npos);
  }
  {
    // First value's type id: after the key string "general.architecture" (20 bytes).
    auto b = good;
    put_u32(b, L.first_key_len + 8 + 20, 99);
    EXPECT_NE(parse_error(b).find("unknown value type 99"), std::string::npos);
  }
}

// Builds a file with one tensor whose info fields are given.
std::vector<uint8_t> one_tensor(uint32_t n_dims, std::vector<uint64_t> ne, uint32_t type, uint64_t offset,
                                size_t data_bytes) {
  std::vector<uint8_t> b;
  auto put = [&](const void* p, size_t n) { b.insert(b.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
  auto u32 = [&](uint32_t v) { put(&v, 4); };
  auto u64 = [&](uint64_t v) { put(&v, 8); };
  u32(0x46554747u);
  u32(3);
  u64(1);
  u64(0);
  const std::string name = "t";
  u64(name.size());
  put(name.data(), name.size());
  u32(n_dims);
  for (uint64_t d : ne) u64(d);
  u32(type);
  u64(offset);
  b.resize((b.size() + 31) / 32 * 32 + data_bytes, 0);
  return b;
}

TEST(Gguf, BadTensorInfosAreRejected) {
  EXPECT_EQ(parse_error(one_tensor(2, {4, 4}, 0, 0, 64)), "");
  EXPECT_NE(parse_error(one_tensor(0, {}, 0, 0, 64)).find("0 dimensions"), std::string::npos);
  EXPECT_NE(parse_error(one_tensor(5, {1, 1, 1, 1, 1}, 0, 0, 64)).find("5 dimensions"), std::string::npos);
  EXPECT_NE(parse_error(one_tensor(2, {4, 0}, 0, 0, 64)).find("zero dimension"), std::string::npos);
  EXPECT_NE(parse_error(one_tensor(2, {1ull << 40, 1ull << 40}, 0, 0, 64)).find("larger than the file"), std::string::npos);
  EXPECT_NE(parse_error(one_tensor(2, {4, 4}, 12, 0, 64)).find("q4_k"), std::string::npos);
  EXPECT_NE(parse_error(one_tensor(2, {4, 4}, 77, 0, 64)).find("id 77"), std::string::npos);
  EXPECT_NE(parse_error(one_tensor(2, {4, 4}, 0, 8, 64)).find("not aligned"), std::string::npos);
  EXPECT_NE(parse_error(one_tensor(2, {4, 4}, 0, 32, 64)).find("outside the data section"), std::string::npos);
  EXPECT_NE(parse_error(one_tensor(2, {4, 4}, 0, 0, 60)).find("outside the data section"), std::string::npos);
  EXPECT_NE(parse_error(one_tensor(1, {33}, 8, 0, 64)).find("block size"), std::string::npos);
  EXPECT_NE(parse_error(one_tensor(2, {4, 4}, 0, ~0ull - 31, 64)).find("outside"), std::string::npos);
}

TEST(Gguf, RandomByteFlipsNeverCrash) {
  const auto good = small_file();
  uint64_t state = 12345;
  for (int trial = 0; trial < 3000; ++trial) {
    auto b = good;
    for (int k = 0; k < 4; ++k) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      b[(state >> 33) % b.size()] = uint8_t(state >> 13);
    }
    auto f = GgufFile::parse(b.data(), b.size(), "fuzz.gguf");
    if (!f) {
      EXPECT_EQ(f.error().message.rfind("fuzz.gguf: ", 0), 0u);
    }
  }
}

TEST(Gguf, OpenReportsMissingAndNonGgufFiles) {
  auto missing = GgufFile::open("/nonexistent/x.gguf");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("/nonexistent/x.gguf"), std::string::npos);
  const std::string path = test::temp_path("not-gguf.bin");
  { std::ofstream(path) << "hello"; }
  auto bad = GgufFile::open(path);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("bad magic"), std::string::npos);
  const std::string empty = test::temp_path("empty.gguf");
  { std::ofstream(empty) << ""; }
  EXPECT_FALSE(GgufFile::open(empty));
}

// ---- model config: architecture checks and the tutti.* modality table

std::shared_ptr<const GgufFile> load(const std::string& path) {
  auto f = GgufFile::open(path);
  EXPECT_TRUE(f) << (f ? "" : f.error().message);
  return *f;
}

TEST(ModelConfig, ReadsLlamaHyperparameters) {
  RandomModelSpec s;
  s.dim = 64; s.layers = 2; s.heads = 4; s.kv_heads = 2; s.ffn = 96;
  auto f = load(test::random_model(s, "cfg-text.gguf"));
  auto c = read_model_config(*f);
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->hparams.n_layer, 2u);
  EXPECT_EQ(c->hparams.head_dim, 16u);
  EXPECT_EQ(c->hparams.n_head_kv, 2u);
  EXPECT_TRUE(c->modalities.empty());
}

TEST(ModelConfig, UnifiedModelExposesItsModalityTable) {
  RandomModelSpec s;
  s.dim = 64; s.layers = 1; s.heads = 4; s.kv_heads = 4; s.ffn = 64; s.unified = true;
  auto f = load(test::random_model(s, "cfg-unified.gguf"));
  auto c = read_model_config(*f);
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_EQ(c->modalities.entries.size(), 4u);
  const ModalityInfo* audio = c->modalities.find(Modality::Audio);
  ASSERT_NE(audio, nullptr);
  EXPECT_EQ(audio->sample_rate, 24000u);
  EXPECT_DOUBLE_EQ(audio->tokens_per_second(), 200.0);
  EXPECT_LT(audio->token_end(), c->hparams.n_vocab + 1);
  EXPECT_EQ(c->hparams.n_vocab, c->modalities.entries.back().token_end());
  // Masks: text excludes every media id; a modality allows its codes and its end token.
  const auto text = c->modalities.text_ranges(c->hparams.n_vocab);
  for (const ModalityInfo& m : c->modalities.entries)
    for (const TokenRange& r : text) {
      EXPECT_FALSE(r.contains(int32_t(m.token_offset)) || r.contains(int32_t(m.token_end() - 1)) ||
                   r.contains(int32_t(m.begin_token)) || r.contains(int32_t(m.end_token)));
    }
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.front().begin, 0);
  const auto audio_mask = c->modalities.ranges_for(Modality::Audio);
  ASSERT_EQ(audio_mask.size(), 2u);
  EXPECT_EQ(audio_mask[0].end - audio_mask[0].begin, int32_t(audio->codebook_size * audio->num_stages));
  EXPECT_TRUE(audio_mask[1].contains(int32_t(audio->end_token)));
}

// Rewrites a model file with one metadata key changed or one tensor dropped.
std::string mutate(const std::string& src, const std::string& name, const std::function<void(GgufWriter&)>& edit,
                   const std::string& drop_tensor = "") {
  auto f = load(src);
  GgufWriter w;
  for (auto& [k, v] : f->metadata()) w.set_value(k, v);
  for (auto& t : f->tensors())
    if (t.name != drop_tensor) w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), std::vector<uint8_t>(t.data, t.data + t.n_bytes));
  edit(w);
  const std::string out = test::temp_path(name);
  EXPECT_TRUE(w.write(out).ok());
  return out;
}

std::string config_error(const std::string& path) {
  auto f = load(path);
  auto c = read_model_config(*f);
  return c ? std::string() : c.error().message;
}

TEST(ModelConfig, RejectsInconsistentFiles) {
  RandomModelSpec s;
  s.dim = 64; s.layers = 1; s.heads = 4; s.kv_heads = 4; s.ffn = 64; s.unified = true;
  const std::string base = test::random_model(s, "cfg-unified.gguf");
  EXPECT_NE(config_error(mutate(base, "m1.gguf", [](GgufWriter&) {}, "blk.0.ffn_up.weight")).find("'blk.0.ffn_up.weight' is missing"), std::string::npos);
  EXPECT_NE(config_error(mutate(base, "m2.gguf", [](GgufWriter& w) { w.set_u32("llama.attention.head_count_kv", 3); })).find("head_count_kv"), std::string::npos);
  EXPECT_NE(config_error(mutate(base, "m3.gguf", [](GgufWriter& w) { w.set_string("general.architecture", "mamba"); })).find("mamba"), std::string::npos);
  EXPECT_NE(config_error(mutate(base, "m4.gguf", [](GgufWriter& w) { w.set_u32("llama.embedding_length", 128); })).find("has shape"), std::string::npos);
  EXPECT_NE(config_error(mutate(base, "m5.gguf", [](GgufWriter& w) { w.set_u32("tutti.audio.token_offset", 1u << 30); })).find("exceeds the vocabulary"), std::string::npos);
  EXPECT_NE(config_error(mutate(base, "m6.gguf", [](GgufWriter& w) { w.set_string_array("tutti.modalities", {"audio", "smell"}); })).find("smell"), std::string::npos);
  EXPECT_NE(config_error(mutate(base, "m7.gguf", [](GgufWriter&) {}, "codec.image.codebook.1")).find("codec.image.codebook.1"), std::string::npos);
  EXPECT_NE(config_error(mutate(base, "m8.gguf", [](GgufWriter& w) { w.set_string("llama.block_count", "two"); })).find("should be an integer"), std::string::npos);
  // Overlapping ranges: move music onto audio's range.
  auto f = load(base);
  const uint64_t audio_off = f->find("tutti.audio.token_offset")->u;
  EXPECT_NE(config_error(mutate(base, "m9.gguf", [&](GgufWriter& w) { w.set_u32("tutti.music.token_offset", uint32_t(audio_off)); })).find("overlap"), std::string::npos);
}

std::vector<uint8_t> f32_bytes(size_t n, float v = 1.f) {
  std::vector<float> f(n, v);
  std::vector<uint8_t> b(n * 4);
  std::memcpy(b.data(), f.data(), b.size());
  return b;
}

TEST(ModelConfig, ReadsEachArchitecturesBlock) {
  RandomModelSpec s;
  s.dim = 64; s.layers = 2; s.heads = 4; s.kv_heads = 2; s.ffn = 96;
  s.architecture = "qwen3";
  s.head_dim = 32;
  auto c = read_model_config(*load(test::random_model(s, "cfg-qwen3.gguf")));
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->hparams.head_dim, 32u);
  EXPECT_EQ(c->hparams.q_dim(), 128u);
  EXPECT_TRUE(c->hparams.block.qk_norm);
  EXPECT_EQ(c->hparams.block.rope, RopeLayout::Neox);
  s.architecture = "qwen2";
  s.head_dim = 0;
  c = read_model_config(*load(test::random_model(s, "cfg-qwen2.gguf")));
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_TRUE(c->hparams.qkv_bias);
  EXPECT_EQ(c->hparams.block.rope, RopeLayout::Neox);
  s.architecture = "llama31";
  c = read_model_config(*load(test::random_model(s, "cfg-llama31.gguf")));
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_TRUE(c->hparams.rope_freqs);
  EXPECT_FALSE(c->hparams.qkv_bias);
  EXPECT_EQ(c->hparams.block.rope, RopeLayout::Normal);
}

// What a block needs and a file lacks (or has that tutti would leave out) is a one-line error
// naming the file and the tensor or key.
TEST(ModelConfig, RejectsWhatTheBlockNeedsAndLacks) {
  RandomModelSpec s;
  s.dim = 64; s.layers = 1; s.heads = 4; s.kv_heads = 2; s.ffn = 64;
  s.architecture = "qwen2";
  const std::string qwen2 = test::random_model(s, "cfg-bad-qwen2.gguf");
  s.architecture = "qwen3";
  const std::string qwen3 = test::random_model(s, "cfg-bad-qwen3.gguf");
  s.architecture = "llama31";
  const std::string llama31 = test::random_model(s, "cfg-bad-llama31.gguf");
  auto has = [](const std::string& error, const std::string& part) {
    EXPECT_NE(error.find(part), std::string::npos) << "error: " << error << "\nexpected: " << part;
  };
  has(config_error(mutate(qwen2, "b1.gguf", [](GgufWriter&) {}, "blk.0.attn_k.bias")), "required tensor 'blk.0.attn_k.bias' is missing");
  has(config_error(mutate(qwen2, "b2.gguf", [](GgufWriter& w) { w.add_tensor("blk.0.attn_v.bias", TensorType::F32, {16}, f32_bytes(16)); },
                          "blk.0.attn_v.bias")),
      "tensor 'blk.0.attn_v.bias' has shape [16], expected [32]");
  has(config_error(mutate(qwen3, "b3.gguf", [](GgufWriter& w) { w.add_tensor("blk.0.attn_q_norm.weight", TensorType::F32, {64}, f32_bytes(64)); },
                          "blk.0.attn_q_norm.weight")),
      "tensor 'blk.0.attn_q_norm.weight' has shape [64], expected [16]");
  has(config_error(mutate(llama31, "b4.gguf", [](GgufWriter& w) { w.add_tensor("rope_freqs.weight", TensorType::F32, {7}, f32_bytes(7)); },
                          "rope_freqs.weight")),
      "tensor 'rope_freqs.weight' has shape [7], expected [8]");
  has(config_error(mutate(llama31, "b5.gguf", [](GgufWriter& w) { w.add_tensor("blk.0.attn_output.bias", TensorType::F32, {64}, f32_bytes(64)); })),
      "tensor 'blk.0.attn_output.bias' is not part of the llama block");
  has(config_error(mutate(qwen2, "b6.gguf", [](GgufWriter& w) { w.add_tensor("rope_freqs.weight", TensorType::F32, {8}, f32_bytes(8)); })),
      "tensor 'rope_freqs.weight' is not part of the qwen2 block");
  has(config_error(mutate(qwen2, "b7.gguf", [](GgufWriter& w) { w.set_string("general.architecture", "gemma2"); })),
      "sliding-window attention (gemma2) is not implemented");
  has(config_error(mutate(llama31, "b8.gguf", [](GgufWriter& w) { w.set_u32("llama.expert_count", 8); })),
      "mixture-of-experts feed-forward (llama.expert_count 8) is not implemented");
  has(config_error(mutate(llama31, "b9.gguf", [](GgufWriter& w) { w.set_string("llama.rope.scaling.type", "yarn"); })),
      "YaRN rope scaling");
  has(config_error(mutate(qwen3, "b10.gguf", [](GgufWriter& w) { w.set_u32("qwen3.attention.value_length", 8); })),
      "different key and value head sizes (16, 8) are not implemented");
  has(config_error(mutate(qwen2, "b11.gguf", [](GgufWriter& w) { w.add_tensor("blk.0.attn_norm.weight", TensorType::Q8_0, {64}, std::vector<uint8_t>(68)); },
                          "blk.0.attn_norm.weight")),
      "tensor 'blk.0.attn_norm.weight' is q8_0; it must be f32, f16 or bf16");
  // Every error names the file.
  EXPECT_EQ(config_error(mutate(qwen2, "b12.gguf", [](GgufWriter&) {}, "blk.0.attn_q.bias")).rfind(test::temp_path("b12.gguf"), 0), 0u);
  // Linear rope scaling is read (a factor of 4 slows every pair 4x).
  auto linear = read_model_config(*load(mutate(llama31, "b13.gguf", [](GgufWriter& w) {
    w.set_string("llama.rope.scaling.type", "linear");
    w.set_f32("llama.rope.scaling.factor", 4.f);
  })));
  ASSERT_TRUE(linear) << linear.error().message;
  EXPECT_FLOAT_EQ(linear->hparams.rope_freq_scale, 0.25f);
}

// Super-block types need whole 256-value super-blocks per row.
TEST(Gguf, SuperBlockRowsMustBeWhole) {
  EXPECT_NE(parse_error(one_tensor(2, {320, 2}, 12, 0, 64)).find("q4_k block size 256"), std::string::npos);
  EXPECT_NE(parse_error(one_tensor(2, {100, 2}, 14, 0, 64)).find("q6_k block size 256"), std::string::npos);
}

}  // namespace
}  // namespace tutti
