// Tensor parallelism for one executor driving several GPUs (Megatron-style): each rank holds
// a slice of every layer, computes a partial result, and an all-reduce (a sum) after the
// attention output and the FFN down projections restores the full activations.
//   attention: rank r owns query heads [r*Hq/R, (r+1)*Hq/R) and KV heads [r*Hkv/R, ...):
//              the matching rows of wq, wk, wv, its own slice of the KV cache, and the
//              matching columns of wo (its partial sum of the output projection);
//   FFN:       rank r owns FFN units [r*F/R, (r+1)*F/R): rows of gate and up, columns of
//              down.
// Norms, embeddings and the output head are replicated. Plain logic, no devices: the CUDA
// executor uploads each rank's shard to its GPU and sums over NCCL; tests prove the math
// on the CPU (shards computed separately and summed equal the unsharded layer).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "pipeline/expected.h"
#include "pipeline/model_config.h"

namespace tutti {

struct TensorParallelPlan {
  int ranks = 1;
  int head_dim = 0;
  int heads = 0, kv_heads = 0, ffn = 0;  // per rank
};

// Refuses a split that does not divide evenly: query and KV heads by ranks, and the FFN
// width into slices of whole 32-value quantization blocks.
Expected<TensorParallelPlan> plan_tensor_parallel(const LlamaHparams& h, int ranks);

// Rows [begin, begin + count) of a matrix: a view into the same storage.
MatrixView row_slice(const MatrixView& m, int64_t begin, int64_t count);
// Columns [begin, begin + count) of every row, copied into `storage` (whole blocks for
// quantized types: begin and count must be multiples of 32 there).
MatrixView column_slice(const MatrixView& m, int64_t begin, int64_t count, std::vector<uint8_t>& storage);

// One layer's weights, whole or one rank's shard of them.
struct LayerWeights {
  MatrixView attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down;
};
struct LayerShard {
  LayerWeights weights;                      // row slices view the full matrices
  std::vector<uint8_t> output_cols, down_cols;  // storage of the two column slices
};
LayerShard shard_layer(const LayerWeights& full, const TensorParallelPlan& plan, int rank);

}  // namespace tutti
