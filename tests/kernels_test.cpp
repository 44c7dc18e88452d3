// Every kernel of every instruction set this CPU has, against plain double-precision
// references on random data. A kernel set the CPU lacks is reported as skipped, with why.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/backend.h"
#include "kernels/cpu/matmul_kernels.h"
#include "test_support.h"

namespace tutti {
namespace {

using test::random_floats;

struct MatmulCase {
  std::string isa;
  TensorType type;
};

class MatmulTest : public testing::TestWithParam<MatmulCase> {};

TEST_P(MatmulTest, MatchesDoublePrecisionReference) {
  const auto [isa, type] = GetParam();
  std::unique_ptr<Backend> backend;
  try {
    backend = make_cpu_backend({2, isa});
  } catch (const std::exception& e) {
    GTEST_SKIP() << "kernel set '" << isa << "' unavailable here: " << e.what();
  }
  // Widths with an odd number of 32-blocks and rows/tokens that are not tile multiples.
  for (int64_t cols : {32, 96, 160, 1024}) {
    for (int tokens : {1, 2, 3, 5, 9}) {
      const int64_t rows = 37;
      const auto wf = random_floats(size_t(rows * cols), 1, 0.1f);
      const auto x = random_floats(size_t(tokens * cols), 2);
      std::vector<uint8_t> w(row_bytes(type, size_t(cols)) * size_t(rows));
      for (int64_t r = 0; r < rows; ++r)
        quantize_row(type, wf.data() + r * cols, w.data() + size_t(r) * row_bytes(type, size_t(cols)), size_t(cols));
      std::vector<float> y(size_t(tokens * rows), NAN);
      const MatmulTask task{MatrixView{type, w.data(), rows, cols}, y.data()};
      backend->matmul({&task, 1}, x.data(), tokens);
      // Reference: the stored (dequantized) weights times the exact activations. Quantized
      // kernels also quantize activations to 8 bits, so their tolerance is wider.
      std::vector<float> wd(static_cast<size_t>(cols));
      for (int64_t r = 0; r < rows; ++r) {
        dequantize_row(type, w.data() + size_t(r) * row_bytes(type, size_t(cols)), wd.data(), size_t(cols));
        for (int t = 0; t < tokens; ++t) {
          double ref = 0, mag = 0;
          for (int64_t k = 0; k < cols; ++k) {
            ref += double(wd[size_t(k)]) * x[size_t(t * cols + k)];
            mag += std::fabs(double(wd[size_t(k)]) * x[size_t(t * cols + k)]);
          }
          const double got = y[size_t(t * rows + r)];
          // Quantized kernels round activations to 8 bits; the batched bf16 path (AVX-512,
          // from 8 tokens on) rounds them, and the widened weights, to bf16.
          const bool quant = type == TensorType::Q8_0 || type == TensorType::Q4_0;
          const bool bf16_path = isa == "avx512" && tokens >= 8 && (quant || type == TensorType::BF16);
          const double tol = quant || bf16_path ? 1e-2 * mag : 1e-5 * mag + 1e-6;
          ASSERT_NEAR(got, ref, tol) << isa << " " << tensor_type_info(type).name << " cols " << cols << " tokens "
                                     << tokens << " row " << r << " token " << t;
        }
      }
    }
  }
}

std::vector<MatmulCase> matmul_cases() {
  std::vector<MatmulCase> v;
  for (const char* isa : {"scalar", "avx2", "avx512"})
    for (TensorType t : {TensorType::F32, TensorType::F16, TensorType::BF16, TensorType::Q8_0, TensorType::Q4_0})
      v.push_back({isa, t});
  return v;
}

INSTANTIATE_TEST_SUITE_P(AllIsas, MatmulTest, testing::ValuesIn(matmul_cases()), [](const auto& info) {
  return info.param.isa + "_" + std::string(tensor_type_info(info.param.type).name);
});

// The quantized kernels of every ISA agree with the scalar ones to float rounding: they all
// compute the same integer block sums.
TEST(Matmul, QuantizedIsasAgreeWithScalar) {
  auto scalar = make_cpu_backend({1, "scalar"});
  for (const char* isa : {"avx2", "avx512"}) {
    std::unique_ptr<Backend> b;
    try {
      b = make_cpu_backend({2, isa});
    } catch (const std::exception&) {
      continue;
    }
    for (TensorType type : {TensorType::Q8_0, TensorType::Q4_0}) {
      const int64_t rows = 19, cols = 288;
      const int tokens = 6;
      const auto wf = random_floats(size_t(rows * cols), 3);
      const auto x = random_floats(size_t(tokens * cols), 4);
      std::vector<uint8_t> w(row_bytes(type, size_t(cols)) * size_t(rows));
      for (int64_t r = 0; r < rows; ++r)
        quantize_row(type, wf.data() + r * cols, w.data() + size_t(r) * row_bytes(type, size_t(cols)), size_t(cols));
      std::vector<float> y1(size_t(rows * tokens)), y2(size_t(rows * tokens));
      const MatmulTask t1{MatrixView{type, w.data(), rows, cols}, y1.data()};
      const MatmulTask t2{MatrixView{type, w.data(), rows, cols}, y2.data()};
      scalar->matmul({&t1, 1}, x.data(), tokens);
      b->matmul({&t2, 1}, x.data(), tokens);
      for (size_t i = 0; i < y1.size(); ++i) ASSERT_NEAR(y1[i], y2[i], 1e-4 * (1 + std::fabs(y1[i]))) << isa;
    }
  }
}

TEST(Kernels, RmsNormRopeSwigluMatchReference) {
  auto b = make_cpu_backend({2});
  const int n = 3, dim = 64;
  auto x = random_floats(n * dim, 5);
  auto w = random_floats(dim, 6);
  std::vector<float> y(n * dim);
  b->rms_norm(x.data(), w.data(), y.data(), n, dim, 1e-5f);
  for (int t = 0; t < n; ++t) {
    double ss = 0;
    for (int i = 0; i < dim; ++i) ss += double(x[t * dim + i]) * x[t * dim + i];
    const double s = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int i = 0; i < dim; ++i) ASSERT_NEAR(y[t * dim + i], x[t * dim + i] * s * w[i], 1e-5);
  }
  // RoPE: adjacent pairs rotated by pos * base^(-2i/n_rot), only the first n_rot values.
  const int heads = 2, hd = 16, n_rot = 8;
  auto q = random_floats(n * heads * hd, 7);
  auto q0 = q;
  const int32_t pos[n] = {0, 5, 1000};
  b->rope(q.data(), pos, n, heads, hd, n_rot, 10000.f);
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < hd / 2; ++i) {
        const float* a = &q0[size_t((t * heads + h) * hd + 2 * i)];
        const float* r = &q[size_t((t * heads + h) * hd + 2 * i)];
        if (2 * i >= n_rot) {
          ASSERT_EQ(r[0], a[0]);
          continue;
        }
        const double th = pos[t] * std::pow(10000.0, -2.0 * i / n_rot);
        ASSERT_NEAR(r[0], a[0] * std::cos(th) - a[1] * std::sin(th), 2e-3);
        ASSERT_NEAR(r[1], a[0] * std::sin(th) + a[1] * std::cos(th), 2e-3);
      }
  auto g = random_floats(100, 8), u = random_floats(100, 9);
  std::vector<float> o(100);
  b->swiglu(g.data(), u.data(), o.data(), 100);
  for (int i = 0; i < 100; ++i) ASSERT_NEAR(o[i], g[i] / (1 + std::exp(-double(g[i]))) * u[i], 1e-5);
}

