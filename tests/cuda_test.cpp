// The CUDA backend against the CPU backend and double-precision references, on random
// inputs: every kernel, the whole forward pass, and greedy ids on ../shared/models/.
// Tolerances per type: products whose weights or inputs pass through BF16 about 1e-2
// relative to the magnitude of the sum; FP32 paths about 1e-5. Without a GPU (or in a build
// without CUDA) every test here reports itself skipped and says why.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "kernels/cuda/cuda_backend.h"
#include "pipeline/generate.h"
#include "pipeline/model.h"
#include "test_support.h"

namespace tutti {
namespace {

#define TUTTI_REQUIRE_CUDA()                                                                   \
  do {                                                                                        \
    if (!cuda_backend_built()) GTEST_SKIP() << "this build has no CUDA backend (no nvcc)";     \
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";          \
  } while (0)

using test::random_floats;

// A device buffer filled from (and read back to) host vectors.
struct DeviceBuffer {
  Backend& b;
  void* p;
  size_t bytes;
  DeviceBuffer(Backend& backend, size_t n) : b(backend), p(backend.alloc(n)), bytes(n) {}
  template <class T>
  DeviceBuffer(Backend& backend, const std::vector<T>& host) : DeviceBuffer(backend, host.size() * sizeof(T)) {
    b.copy_to_device(p, host.data(), bytes);
  }
  ~DeviceBuffer() { b.free(p); }
  float* f() const { return static_cast<float*>(p); }
  std::vector<float> read() const {
    std::vector<float> v(bytes / 4);
    b.copy_to_host(v.data(), p, bytes);
    return v;
  }
};

TEST(Cuda, MatmulMatchesReferenceForEveryTypeAndTokenCount) {
  TUTTI_REQUIRE_CUDA();
  for (bool keep_f32 : {false, true}) {
    CudaBackendOptions o;
    o.f32_weights_to_bf16 = !keep_f32;
    auto gpu = make_cuda_backend(o);
    for (const TensorTypeInfo& info : all_tensor_types()) {
      const TensorType type = info.type;
      if (keep_f32 && type != TensorType::F32) continue;
      const std::vector<int64_t> widths = is_super_block(type) ? std::vector<int64_t>{256, 768} : std::vector<int64_t>{32, 96, 1024};
      for (int64_t cols : widths) {
        for (int tokens : {1, 3, 8, 9, 16, 33}) {
          const int64_t rows = 37;
          const auto wf = random_floats(size_t(rows * cols), 1, 0.1f);
          const auto x = random_floats(size_t(tokens * cols), 2);
          std::vector<uint8_t> w(row_bytes(type, size_t(cols)) * size_t(rows));
          for (int64_t r = 0; r < rows; ++r)
            quantize_row(type, wf.data() + r * cols, w.data() + size_t(r) * row_bytes(type, size_t(cols)), size_t(cols));
          const MatrixView dev = gpu->upload_weights(MatrixView{type, w.data(), rows, cols});
          DeviceBuffer dx(*gpu, x), dy(*gpu, size_t(tokens * rows) * 4);
          const MatmulTask task{dev, dy.f()};
          gpu->matmul({&task, 1}, dx.f(), tokens);
          const auto y = dy.read();
          // BF16 enters through F32-to-BF16 weights, or through the cuBLAS path's inputs.
          const bool bf16 = (type == TensorType::F32 && !keep_f32) || type == TensorType::BF16 || tokens >= 16;
          std::vector<float> wd(static_cast<size_t>(cols));
          for (int64_t r = 0; r < rows; ++r) {
            dequantize_row(type, w.data() + size_t(r) * row_bytes(type, size_t(cols)), wd.data(), size_t(cols));
            for (int t = 0; t < tokens; ++t) {
              double ref = 0, mag = 0;
              for (int64_t k = 0; k < cols; ++k) {
                ref += double(wd[size_t(k)]) * x[size_t(t * cols + k)];
                mag += std::fabs(double(wd[size_t(k)]) * x[size_t(t * cols + k)]);
              }
              ASSERT_NEAR(y[size_t(t * rows + r)], ref, (bf16 ? 1e-2 : 1e-5) * (mag + 1e-6))
                  << tensor_type_info(type).name << " cols " << cols << " tokens " << tokens << " row " << r;
            }
          }
        }
      }
    }
  }
}

TEST(Cuda, RowKernelsMatchTheCpuBackend) {
  TUTTI_REQUIRE_CUDA();
  auto gpu = make_cuda_backend();
  auto cpu = make_cpu_backend({1, "scalar"});
  const int n = 5, dim = 96, heads = 3, head_dim = 32;
  const auto x = random_floats(size_t(n * dim), 3), w = random_floats(size_t(dim), 4), y = random_floats(size_t(n * dim), 5);
  auto near = [](const std::vector<float>& a, const std::vector<float>& b, double tol, const char* what) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], tol * (1 + std::fabs(b[i]))) << what << " at " << i;
  };
  {  // rms_norm
    DeviceBuffer dx(*gpu, x), dw(*gpu, w), dy(*gpu, x.size() * 4);
    gpu->rms_norm(dx.f(), dw.f(), dy.f(), n, dim, 1e-5f);
    std::vector<float> ref(x.size());
    cpu->rms_norm(x.data(), w.data(), ref.data(), n, dim, 1e-5f);
    near(dy.read(), ref, 1e-5, "rms_norm");
  }
  {  // rope: both layouts, partial rotation, frequency factors and linear scaling
    const std::vector<int32_t> pos = {0, 1, 7, 300, 4095};
    for (RopeLayout layout : {RopeLayout::Normal, RopeLayout::Neox})
      for (int n_rot : {head_dim, 16})
        for (bool factors : {false, true}) {
          std::vector<float> ff(size_t(n_rot / 2));
          for (size_t i = 0; i < ff.size(); ++i) ff[i] = 1.f + 0.5f * float(i);
          DeviceBuffer dff(*gpu, ff), dx(*gpu, x);
          RopeParams gp{n_rot, 500000.f, factors ? 0.5f : 1.f, layout, factors ? dff.f() : nullptr};
          RopeParams cp = gp;
          cp.freq_factors = factors ? ff.data() : nullptr;
          gpu->rope(dx.f(), pos.data(), n, heads, head_dim, gp);
          std::vector<float> ref = x;
          cpu->rope(ref.data(), pos.data(), n, heads, head_dim, cp);
          near(dx.read(), ref, 1e-5, "rope");
        }
  }
  {  // add_rows (attention biases)
    const auto bias = random_floats(size_t(dim), 13);
    DeviceBuffer dx(*gpu, x), db(*gpu, bias);
    gpu->add_rows(dx.f(), db.f(), n, dim);
    std::vector<float> ref = x;
    cpu->add_rows(ref.data(), bias.data(), n, dim);
    near(dx.read(), ref, 1e-6, "add_rows");
  }
  {  // swiglu, add
    DeviceBuffer dg(*gpu, x), du(*gpu, y), dout(*gpu, x.size() * 4);
    gpu->swiglu(dg.f(), du.f(), dout.f(), x.size());
    std::vector<float> ref(x.size());
    cpu->swiglu(x.data(), y.data(), ref.data(), x.size());
    near(dout.read(), ref, 1e-5, "swiglu");
    gpu->add(dg.f(), du.f(), x.size());
    std::vector<float> sum = x;
    cpu->add(sum.data(), y.data(), x.size());
    near(dg.read(), sum, 1e-6, "add");
  }
  {  // gather_rows
    const std::vector<int32_t> rows = {4, 0, 2};
    DeviceBuffer dx(*gpu, x), dout(*gpu, rows.size() * dim * 4);
    gpu->gather_rows(dx.f(), rows.data(), int(rows.size()), dim, dout.f());
    std::vector<float> ref(rows.size() * dim);
    cpu->gather_rows(x.data(), rows.data(), int(rows.size()), dim, ref.data());
    near(dout.read(), ref, 0, "gather_rows");
  }
  for (TensorType type : {TensorType::F16, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q5_1, TensorType::Q4_K,
                          TensorType::Q6_K, TensorType::Q3_K}) {  // embed
    const int vocab = 50, dim = 256;
    const auto table_f = random_floats(size_t(vocab * dim), 6);
    std::vector<uint8_t> table(row_bytes(type, dim) * vocab);
    (void)x;
    for (int r = 0; r < vocab; ++r) quantize_row(type, table_f.data() + r * dim, table.data() + r * row_bytes(type, dim), dim);
    const MatrixView host{type, table.data(), vocab, dim};
    const MatrixView dev = gpu->upload_weights(host);
    const std::vector<int32_t> ids = {49, 0, 7};
    DeviceBuffer dout(*gpu, ids.size() * dim * 4);
    gpu->embed(dev, ids.data(), int(ids.size()), dout.f());
    std::vector<float> ref(ids.size() * dim);
    cpu->embed(host, ids.data(), int(ids.size()), ref.data());
    near(dout.read(), ref, 0, "embed");
  }
}

