// The tensor-parallel sharding math on the CPU: a layer computed as R shards (each with its
// own heads, KV cache slice and FFN units) whose partial outputs are summed, as the
// all-reduce after the attention output and FFN down projections does, equals the
// unsharded layer. F32 and Q8_0 weights; 1, 2 and 4 ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "pipeline/tensor_parallel.h"
#include "test_support.h"

namespace tutti {
namespace {

struct Dims {
  int D = 128, H = 8, Hkv = 4, hd = 16, F = 256, T = 5;
};

using test::random_floats;

// A random matrix in `type`, owning its bytes.
struct OwnedMatrix {
  std::vector<uint8_t> bytes;
  MatrixView view;
  OwnedMatrix(TensorType type, int64_t rows, int64_t cols, uint32_t seed) {
    const auto f = random_floats(size_t(rows * cols), seed, 0.08f);
    const size_t rb = row_bytes(type, size_t(cols));
    bytes.resize(rb * size_t(rows));
    for (int64_t r = 0; r < rows; ++r) quantize_row(type, f.data() + r * cols, bytes.data() + size_t(r) * rb, size_t(cols));
    view = MatrixView{type, bytes.data(), rows, cols};
  }
};

std::vector<float> product(Backend& b, const MatrixView& w, const std::vector<float>& x, int T) {
  std::vector<float> y(size_t(T) * size_t(w.rows));
  const MatmulTask task{w, y.data()};
  b.matmul({&task, 1}, x.data(), T);
  return y;
}

// The attention block's output projection (before the residual add) for T tokens at
// positions 0..T-1, with `heads` query and `kv_heads` KV heads of the given weights.
std::vector<float> attention_block(Backend& b, const LayerWeights& w, int heads, int kv_heads, const Dims& d,
                                   const std::vector<float>& xn) {
  auto q = product(b, w.attn_q, xn, d.T), k = product(b, w.attn_k, xn, d.T), v = product(b, w.attn_v, xn, d.T);
  std::vector<int32_t> pos(size_t(d.T));
  for (int i = 0; i < d.T; ++i) pos[size_t(i)] = i;
  const RopeParams rope{d.hd, 10000.f};
  b.rope(q.data(), pos.data(), d.T, heads, d.hd, rope);
  b.rope(k.data(), pos.data(), d.T, kv_heads, d.hd, rope);
  const int bt = 4, blocks = (d.T + bt - 1) / bt, kv_dim = kv_heads * d.hd;
  std::vector<float> pool(size_t(blocks) * 2 * bt * kv_dim);
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  for (int i = 0; i < blocks; ++i) table[size_t(i)] = i;
  const KvLayerView view{pool.data(), TensorType::F32, 0, 1, bt, kv_dim, d.hd};
  const AttentionSeq seq{table.data(), 0, d.T, 0};
  b.kv_store(view, {&seq, 1}, k.data(), v.data());
  std::vector<float> att(q.size());
  b.attention(view, {&seq, 1}, AttentionShape{heads, kv_heads, d.hd, 1.0f / std::sqrt(float(d.hd))}, q.data(), att.data());
  return product(b, w.attn_output, att, d.T);
}

std::vector<float> ffn_block(Backend& b, const LayerWeights& w, const Dims& d, const std::vector<float>& xn) {
  auto gate = product(b, w.ffn_gate, xn, d.T), up = product(b, w.ffn_up, xn, d.T);
  b.swiglu(gate.data(), up.data(), gate.data(), gate.size());
  return product(b, w.ffn_down, gate, d.T);
}

// The layer: x + attention(norm(x)), then + ffn(norm(...)); with R ranks each block's output
// is the sum of the ranks' partial outputs.
std::vector<float> run_layer(Backend& b, const LayerWeights& full, const Dims& d, int ranks, const std::vector<float>& x,
                             const std::vector<float>& norm_w) {
  LlamaHparams h;
  h.n_embd = uint32_t(d.D), h.n_head = uint32_t(d.H), h.n_head_kv = uint32_t(d.Hkv), h.head_dim = uint32_t(d.hd), h.n_ff = uint32_t(d.F);
  auto plan = plan_tensor_parallel(h, ranks);
  EXPECT_TRUE(plan) << plan.error().message;
  std::vector<LayerShard> shards;
  for (int r = 0; r < ranks; ++r) shards.push_back(shard_layer(full, *plan, r));
  std::vector<float> h1 = x, xn(x.size());
  b.rms_norm(h1.data(), norm_w.data(), xn.data(), d.T, d.D, 1e-5f);
  for (int r = 0; r < ranks; ++r) {  // all-reduce: sum of partials onto the residual
    const auto part = attention_block(b, shards[size_t(r)].weights, plan->heads, plan->kv_heads, d, xn);
    b.add(h1.data(), part.data(), part.size());
  }
  std::vector<float> h2 = h1;
  b.rms_norm(h1.data(), norm_w.data(), xn.data(), d.T, d.D, 1e-5f);
  for (int r = 0; r < ranks; ++r) {
    const auto part = ffn_block(b, shards[size_t(r)].weights, d, xn);
    b.add(h2.data(), part.data(), part.size());
  }
  return h2;
}

TEST(TensorParallel, ShardsSummedEqualTheUnshardedLayer) {
  const Dims d;
  auto b = make_cpu_backend({2});
  const auto x = random_floats(size_t(d.T * d.D), 1, 1.f), norm_w = random_floats(size_t(d.D), 2, 1.f);
  for (TensorType type : {TensorType::F32, TensorType::Q8_0}) {
    OwnedMatrix wq(type, d.H * d.hd, d.D, 3), wk(type, d.Hkv * d.hd, d.D, 4), wv(type, d.Hkv * d.hd, d.D, 5),
        wo(type, d.D, d.H * d.hd, 6), gate(type, d.F, d.D, 7), up(type, d.F, d.D, 8), down(type, d.D, d.F, 9);
    const LayerWeights full{wq.view, wk.view, wv.view, wo.view, gate.view, up.view, down.view};
    // Unsharded: the full weights straight through the same blocks.
    std::vector<float> ref = x, xn(x.size());
    b->rms_norm(ref.data(), norm_w.data(), xn.data(), d.T, d.D, 1e-5f);
    const auto attn = attention_block(*b, full, d.H, d.Hkv, d, xn);
    b->add(ref.data(), attn.data(), attn.size());
    b->rms_norm(ref.data(), norm_w.data(), xn.data(), d.T, d.D, 1e-5f);
    const auto ffn = ffn_block(*b, full, d, xn);
    b->add(ref.data(), ffn.data(), ffn.size());
    double moved = 0;  // the layer must change x noticeably, or the comparison proves little
    for (size_t i = 0; i < ref.size(); ++i) moved = std::max(moved, double(std::fabs(ref[i] - x[i])));
    EXPECT_GT(moved, 0.05);
    for (int ranks : {1, 2, 4}) {
      const auto got = run_layer(*b, full, d, ranks, x, norm_w);
      for (size_t i = 0; i < ref.size(); ++i)
        ASSERT_NEAR(got[i], ref[i], 1e-4 * (1 + std::fabs(ref[i]))) << tensor_type_info(type).name << " ranks " << ranks << " at " << i;
    }
  }
}

TEST(TensorParallel, PlansThatDoNotDivideAreRefusedWithTheReason) {
  LlamaHparams h;
  h.n_embd = 2048, h.n_head = 32, h.n_head_kv = 8, h.head_dim = 64, h.n_ff = 5632;
  auto two = plan_tensor_parallel(h, 2);
  ASSERT_TRUE(two);
  EXPECT_EQ(two->heads, 16);
  EXPECT_EQ(two->kv_heads, 4);
  EXPECT_EQ(two->ffn, 2816);
  auto three = plan_tensor_parallel(h, 3);
  ASSERT_FALSE(three);
  EXPECT_NE(three.error().message.find("32 attention heads do not split over 3"), std::string::npos);
  auto sixteen = plan_tensor_parallel(h, 16);
  ASSERT_FALSE(sixteen);
  EXPECT_NE(sixteen.error().message.find("KV heads"), std::string::npos);
  std::vector<uint8_t> storage;
  const std::vector<float> m(64 * 4, 1.f);
  EXPECT_THROW(column_slice(MatrixView{TensorType::Q8_0, m.data(), 4, 64}, 16, 32, storage), std::out_of_range);
}

}  // namespace
}  // namespace tutti
