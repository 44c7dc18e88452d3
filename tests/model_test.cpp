// The forward pass against a plain double-precision Llama written here from the GGUF
// definition (with each architecture's variations: biases, per-head q/k norms, the rotary
// layouts and frequency factors), and the ragged batch against one-sequence-at-a-time runs.
#include <gtest/gtest.h>

#include <cmath>

#include "pipeline/generate.h"
#include "pipeline/model.h"
#include "test_support.h"

namespace tutti {
namespace {

// Reference: every weight dequantized to double, attention over the full history, no cache.
class ReferenceLlama {
 public:
  explicit ReferenceLlama(const GgufFile& f) : f_(f), h_(read_model_config(f).value().hparams) {}

  std::vector<double> matrix(const std::string& name) const {
    const GgufTensorInfo* t = f_.find_tensor(name);
    std::vector<float> tmp(t->n_elements());
    dequantize_row(t->type, t->data, tmp.data(), tmp.size());
    return {tmp.begin(), tmp.end()};
  }

  // y[r] = sum_k W[r][k] x[k]; W stored [rows][cols].
  static std::vector<double> matvec(const std::vector<double>& w, const std::vector<double>& x) {
    const size_t cols = x.size(), rows = w.size() / cols;
    std::vector<double> y(rows);
    for (size_t r = 0; r < rows; ++r) {
      double s = 0;
      for (size_t k = 0; k < cols; ++k) s += w[r * cols + k] * x[k];
      y[r] = s;
    }
    return y;
  }