// Paged attention with scattered blocks, several sequences in one call (a prefill chunk and
// decode rows), F32 and F16 caches, grouped-query head layouts.
TEST(Cuda, PagedAttentionMatchesTheCpuBackend) {
  TUTTI_REQUIRE_CUDA();
  auto gpu = make_cuda_backend();
  auto cpu = make_cpu_backend({1, "scalar"});
  struct Shape {
    int n_head, n_kv, hd, bt, ctx;
  };
  for (TensorType kv_type : {TensorType::F32, TensorType::F16})
    for (const Shape sh : {Shape{4, 2, 16, 4, 11}, Shape{16, 4, 64, 16, 300}, Shape{8, 2, 128, 32, 70}, Shape{32, 8, 64, 16, 1030}}) {
      const int kv_dim = sh.n_kv * sh.hd, n_layers = 2, layer = 1;
      const int blocks = (sh.ctx + sh.bt - 1) / sh.bt;
      const size_t elem = kv_type == TensorType::F16 ? 2 : 4;
      const size_t pool_bytes = size_t(2 * blocks + 3) * n_layers * 2 * size_t(sh.bt) * kv_dim * elem;
      std::vector<int32_t> table;
      for (int i = 0; i < blocks; ++i) table.push_back(2 * blocks + 2 - 2 * i);
      std::vector<uint8_t> cpu_pool(pool_bytes);
      DeviceBuffer gpu_pool(*gpu, pool_bytes);
      KvLayerView cv{cpu_pool.data(), kv_type, layer, n_layers, sh.bt, kv_dim, sh.hd};
      KvLayerView gv = cv;
      gv.pool = gpu_pool.p;
      const auto k = random_floats(size_t(sh.ctx * kv_dim), 10), v = random_floats(size_t(sh.ctx * kv_dim), 11);
      DeviceBuffer dk(*gpu, k), dv(*gpu, v);
      const AttentionSeq all{table.data(), 0, sh.ctx, 0};
      cpu->kv_store(cv, {&all, 1}, k.data(), v.data());
      gpu->kv_store(gv, {&all, 1}, dk.f(), dv.f());
      // Three rows: the last two positions as a chunk, then position 5 as a decode row.
      const auto q = random_floats(size_t(3 * sh.n_head * sh.hd), 12);
      DeviceBuffer dq(*gpu, q), dout(*gpu, q.size() * 4);
      const AttentionSeq seqs[2] = {{table.data(), sh.ctx - 2, 2, 0}, {table.data(), 5, 1, 2}};
      const AttentionShape shape{sh.n_head, sh.n_kv, sh.hd, 1.0f / std::sqrt(float(sh.hd))};
      std::vector<float> ref(q.size());
      cpu->attention(cv, seqs, shape, q.data(), ref.data());
      gpu->attention(gv, seqs, shape, dq.f(), dout.f());
      const auto got = dout.read();
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_NEAR(got[i], ref[i], (kv_type == TensorType::F16 ? 2e-3 : 1e-5) * (1 + std::fabs(ref[i])))
            << "kv " << tensor_type_info(kv_type).name << " hd " << sh.hd << " ctx " << sh.ctx << " at " << i;
    }
}

