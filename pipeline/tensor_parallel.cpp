#include "pipeline/tensor_parallel.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace tutti {

Expected<TensorParallelPlan> plan_tensor_parallel(const LlamaHparams& h, int ranks) {
  if (ranks < 1) return Error{"tensor parallelism needs at least one rank"};
  const std::string n = std::to_string(ranks);
  if (h.n_head % uint32_t(ranks) != 0) return Error{std::to_string(h.n_head) + " attention heads do not split over " + n + " GPUs"};
  if (h.n_head_kv % uint32_t(ranks) != 0) return Error{std::to_string(h.n_head_kv) + " KV heads do not split over " + n + " GPUs"};
  if (h.n_ff % (32u * uint32_t(ranks)) != 0)
    return Error{"an FFN width of " + std::to_string(h.n_ff) + " does not split over " + n + " GPUs in whole 32-value blocks"};
  if ((h.n_head / uint32_t(ranks)) * h.head_dim % 32 != 0)
    return Error{"a rank's attention width is not a whole number of 32-value blocks"};
  TensorParallelPlan p;
  p.ranks = ranks;
  p.head_dim = int(h.head_dim);
  p.heads = int(h.n_head) / ranks;
  p.kv_heads = int(h.n_head_kv) / ranks;
  p.ffn = int(h.n_ff) / ranks;
  return p;
}

MatrixView row_slice(const MatrixView& m, int64_t begin, int64_t count) {
  if (begin < 0 || count < 0 || begin + count > m.rows) throw std::out_of_range("row slice outside the matrix");
  MatrixView v = m;
  v.data = m.row(begin);
  v.rows = count;
  return v;
}

MatrixView column_slice(const MatrixView& m, int64_t begin, int64_t count, std::vector<uint8_t>& storage) {
  const TensorTypeInfo info = tensor_type_info(m.type);
  if (begin < 0 || count <= 0 || begin + count > m.cols || begin % info.block_values || count % info.block_values)
    throw std::out_of_range("column slice outside the matrix or not on block boundaries");
  const size_t offset = row_bytes(m.type, size_t(begin)), bytes = row_bytes(m.type, size_t(count));
  storage.resize(bytes * size_t(m.rows));
  for (int64_t r = 0; r < m.rows; ++r) std::memcpy(storage.data() + size_t(r) * bytes, m.row(r) + offset, bytes);
  return MatrixView{m.type, storage.data(), m.rows, count};
}

LayerShard shard_layer(const LayerWeights& full, const TensorParallelPlan& p, int rank) {
  const int64_t q = int64_t(p.heads) * p.head_dim, kv = int64_t(p.kv_heads) * p.head_dim, f = p.ffn;
  LayerShard s;
  s.weights.attn_q = row_slice(full.attn_q, rank * q, q);
  s.weights.attn_k = row_slice(full.attn_k, rank * kv, kv);
  s.weights.attn_v = row_slice(full.attn_v, rank * kv, kv);
  s.weights.ffn_gate = row_slice(full.ffn_gate, rank * f, f);
  s.weights.ffn_up = row_slice(full.ffn_up, rank * f, f);
  s.weights.attn_output = column_slice(full.attn_output, rank * q, q, s.output_cols);
  s.weights.ffn_down = column_slice(full.ffn_down, rank * f, f, s.down_cols);
  return s;
}

}  // namespace tutti