// Paged attention against a double-precision reference, for every kernel set, KV type,
// block size (4 takes the portable path, 16 and 32 the AVX-512 one where present) and head
// layout, with contexts that end inside a block and blocks scattered in the pool.
TEST(Kernels, PagedAttentionMatchesReference) {
  struct Shape {
    int n_head, n_kv, hd, bt, ctx;
  };
  for (const char* isa : {"scalar", "avx512"})
    for (TensorType kv_type : {TensorType::F32, TensorType::F16})
      for (const Shape sh : {Shape{4, 2, 16, 4, 11}, Shape{16, 4, 64, 16, 37}, Shape{8, 2, 64, 32, 70}, Shape{6, 3, 32, 16, 20}}) {
        std::unique_ptr<Backend> b;
        try {
          b = make_cpu_backend({2, isa});
        } catch (const std::exception&) {
          continue;
        }
        const int n_head = sh.n_head, n_kv = sh.n_kv, hd = sh.hd, bt = sh.bt, ctx = sh.ctx;
        const int kv_dim = n_kv * hd, n_layers = 2, layer = 1;
        const int blocks = (ctx + bt - 1) / bt;
        const size_t block_elems = size_t(bt) * kv_dim, elem = kv_type == TensorType::F16 ? 2 : 4;
        std::vector<uint8_t> pool(size_t(2 * blocks + 3) * n_layers * 2 * block_elems * elem);
        std::vector<int32_t> table;
        for (int i = 0; i < blocks; ++i) table.push_back(2 * blocks + 2 - 2 * i);  // scattered, descending
        KvLayerView view{pool.data(), kv_type, layer, n_layers, bt, kv_dim, hd};
        auto k = random_floats(size_t(ctx * kv_dim), 10), v = random_floats(size_t(ctx * kv_dim), 11);
        AttentionSeq all{table.data(), 0, ctx, 0};
        b->kv_store(view, {&all, 1}, k.data(), v.data());
        // Query the last 3 positions (a prefill chunk) against the cache.
        auto q = random_floats(size_t(3 * n_head * hd), 12);
        std::vector<float> out(q.size());
        AttentionSeq chunk{table.data(), ctx - 3, 3, 0};
        const float scale = 1.0f / std::sqrt(float(hd));
        const AttentionShape shape{n_head, n_kv, hd, scale};
        b->attention(view, {&chunk, 1}, shape, q.data(), out.data());
        for (int i = 0; i < 3; ++i)
          for (int h = 0; h < n_head; ++h) {
            const int pos = ctx - 3 + i, g = h / (n_head / n_kv);
            std::vector<double> s(size_t(pos + 1));
            double mx = -1e30, sum = 0;
            for (int p = 0; p <= pos; ++p) {
              double d = 0;
              for (int j = 0; j < hd; ++j) d += double(q[size_t((i * n_head + h) * hd + j)]) * k[size_t(p * kv_dim + g * hd + j)];
              s[size_t(p)] = d * scale;
              mx = std::max(mx, s[size_t(p)]);
            }
            for (auto& e : s) sum += e = std::exp(e - mx);
            for (int j = 0; j < hd; ++j) {
              double ref = 0;
              for (int p = 0; p <= pos; ++p) ref += s[size_t(p)] / sum * v[size_t(p * kv_dim + g * hd + j)];
              const double tol = kv_type == TensorType::F16 ? 3e-3 : 1e-5;
              ASSERT_NEAR(out[size_t((i * n_head + h) * hd + j)], ref, tol)
                  << isa << " kv " << tensor_type_info(kv_type).name << " hd " << hd << " bt " << bt << " head " << h;
            }
          }
      }
}

TEST(TensorTypes, HalfAndBfloatConversionsRoundToNearestEven) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = fp16_to_fp32(uint16_t(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_fp16(f), h) << h;  // every half survives a round trip
  }
  EXPECT_EQ(fp32_to_fp16(65520.f), 0x7c00);  // rounds to infinity
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_fp32(0x3f80), 1.0f);
  EXPECT_EQ(fp32_to_bf16(1.00390625f), 0x3f80);  // tie to even
}

}  // namespace
}  // namespace tutti