RandomModelSpec spec_of(TensorType type) {
  RandomModelSpec s;
  s.dim = 128; s.layers = 2; s.heads = 4; s.kv_heads = 2; s.ffn = 256; s.type = type; s.seed = 9;
  return s;
}

// The whole forward pass: a ragged batch (a 20-token prefill chunk that takes the cuBLAS
// path, beside a decode row) gives the CPU backend's logits within BF16 tolerance.
TEST(Cuda, ForwardPassMatchesTheCpuBackend) {
  TUTTI_REQUIRE_CUDA();
  struct Case {
    TensorType type;
    std::string architecture;
  };
  for (const Case& c : {Case{TensorType::F32, "llama"}, Case{TensorType::F16, "llama"}, Case{TensorType::Q8_0, "llama"},
                        Case{TensorType::Q4_0, "llama"}, Case{TensorType::Q4_K, "llama"}, Case{TensorType::Q6_K, "qwen2"},
                        Case{TensorType::Q5_K, "qwen3"}, Case{TensorType::F32, "llama31"}}) {
    const TensorType type = c.type;
    RandomModelSpec spec = spec_of(type);
    if (is_super_block(type)) spec.dim = 256, spec.ffn = 512;
    spec.architecture = c.architecture;
    const std::string path = test::random_model(spec, "cuda-" + c.architecture + "-" + std::string(tensor_type_info(type).name) + ".gguf");
    std::vector<std::vector<float>> logits;
    for (bool on_gpu : {false, true}) {
      std::unique_ptr<Backend> backend = on_gpu ? make_cuda_backend() : make_cpu_backend({2});
      auto model = Model::load(path, *backend);
      ASSERT_TRUE(model) << model.error().message;
      auto kv = std::move((*model)->make_kv_cache(8 << 20, TensorType::F32, 16)).value();
      Batch b;
      b.chunks = {{2, 0, {3, 9, 27}, false}};
      StepLogits out;
      ASSERT_TRUE((*model)->forward(b, *kv, out).ok());
      std::vector<int32_t> prompt;
      for (int i = 0; i < 20; ++i) prompt.push_back(5 + 13 * i);
      b.chunks = {{1, 0, prompt, false}, {2, 3, {81}, false}};
      ASSERT_TRUE((*model)->forward(b, *kv, out).ok());
      std::vector<float> both(out.last_of(0, b), out.last_of(0, b) + out.n_vocab);
      both.insert(both.end(), out.last_of(1, b), out.last_of(1, b) + out.n_vocab);
      logits.push_back(both);
    }
    double max_abs = 0;
    for (float v : logits[0]) max_abs = std::max(max_abs, double(std::fabs(v)));
    for (size_t i = 0; i < logits[0].size(); ++i)
      ASSERT_NEAR(logits[1][i], logits[0][i], 2e-2 * (max_abs + 1)) << c.architecture << " " << tensor_type_info(type).name << " logit " << i;
  }
}