  std::vector<double> rmsnorm(const std::vector<double>& x, const std::vector<double>& w) const {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double s = 1.0 / std::sqrt(ss / double(x.size()) + h_.rms_eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * s * w[i];
    return y;
  }

  // Pair i turned by pos * base^(-2i/n_rot) / factor_i: pairs (2i, 2i+1), or (i, i + n_rot/2)
  // in the Neox layout.
  void rope(std::vector<double>& v, int heads, int pos) const {
    const auto factors = f_.find_tensor("rope_freqs.weight") ? matrix("rope_freqs.weight") : std::vector<double>();
    const bool neox = h_.block.rope == RopeLayout::Neox;
    for (int h = 0; h < heads; ++h)
      for (uint32_t i = 0; i < h_.n_rot / 2; ++i) {
        const double th = pos * std::pow(double(h_.rope_freq_base), -2.0 * i / h_.n_rot) / (factors.empty() ? 1.0 : factors[i]);
        double& a = v[size_t(h) * h_.head_dim + (neox ? i : 2 * i)];
        double& b = v[size_t(h) * h_.head_dim + (neox ? i + h_.n_rot / 2 : 2 * i + 1)];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(th) - b0 * std::sin(th);
        b = a0 * std::sin(th) + b0 * std::cos(th);
      }
  }

  // Per-head RMSNorm (Qwen3's q and k norms).
  std::vector<double> head_norm(const std::vector<double>& x, int heads, const std::vector<double>& w) const {
    std::vector<double> y;
    for (int h = 0; h < heads; ++h) {
      const std::vector<double> part(x.begin() + long(h * h_.head_dim), x.begin() + long((h + 1) * h_.head_dim));
      const auto n = rmsnorm(part, w);
      y.insert(y.end(), n.begin(), n.end());
    }
    return y;
  }

  static void add(std::vector<double>& x, const std::vector<double>& b) {
    for (size_t i = 0; i < x.size(); ++i) x[i] += b[i];
  }

  // Logits at every position of `tokens`.
  std::vector<std::vector<double>> run(const std::vector<int32_t>& tokens) const {
    const size_t D = h_.n_embd, hd = h_.head_dim;
    const auto embd = matrix("token_embd.weight");
    std::vector<std::vector<double>> x;
    for (int32_t t : tokens) x.emplace_back(embd.begin() + long(size_t(t) * D), embd.begin() + long(size_t(t + 1) * D));
    for (uint32_t l = 0; l < h_.n_layer; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".";
      const auto wq = matrix(b + "attn_q.weight"), wk = matrix(b + "attn_k.weight"), wv = matrix(b + "attn_v.weight"),
                 wo = matrix(b + "attn_output.weight"), an = matrix(b + "attn_norm.weight"),
                 fn = matrix(b + "ffn_norm.weight"), wg = matrix(b + "ffn_gate.weight"), wu = matrix(b + "ffn_up.weight"),
                 wd = matrix(b + "ffn_down.weight");
      std::vector<std::vector<double>> K, V;
      std::vector<std::vector<double>> next = x;
      for (size_t p = 0; p < tokens.size(); ++p) {
        const auto n = rmsnorm(x[p], an);
        auto q = matvec(wq, n), k = matvec(wk, n), v = matvec(wv, n);
        if (h_.qkv_bias) add(q, matrix(b + "attn_q.bias")), add(k, matrix(b + "attn_k.bias")), add(v, matrix(b + "attn_v.bias"));
        if (h_.block.qk_norm) {
          q = head_norm(q, int(h_.n_head), matrix(b + "attn_q_norm.weight"));
          k = head_norm(k, int(h_.n_head_kv), matrix(b + "attn_k_norm.weight"));
        }
        rope(q, int(h_.n_head), int(p));
        rope(k, int(h_.n_head_kv), int(p));
        K.push_back(k);
        V.push_back(v);
        std::vector<double> att(h_.n_head * hd, 0.0);
        for (uint32_t h = 0; h < h_.n_head; ++h) {
          const uint32_t g = h / (h_.n_head / h_.n_head_kv);
          std::vector<double> s(p + 1);
          double mx = -1e300, sum = 0;
          for (size_t j = 0; j <= p; ++j) {
            double d = 0;
            for (size_t e = 0; e < hd; ++e) d += q[h * hd + e] * K[j][g * hd + e];
            s[j] = d / std::sqrt(double(hd));
            mx = std::max(mx, s[j]);
          }
          for (auto& e : s) sum += e = std::exp(e - mx);
          for (size_t j = 0; j <= p; ++j)
            for (size_t e = 0; e < hd; ++e) att[h * hd + e] += s[j] / sum * V[j][g * hd + e];
        }
        const auto o = matvec(wo, att);
        for (size_t i = 0; i < D; ++i) next[p][i] = x[p][i] + o[i];
        const auto m = rmsnorm(next[p], fn);
        const auto g = matvec(wg, m), u = matvec(wu, m);
        std::vector<double> act(g.size());
        for (size_t i = 0; i < g.size(); ++i) act[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
        const auto dn = matvec(wd, act);
        for (size_t i = 0; i < D; ++i) next[p][i] += dn[i];
      }
      x = next;
    }
    const auto on = matrix("output_norm.weight");
    const auto out = f_.find_tensor("output.weight") ? matrix("output.weight") : embd;
    std::vector<std::vector<double>> logits;
    for (auto& xp : x) logits.push_back(matvec(out, rmsnorm(xp, on)));
    return logits;
  }

 private:
  const GgufFile& f_;
  LlamaHparams h_;
};

RandomModelSpec small_spec(TensorType type) {
  RandomModelSpec s;
  s.dim = 64; s.layers = 2; s.heads = 4; s.kv_heads = 2; s.ffn = 96; s.type = type; s.seed = 3;
  return s;
}

// Prefill in two chunks (crossing KV blocks), every position's logits against the reference.
void expect_matches_reference(const std::string& path) {
  auto backend = make_cpu_backend({2});
  auto model = std::move(Model::load(path, *backend)).value();
  auto kv = std::move(model->make_kv_cache(8 << 20, TensorType::F32, 4)).value();
  const std::vector<int32_t> tokens = {5, 17, 250, 3, 99, 42, 7, 301, 8, 11, 64, 128, 1, 2};
  ReferenceLlama ref(model->file());
  const auto expected = ref.run(tokens);
  Batch b;
  b.chunks.push_back({0, 0, std::vector<int32_t>(tokens.begin(), tokens.begin() + 9), true});
  StepLogits out;
  ASSERT_TRUE(model->forward(b, *kv, out).ok());
  std::vector<std::vector<float>> got;
  for (int i = 0; i < 9; ++i) got.emplace_back(out.row(i), out.row(i) + out.n_vocab);
  b.chunks[0] = {0, 9, std::vector<int32_t>(tokens.begin() + 9, tokens.end()), true};
  ASSERT_TRUE(model->forward(b, *kv, out).ok());
  for (int i = 0; i < 5; ++i) got.emplace_back(out.row(i), out.row(i) + out.n_vocab);
  for (size_t p = 0; p < tokens.size(); ++p) {
    double num = 0, den = 0;
    for (size_t v = 0; v < expected[p].size(); ++v) {
      num += (got[p][v] - expected[p][v]) * (got[p][v] - expected[p][v]);
      den += expected[p][v] * expected[p][v];
    }
    EXPECT_LT(std::sqrt(num / den), 1e-4) << path << " position " << p;
  }
}

TEST(Model, F32LogitsMatchDoublePrecisionReference) {
  expect_matches_reference(test::random_model(small_spec(TensorType::F32), "ref-f32.gguf"));
}

// Each architecture's block: Llama 3.1 frequency factors, Qwen2 biases and rotary halves,
// Qwen3 per-head q/k norms with a head size other than dim / heads, tied output.
TEST(Model, EveryArchitectureMatchesDoublePrecisionReference) {
  for (const std::string arch : {"llama31", "qwen2", "qwen3"}) {
    RandomModelSpec s = small_spec(TensorType::F32);
    s.architecture = arch;
    s.rope_base = 500000.f;
    if (arch == "qwen3") s.head_dim = 32, s.tied = true;  // 4 heads x 32 over dim 64
    expect_matches_reference(test::random_model(s, "ref-" + arch + "-f32.gguf"));
  }
}

// Sequences in one ragged step must not affect each other: each row's result equals the
// row computed alone. Kernels are chosen by the step's token count (integer tiles below 8
// tokens, the bf16 GEMM from 8 on with AVX-512), so each case keeps both runs on one side.
// A file without output.weight projects logits through token_embd.weight (tied).
TEST(Model, TiedOutputFallsBackToTokenEmbeddings) {
  const std::string src = test::random_model(small_spec(TensorType::F32), "ref-f32.gguf");
  auto f = GgufFile::open(src);
  ASSERT_TRUE(f);
  GgufWriter w;
  for (auto& [k, v] : (*f)->metadata()) w.set_value(k, v);
  for (auto& t : (*f)->tensors())
    if (t.name != "output.weight")
      w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), std::vector<uint8_t>(t.data, t.data + t.n_bytes));
  const std::string path = test::temp_path("tied-f32.gguf");
  ASSERT_TRUE(w.write(path).ok());
  auto backend = make_cpu_backend({2});
  auto model = Model::load(path, *backend);
  ASSERT_TRUE(model) << model.error().message;
  EXPECT_TRUE((*model)->hparams().tied_output);
  auto kv = std::move((*model)->make_kv_cache(4 << 20, TensorType::F32)).value();
  const std::vector<int32_t> tokens = {3, 141, 59, 26};
  Batch b;
  b.chunks = {{0, 0, tokens, true}};
  StepLogits out;
  ASSERT_TRUE((*model)->forward(b, *kv, out).ok());
  const auto expected = ReferenceLlama((*model)->file()).run(tokens);
  for (size_t p = 0; p < tokens.size(); ++p)
    for (int v = 0; v < out.n_vocab; ++v) ASSERT_NEAR(out.row(int(p))[v], expected[p][size_t(v)], 1e-4 * (1 + std::fabs(expected[p][size_t(v)])));
}

TEST(Model, RaggedBatchEqualsSequencesRunAlone) {
  struct Case {
    std::vector<int32_t> a, c;
  };
  const std::vector<Case> cases = {
      {{10, 20, 30, 40}, {7, 8, 9}},                                                // 4 + 1 tokens: integer tiles
      {{10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120}, {7, 8, 9}},  // 12 and 13 tokens: GEMM
  };
  for (TensorType type : {TensorType::F16, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_K, TensorType::Q6_K}) {
    RandomModelSpec spec = small_spec(type);
    if (is_super_block(type)) spec.dim = 256, spec.ffn = 512, spec.architecture = "qwen2";
    const std::string path = test::random_model(spec, std::string("ragged-") + std::string(tensor_type_info(type).name) + ".gguf");
    auto backend = make_cpu_backend({2});
    auto model = std::move(Model::load(path, *backend)).value();
    auto kv = std::move(model->make_kv_cache(8 << 20, TensorType::F32, 4)).value();
    for (const Case& k : cases) {
      const std::vector<int32_t> c2 = {11};
      // Alone: sequence 1 prefilled; sequence 2 prefilled, then decoding one token.
      StepLogits solo_a, solo_c, tmp;
      Batch b;
      b.chunks = {{1, 0, k.a, false}};
      ASSERT_TRUE(model->forward(b, *kv, solo_a).ok());
      b.chunks = {{2, 0, k.c, false}};
      ASSERT_TRUE(model->forward(b, *kv, tmp).ok());
      b.chunks = {{2, int32_t(k.c.size()), c2, false}};
      ASSERT_TRUE(model->forward(b, *kv, solo_c).ok());
      kv->release(1);
      kv->release(2);
      // Together: seq 2's prefill first, then one step with seq 1's prefill and seq 2's decode.
      b.chunks = {{2, 0, k.c, false}};
      ASSERT_TRUE(model->forward(b, *kv, tmp).ok());
      b.chunks = {{1, 0, k.a, false}, {2, int32_t(k.c.size()), c2, false}};
      StepLogits both;
      ASSERT_TRUE(model->forward(b, *kv, both).ok());
      const bool gemm = k.a.size() >= 8;
      for (int v = 0; v < both.n_vocab; ++v) {
        ASSERT_NEAR(both.last_of(0, b)[v], solo_a.row(0)[v], 1e-4f * (1 + std::fabs(solo_a.row(0)[v])));
        // A decode row alone runs with the integer tiles, in the GEMM case with the bf16 path
        // (the K-quants' GEMM is the same integer sums, so they stay exact).
        const float tol = gemm && type != TensorType::F16 && !is_super_block(type) ? 2e-2f : 1e-4f;
        ASSERT_NEAR(both.last_of(1, b)[v], solo_c.row(0)[v], tol * (1 + std::fabs(solo_c.row(0)[v])));
      }
      kv->release(1);
      kv->release(2);
    }
  }
}

TEST(Model, BadStepsAreErrorsThatLeaveTheCacheUsable) {
  const std::string path = test::random_model(small_spec(TensorType::F32), "ref-f32.gguf");
  auto backend = make_cpu_backend({1});
  auto model = std::move(Model::load(path, *backend)).value();
  // Room for exactly 2 blocks of 4 tokens.
  auto kv = std::move(model->make_kv_cache(2 * 2 * 2 * 4 * 32 * 2, TensorType::F16, 4)).value();
  ASSERT_EQ(kv->total_blocks(), 2);
  StepLogits out;
  Batch b;
  b.chunks = {{1, 0, {1, 2, 3, 4, 5, 6, 7, 8, 9}, false}};
  Status s = model->forward(b, *kv, out);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("KV cache exhausted"), std::string::npos);
  EXPECT_EQ(kv->free_blocks(), 2);
  b.chunks = {{1, 0, {1, 2, int32_t(model->hparams().n_vocab)}, false}};
  s = model->forward(b, *kv, out);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("outside the vocabulary"), std::string::npos);
  b.chunks = {{1, 3, {1}, false}};  // nothing cached yet: a gap
  EXPECT_FALSE(model->forward(b, *kv, out).ok());
  b.chunks = {{1, 0, {1, 2, 3, 4, 5}, false}};
  ASSERT_TRUE(model->forward(b, *kv, out).ok());
  EXPECT_EQ(kv->length(1), 5);
  kv->release(1);
  EXPECT_EQ(kv->free_blocks(), 2);
}

TEST(Model, EveryKernelSetGeneratesTheSameGreedyTokens) {
  const std::string path = test::random_model(small_spec(TensorType::F32), "ref-f32.gguf");
  std::vector<std::vector<int32_t>> runs;
  for (const char* isa : {"scalar", "avx2", "avx512"}) {
    std::unique_ptr<Backend> backend;
    try {
      backend = make_cpu_backend({2, isa});
    } catch (const std::exception&) {
      continue;
    }
    auto model = std::move(Model::load(path, *backend)).value();
    auto kv = std::move(model->make_kv_cache(4 << 20)).value();
    Sampler sampler({});
    GenerateOptions o;
    o.max_tokens = 16;
    o.stop_at_eog = false;
    auto r = generate(*model, *kv, nullptr, {1, 2, 3}, sampler, o);
    ASSERT_TRUE(r) << r.error().message;
    runs.push_back(r->tokens);
  }
  ASSERT_GE(runs.size(), 1u);
  for (auto& r : runs) EXPECT_EQ(r, runs[0]);
}

}  // namespace
}  // namespace tutti
