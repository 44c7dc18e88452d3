// Every kernel of every instruction set this CPU has, against plain double-precision
// references on random data. A kernel set the CPU lacks is reported as skipped, with why.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
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

// Widths the type's blocks divide: odd numbers of 32-blocks, and of 256-value super-blocks.
std::vector<int64_t> widths_for(TensorType type) {
  if (is_super_block(type)) return {256, 768, 1024};
  return {32, 96, 160, 1024};
}

// Row-major weights of `type`, quantized from random values with ggml's reference quantizer.
std::vector<uint8_t> random_weights(TensorType type, int64_t rows, int64_t cols, uint32_t seed) {
  const auto wf = random_floats(size_t(rows * cols), seed, 0.1f);
  std::vector<uint8_t> w(row_bytes(type, size_t(cols)) * size_t(rows));
  for (int64_t r = 0; r < rows; ++r)
    quantize_row(type, wf.data() + r * cols, w.data() + size_t(r) * row_bytes(type, size_t(cols)), size_t(cols));
  return w;
}

// Token counts that take every path: 1-2 (decode tiles), 3-7 (wider decode tiles), 8 and
// more (GEMM, one and several 16-token groups, with remainders).
constexpr int kTokenCounts[] = {1, 2, 3, 5, 9, 17, 35};