// Greedy ids on the shared f32 model: identical to the CPU backend's (and the reference
// engine's), with F32 kept and with the default BF16 conversion.
TEST(Cuda, SharedF32ModelGreedyIdsMatchTheCpuBackend) {
  TUTTI_REQUIRE_CUDA();
  TUTTI_REQUIRE_SHARED("models/tiny-llama-spm-f32.gguf", path);
  std::vector<std::vector<int32_t>> runs;
  for (int which = 0; which < 3; ++which) {
    CudaBackendOptions o;
    o.f32_weights_to_bf16 = which == 2;
    std::unique_ptr<Backend> backend = which == 0 ? make_cpu_backend({2}) : make_cuda_backend(o);
    auto model = Model::load(path, *backend);
    ASSERT_TRUE(model) << model.error().message;
    auto tok = Tokenizer::from_gguf((*model)->file());
    ASSERT_TRUE(tok);
    auto kv = std::move((*model)->make_kv_cache(16 << 20)).value();
    Sampler sampler({});
    GenerateOptions g;
    g.max_tokens = 32;
    g.stop_at_eog = false;
    auto r = generate(**model, *kv, tok->get(), (*tok)->encode("Once upon a time"), sampler, g);
    ASSERT_TRUE(r) << r.error().message;
    runs.push_back(r->tokens);
  }
  EXPECT_EQ(runs[1], runs[0]) << "F32 kept";
  EXPECT_EQ(runs[2], runs[0]) << "F32 as BF16";
}

