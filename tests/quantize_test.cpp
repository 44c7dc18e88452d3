// tutti model quantize: the per-tensor mixes (against the types llama.cpp's quantizer chose in
// ../shared/models/ for the same shapes), the fallbacks for rows the blocks do not divide, and
// quantized models that load and stay close to the original's logits.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "pipeline/model.h"
#include "pipeline/quantize.h"
#include "test_support.h"

namespace tutti {
namespace {

RandomModelSpec k_shape() {  // the shape of ../shared/models/tiny-llama-q*_k*.gguf
  RandomModelSpec s;
  s.dim = 256; s.layers = 2; s.heads = 8; s.kv_heads = 4; s.ffn = 768; s.seed = 5;
  return s;
}

TEST(Quantize, MixesGiveTheTypesLlamaCppChoseForTheSameShapes) {
  const std::string f32 = test::random_model(k_shape(), "quant-src-f32.gguf");
  auto src = GgufFile::open(f32);
  ASSERT_TRUE(src) << src.error().message;
  int compared = 0;
  for (const char* mix : {"q4_k_m", "q5_k_m", "q6_k", "q3_k_m", "q2_k"}) {
    const std::string dir = test::shared_dir();
    const std::string ref_path = dir + "/models/tiny-llama-" + mix + ".gguf";
    if (dir.empty() || !std::filesystem::exists(ref_path)) continue;
    auto ref = GgufFile::open(ref_path);
    ASSERT_TRUE(ref) << ref.error().message;
    auto plans = plan_quantization(**src, parse_quantize_mix(mix)->mix);
    ASSERT_TRUE(plans) << plans.error().message;
    for (const TensorPlan& p : *plans) {
      const GgufTensorInfo* r = (*ref)->find_tensor(p.name);
      ASSERT_NE(r, nullptr) << p.name;
      EXPECT_EQ(tensor_type_info(p.to).name, tensor_type_info(r->type).name) << mix << " " << p.name << " (" << p.reason << ")";
    }
    ++compared;
  }
  if (compared == 0) GTEST_SKIP() << "../shared/models/ is absent (set TUTTI_SHARED_DIR)";
}

TEST(Quantize, MoreBitsGoToTheLayersLlamaCppPicks) {
  RandomModelSpec s = k_shape();
  s.layers = 8;
  const std::string f32 = test::random_model(s, "quant-src8-f32.gguf");
  auto src = GgufFile::open(f32);
  ASSERT_TRUE(src);
  auto plans = plan_quantization(**src, QuantizeMix::Q4_K_M);
  ASSERT_TRUE(plans);
  std::string v, down;
  for (const TensorPlan& p : *plans) {
    if (p.name.find("attn_v.weight") != std::string::npos) v += p.to == TensorType::Q6_K ? '6' : '4';
    if (p.name.find("ffn_down") != std::string::npos) down += p.to == TensorType::Q6_K ? '6' : '4';
    if (p.name == "output.weight") {
      EXPECT_EQ(p.to, TensorType::Q6_K);
    }
    if (p.name.find("norm") != std::string::npos) {
      EXPECT_EQ(p.to, TensorType::F32) << p.name;
    }
  }
  // First and last eighth and every third layer between (llama.cpp's use_more_bits).
  EXPECT_EQ(v, "64464466");
  EXPECT_EQ(down, "64464466");
}

TEST(Quantize, RowsTheBlocksDoNotDivideFallBack) {
  RandomModelSpec s = k_shape();
  s.ffn = 320;  // ffn_down rows of 320 values: whole 32-blocks, not 256-value super-blocks
  const std::string f32 = test::random_model(s, "quant-src320-f32.gguf");
  auto src = GgufFile::open(f32);
  ASSERT_TRUE(src);
  const std::pair<QuantizeMix, TensorType> expect[] = {
      {QuantizeMix::Q4_K_M, TensorType::Q5_0}, {QuantizeMix::Q5_K_M, TensorType::Q5_1},
      {QuantizeMix::Q6_K, TensorType::Q8_0},   {QuantizeMix::Q2_K, TensorType::Q4_0}};
  for (const auto& [mix, type] : expect) {
    auto plans = plan_quantization(**src, mix);
    ASSERT_TRUE(plans);
    for (const TensorPlan& p : *plans)
      if (p.name == "blk.0.ffn_down.weight") {
        EXPECT_EQ(tensor_type_info(p.to).name, tensor_type_info(type).name) << p.reason;
        EXPECT_NE(p.reason.find("do not divide"), std::string::npos) << p.reason;
      }
  }
}

// Logits of the first prompt position, through a fresh cache.
std::vector<float> logits_of(const std::string& path) {
  auto backend = make_cpu_backend({2});
  auto model = Model::load(path, *backend);
  EXPECT_TRUE(model) << model.error().message;
  if (!model) return {};
  auto kv = std::move((*model)->make_kv_cache(8 << 20)).value();
  Batch b;
  b.chunks = {{0, 0, {1, 17, 99, 250, 3, 42, 7, 8, 9, 10}, false}};
  StepLogits out;
  EXPECT_TRUE((*model)->forward(b, *kv, out).ok());
  return std::vector<float>(out.row(0), out.row(0) + out.n_vocab);
}

TEST(Quantize, QuantizedModelsLoadAndStayCloseToTheOriginal) {
  RandomModelSpec s = k_shape();
  s.architecture = "qwen2";  // biases and norms stay f32 through quantization
  const std::string f32 = test::random_model(s, "quant-qwen2-f32.gguf");
  const auto reference = logits_of(f32);
  ASSERT_FALSE(reference.empty());
  double ref_sq = 0;
  for (float v : reference) ref_sq += double(v) * v;
  // Relative RMS error of the logits, by mix (measured: q8_0 0.7%, q6_k 2.2%, q5_k_m 3.9%,
  // q4_0 8.6%, q4_k_m 6.1%, q3_k_m 15%, q2_k 26%); bounds with room, far below a broken file
  // (unrelated logits are ~140% apart).
  const std::pair<const char*, double> mixes[] = {{"q8_0", 0.02}, {"q6_k", 0.045}, {"q5_k_m", 0.07}, {"q4_0", 0.14},
                                                  {"q4_k_m", 0.1},  {"q3_k_m", 0.25}, {"q2_k", 0.45}};
  for (const auto& [name, bound] : mixes) {
    const std::string out = test::temp_path(std::string("quant-qwen2-") + name + ".gguf");
    std::vector<size_t> progress;
    QuantizeOptions o;
    o.threads = 2;
    o.progress = [&](size_t i, size_t, const TensorPlan&) { progress.push_back(i); };
    auto summary = quantize_model(f32, out, parse_quantize_mix(name)->mix, o);
    ASSERT_TRUE(summary) << summary.error().message;
    EXPECT_EQ(progress.size(), GgufFile::open(f32).value()->tensors().size()) << "one progress call per tensor";
    EXPECT_LT(summary->bytes_out, summary->bytes_in);
    auto file = GgufFile::open(out);
    ASSERT_TRUE(file) << file.error().message;
    EXPECT_EQ((*file)->find("general.file_type")->u, parse_quantize_mix(name)->file_type);
    EXPECT_EQ((*file)->find("general.quantization_version")->u, 2u);
    const auto got = logits_of(out);
    ASSERT_EQ(got.size(), reference.size());
    double err = 0;
    for (size_t i = 0; i < got.size(); ++i) err += double(got[i] - reference[i]) * (got[i] - reference[i]);
    const double rel = std::sqrt(err / ref_sq);
    std::printf("[ figures  ] %s: logits within %.2f%% of f32 (relative RMS), %.2f bits per weight\n", name, 100 * rel,
                summary->bits_per_weight);
    EXPECT_LT(rel, bound) << name;
  }
}

TEST(Quantize, RequantizingIsCountedAndInputErrorsNameTheFile) {
  const std::string f32 = test::random_model(k_shape(), "quant-src-f32.gguf");
  const std::string q8 = test::temp_path("quant-requant-q8_0.gguf"), q4 = test::temp_path("quant-requant-q4_k_m.gguf");
  ASSERT_TRUE(quantize_model(f32, q8, QuantizeMix::Q8_0));
  auto again = quantize_model(q8, q4, QuantizeMix::Q4_K_M);
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_GT(again->requantized, 0u);
  auto missing = quantize_model("/nonexistent/in.gguf", q4, QuantizeMix::Q4_K_M);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("/nonexistent/in.gguf"), std::string::npos);
  EXPECT_FALSE(parse_quantize_mix("q4_k_s"));
}

// A tensor made at write time that fails leaves no file behind; the others are streamed.
TEST(Quantize, WriterProducersStreamAndFailCleanly) {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.add_tensor("a", TensorType::F32, {4}, [](std::vector<uint8_t>& out) {
    out.assign(16, 1);
    return Status::Ok();
  });
  const std::string good = test::temp_path("producer-good.gguf");
  ASSERT_TRUE(w.write(good).ok());
  auto f = GgufFile::open(good);
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ((*f)->find_tensor("a")->data[3], 1);
  w.add_tensor("b", TensorType::F32, {4}, [](std::vector<uint8_t>&) { return Status(Error{"no data"}); });
  const std::string bad = test::temp_path("producer-bad.gguf");
  std::filesystem::remove(bad);
  const Status s = w.write(bad);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("tensor 'b': no data"), std::string::npos) << s.message();
  EXPECT_FALSE(std::filesystem::exists(bad));
}

}  // namespace
}  // namespace tutti