TEST_P(MatmulTest, MatchesDoublePrecisionReference) {
  const auto [isa, type] = GetParam();
  std::unique_ptr<Backend> backend;
  try {
    backend = make_cpu_backend({2, isa});
  } catch (const std::exception& e) {
    GTEST_SKIP() << "kernel set '" << isa << "' unavailable here: " << e.what();
  }
  for (int64_t cols : widths_for(type)) {
    for (int tokens : kTokenCounts) {
      const int64_t rows = 37;  // not a multiple of any tile or panel
      const auto w = random_weights(type, rows, cols, 1);
      const auto x = random_floats(size_t(tokens * cols), 2);
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
          const bool quant = is_quantized(type);
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
    for (const TensorTypeInfo& t : all_tensor_types()) v.push_back({isa, t.type});
  return v;
}

INSTANTIATE_TEST_SUITE_P(AllIsas, MatmulTest, testing::ValuesIn(matmul_cases()), [](const auto& info) {
  return info.param.isa + "_" + std::string(tensor_type_info(info.param.type).name);
});

// Every kernel set has a product for every tensor type, at every size.
TEST(Matmul, EveryKernelSetCoversEveryType) {
  std::vector<const cpu::MatmulKernels*> sets = {&cpu::scalar_kernels()};
  if (cpu::avx2_kernels()) sets.push_back(cpu::avx2_kernels());
  if (cpu::avx512_kernels()) sets.push_back(cpu::avx512_kernels());
  for (const cpu::MatmulKernels* k : sets)
    for (const TensorTypeInfo& t : all_tensor_types())
      for (int tokens : kTokenCounts) {
        cpu::InputFormat input;
        EXPECT_NE(k->kernel(t.type, tokens, input), nullptr) << k->isa << " " << t.name << " at " << tokens << " tokens";
      }
}

// The quantized kernels of every ISA agree with the scalar ones to float rounding, on both
// paths: they all compute the same integer block sums of the same quantized activations.
TEST(Matmul, QuantizedIsasAgreeWithScalar) {
  auto scalar = make_cpu_backend({1, "scalar"});
  for (const char* isa : {"avx2", "avx512"}) {
    std::unique_ptr<Backend> b;
    try {
      b = make_cpu_backend({2, isa});
    } catch (const std::exception&) {
      continue;
    }
    for (const TensorTypeInfo& info : all_tensor_types()) {
      const TensorType type = info.type;
      if (!is_quantized(type)) continue;
      // The AVX-512 GEMM of the 32-value types is bf16 (see MatchesDoublePrecisionReference).
      const bool exact_gemm = std::string(isa) == "avx2" || type == TensorType::Q8_0 || is_super_block(type);
      const int64_t rows = 19, cols = is_super_block(type) ? 768 : 288;
      const auto w = random_weights(type, rows, cols, 3);
      for (int tokens : {6, 20}) {
        if (tokens >= 8 && !exact_gemm) continue;
        const auto x = random_floats(size_t(tokens * cols), 4);
        std::vector<float> y1(size_t(rows * tokens)), y2(size_t(rows * tokens));
        const MatmulTask t1{MatrixView{type, w.data(), rows, cols}, y1.data()};
        const MatmulTask t2{MatrixView{type, w.data(), rows, cols}, y2.data()};
        scalar->matmul({&t1, 1}, x.data(), tokens);
        b->matmul({&t2, 1}, x.data(), tokens);
        for (size_t i = 0; i < y1.size(); ++i)
          ASSERT_NEAR(y1[i], y2[i], 1e-4 * (1 + std::fabs(y1[i]))) << isa << " " << info.name << " tokens " << tokens << " at " << i;
      }
    }
  }
}

// Every kernel set quantizes activations to Q8_K exactly as the reference (ggml's) does, in
// rows and in lanes: the integer sums of both paths rest on it.
TEST(Matmul, Q8KActivationsAreBitExactInEveryLayout) {
  const int tokens = 19;
  const int64_t cols = 768;
  auto x = random_floats(size_t(tokens) * cols, 31, 2.f);
  for (int64_t i = 0; i < cols; ++i) x[size_t(cols + i)] = 0.f;  // an all-zero row
  x[size_t(2 * cols + 5)] = 9.f;                                  // a positive maximum
  x[size_t(3 * cols + 7)] = -9.f, x[size_t(3 * cols + 9)] = 9.f;  // a tie: the first one counts
  std::vector<BlockQ8_K> ref(size_t(tokens) * size_t(cols / 256));
  for (int t = 0; t < tokens; ++t) quantize_row_q8_k(x.data() + size_t(t) * cols, ref.data() + size_t(t) * (cols / 256), size_t(cols));
  std::vector<const cpu::MatmulKernels*> sets = {&cpu::scalar_kernels()};
  if (cpu::avx2_kernels() && cpu::cpu_has_avx2()) sets.push_back(cpu::avx2_kernels());
  if (cpu::avx512_kernels() && cpu::cpu_has_avx512()) sets.push_back(cpu::avx512_kernels());
  for (const cpu::MatmulKernels* k : sets) {
    cpu::Q8KInput rows;
    cpu::resize_q8k_input(rows, tokens, cols);
    (k->quantize_k_rows ? k->quantize_k_rows : cpu::quantize_q8k_rows)(x.data(), rows, 0, tokens);
    ASSERT_EQ(std::memcmp(rows.blocks.data(), ref.data(), ref.size() * sizeof(BlockQ8_K)), 0) << k->isa << " rows";
    if (!k->quantize_k_lanes) continue;
    cpu::Q8KLanes lanes;
    cpu::resize_q8k_lanes(lanes, tokens, cols);
    for (int g = 0; g < lanes.n_groups; ++g) k->quantize_k_lanes(x.data(), lanes, g);
    for (int t = 0; t < tokens; ++t)
      for (int64_t s = 0; s < cols / 256; ++s) {
        const BlockQ8_K& b = ref[size_t(t) * size_t(cols / 256) + size_t(s)];
        const size_t g = size_t(t / 16), lane = size_t(t % 16);
        ASSERT_EQ(lanes.d[(g * size_t(lanes.n_super) + size_t(s)) * 16 + lane], b.d) << k->isa << " token " << t;
        for (int i = 0; i < 8; ++i) {
          const int32_t pair = lanes.bsums[((g * size_t(lanes.n_super) + size_t(s)) * 8 + size_t(i)) * 16 + lane];
          ASSERT_EQ(int16_t(pair & 0xffff), b.bsums[2 * i]);
          ASSERT_EQ(int16_t(pair >> 16), b.bsums[2 * i + 1]);
        }
        for (int v = 0; v < 256; ++v) {
          const int64_t k_col = s * 256 + v;
          ASSERT_EQ(lanes.q[((g * size_t(cols / 4) + size_t(k_col / 4)) * 16 + lane) * 4 + size_t(k_col % 4)], b.qs[v]);
        }
      }
  }
}

// The reference conversions: quantizing and dequantizing stays within the type's step size
// of the original, and quantizing what was dequantized reproduces the values (the formats'
// bit layouts are each other's inverse).
TEST(TensorTypes, QuantizeDequantizeRoundTrips) {
  for (const TensorTypeInfo& info : all_tensor_types()) {
    const size_t n = 1024;
    const auto x = random_floats(n, 21, 0.5f);
    std::vector<uint8_t> q(row_bytes(info.type, n)), q2(q.size());
    std::vector<float> back(n), again(n);
    quantize_row(info.type, x.data(), q.data(), n);
    dequantize_row(info.type, q.data(), back.data(), n);
    double err = 0, ref = 0;
    for (size_t i = 0; i < n; ++i) err += double(back[i] - x[i]) * (back[i] - x[i]), ref += double(x[i]) * x[i];
    // Relative RMS error bounds: roughly 2^-(bits) of each format, with room.
    const double bound = info.type == TensorType::Q2_K ? 0.5 : info.type == TensorType::Q3_K ? 0.25 : is_quantized(info.type) ? 0.12 : 1e-2;
    EXPECT_LT(std::sqrt(err / ref), bound) << info.name;
    quantize_row(info.type, back.data(), q2.data(), n);
    dequantize_row(info.type, q2.data(), again.data(), n);
    double drift = 0;
    for (size_t i = 0; i < n; ++i) drift += double(again[i] - back[i]) * (again[i] - back[i]);
    // Q3_K's scale search is not idempotent: on values already on its grid it can pick the
    // mirrored scale (its grid -4..3 is asymmetric) and land one step off.
    EXPECT_LT(std::sqrt(drift / ref), info.type == TensorType::Q3_K ? 0.1 : 0.02) << info.name << ": requantizing moved values";
  }
}

// Hand-built blocks with known values: the bit positions the GGUF formats define.
TEST(TensorTypes, BlockLayoutsDecodeAsGgufDefines) {
  {  // Q4_K: d = 1, dmin = 0.5; sub-block 5 (values 160..191) has scale 3 and min 2.
    BlockQ4_K b{};
    b.d = fp32_to_fp16(1.f);
    b.dmin = fp32_to_fp16(0.5f);
    // j = 5 >= 4: scale = (q[9] & 15) | (q[1] >> 6) << 4, min = (q[9] >> 4) | (q[5] >> 6) << 4.
    b.scales[9] = 3 | 2 << 4;
    b.qs[32 * 2 + 7] = 0x90;  // value 64*2 + 32 + 7 = 167: high nibble 9
    float y[256];
    dequantize_row(TensorType::Q4_K, &b, y, 256);
    EXPECT_FLOAT_EQ(y[167], 1.f * 3 * 9 - 0.5f * 2);
    EXPECT_FLOAT_EQ(y[166], -1.f);  // quant 0: only the min
    EXPECT_FLOAT_EQ(y[10], 0.f);    // sub-block 0: scale and min 0
  }
  {  // Q6_K: d = 0.25, scale of sub-block 9 (values 144..159) = -2; value 150 = 128 + 22.
    BlockQ6_K b{};
    b.d = fp32_to_fp16(0.25f);
    b.scales[9] = -2;
    b.ql[64 + 22] = 0x05;          // low nibble 5
    b.qh[32 + 22] = 0x02;          // top bits 2 -> quant 5 | 2 << 4 = 37, minus 32 = 5
    float y[256];
    dequantize_row(TensorType::Q6_K, &b, y, 256);
    EXPECT_FLOAT_EQ(y[150], 0.25f * -2 * 5);
  }
  {  // Q5_0: value 20 = high nibble of qs[4] plus bit 20 of qh, minus 16.
    BlockQ5_0 b{};
    b.d = fp32_to_fp16(2.f);
    b.qs[4] = 0x30;
    const uint32_t qh = 1u << 20;
    std::memcpy(b.qh, &qh, 4);
    float y[32];
    dequantize_row(TensorType::Q5_0, &b, y, 32);
    EXPECT_FLOAT_EQ(y[20], 2.f * ((3 | 16) - 16));
    EXPECT_FLOAT_EQ(y[4], 2.f * -16);
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
  // RoPE: pair i rotated by freq_scale * pos * base^(-2i/n_rot) / factor_i, only the first
  // n_rot values; pairs (2i, 2i+1) in the Normal layout, (i, i + n_rot/2) in Neox.
  const int heads = 2, hd = 16, n_rot = 8;
  const int32_t pos[n] = {0, 5, 1000};
  const float factors[n_rot / 2] = {1.f, 1.5f, 4.f, 8.f};
  for (RopeLayout layout : {RopeLayout::Normal, RopeLayout::Neox})
    for (bool scaled : {false, true}) {
      auto q = random_floats(n * heads * hd, 7);
      auto q0 = q;
      const RopeParams p{n_rot, 10000.f, scaled ? 0.25f : 1.f, layout, scaled ? factors : nullptr};
      b->rope(q.data(), pos, n, heads, hd, p);
      for (int t = 0; t < n; ++t)
        for (int h = 0; h < heads; ++h) {
          const float* a = &q0[size_t((t * heads + h) * hd)];
          const float* r = &q[size_t((t * heads + h) * hd)];
          for (int i = n_rot; i < hd; ++i) ASSERT_EQ(r[i], a[i]);
          for (int i = 0; i < n_rot / 2; ++i) {
            const int i0 = layout == RopeLayout::Normal ? 2 * i : i, i1 = layout == RopeLayout::Normal ? 2 * i + 1 : i + n_rot / 2;
            const double th = (scaled ? 0.25 / factors[i] : 1.0) * pos[t] * std::pow(10000.0, -2.0 * i / n_rot);
            ASSERT_NEAR(r[i0], a[i0] * std::cos(th) - a[i1] * std::sin(th), 2e-3) << "layout " << int(layout);
            ASSERT_NEAR(r[i1], a[i0] * std::sin(th) + a[i1] * std::cos(th), 2e-3) << "layout " << int(layout);
          }
        }
    }
  {  // add_rows
    auto xb = random_floats(n * dim, 14), bias = random_floats(dim, 15);
    auto ref = xb;
    b->add_rows(xb.data(), bias.data(), n, dim);
    for (int t = 0; t < n; ++t)
      for (int i = 0; i < dim; ++i) ASSERT_FLOAT_EQ(xb[t * dim + i], ref[t * dim + i] + bias[i]);
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