// The newer architectures' shared f32 files (rope frequency factors, Qwen2 biases and rotary
// halves, Qwen3 q/k norms): the CUDA backend with F32 kept gives the CPU backend's ids.
TEST(Cuda, SharedArchitectureModelsGreedyIdsMatchTheCpuBackend) {
  TUTTI_REQUIRE_CUDA();
  const std::string dir = test::shared_dir();
  if (dir.empty()) GTEST_SKIP() << "../shared/ is absent (set TUTTI_SHARED_DIR)";
  for (const char* name : {"tiny-llama31-f32", "tiny-qwen2-f32", "tiny-qwen3-f32"}) {
    const std::string path = dir + "/models/" + name + ".gguf";
    if (!std::filesystem::exists(path)) continue;
    std::vector<std::vector<int32_t>> runs;
    for (bool on_gpu : {false, true}) {
      CudaBackendOptions o;
      o.f32_weights_to_bf16 = false;
      std::unique_ptr<Backend> backend = on_gpu ? make_cuda_backend(o) : make_cpu_backend({2});
      auto model = Model::load(path, *backend);
      ASSERT_TRUE(model) << model.error().message;
      auto kv = std::move((*model)->make_kv_cache(16 << 20)).value();
      Sampler sampler({});
      GenerateOptions g;
      g.max_tokens = 32;
      g.stop_at_eog = false;
      auto r = generate(**model, *kv, nullptr, {1, 15043, 3186}, sampler, g);
      ASSERT_TRUE(r) << r.error().message;
      runs.push_back(r->tokens);
    }
    EXPECT_EQ(runs[1], runs[0]) << name;
  }
}

// Out of GPU memory is an error with the sizes, and the backend stays usable.
TEST(Cuda, OutOfMemoryIsAClearError) {
  TUTTI_REQUIRE_CUDA();
  auto gpu = make_cuda_backend();
  try {
    gpu->alloc(size_t(1) << 50);
    FAIL() << "a petabyte allocation succeeded";
  } catch (const std::bad_alloc& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("out of memory"), std::string::npos) << m;
    EXPECT_NE(m.find("MiB"), std::string::npos) << m;
  }
  DeviceBuffer still(*gpu, std::vector<float>{1, 2, 3});
  EXPECT_EQ(still.read()[2], 3.f);
}

TEST(Cuda, AskingForCudaWithoutItSaysWhy) {
  if (cuda_backend_built() && cuda_device_count() > 0) GTEST_SKIP() << "this machine has a GPU";
  try {
    make_cuda_backend();
    FAIL() << "a CUDA backend without CUDA";
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    EXPECT_TRUE(m.find("no CUDA") != std::string::npos || m.find("CUDA device") != std::string::npos) << m;
  }
}

}  // namespace
}  // namespace tutti
