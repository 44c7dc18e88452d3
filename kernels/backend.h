// The device-neutral kernel interface. The pipeline (model, KV cache, sampler) calls only
// this; kernels/cpu/ implements it today and kernels/cuda/ will sit beside it. All pointers
// passed in are in the backend's own memory (host memory for the CPU backend), allocated with
// Backend::alloc or, for weights, made resident with Backend::upload_weights.
//
// Threading: a Backend is driven by one thread at a time (the executor's step loop); it may
// use its own worker threads inside a call. Calls are synchronous on the CPU backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "kernels/tensor_type.h"

namespace tutti {

enum class Device { Cpu, Cuda };

// A weight matrix as GGUF stores it: `rows` output rows, each `cols` input values laid out
// contiguously in `type`'s block format (ne = [cols, rows]).
struct MatrixView {
  TensorType type = TensorType::F32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes() const { return tutti::row_bytes(type, size_t(cols)); }
  const uint8_t* row(int64_t r) const { return static_cast<const uint8_t*>(data) + size_t(r) * row_bytes(); }
};

// One product y[t][r] = sum_k W[r][k] * x[t][k] for every token t of the shared input x.
struct MatmulTask {
  MatrixView weight;
  float* out;  // [n_tokens][weight.rows], row-major
};

// One layer's slice of the paged KV cache. Storage is a pool of blocks; block b holds, for
// every layer l, K then V for `block_tokens` positions of one sequence:
//   K(b, l) at element ((b * n_layers + l) * 2 + 0) * block_tokens * kv_dim
//   V(b, l) at element ((b * n_layers + l) * 2 + 1) * block_tokens * kv_dim
// Within a block, each KV head h owns one contiguous run of block_tokens * head_dim values,
// starting at h * block_tokens * head_dim:
//   V: position-major, value (p, i) at (p % block_tokens) * head_dim + i
//   K: dimension-major, value (p, i) at i * block_tokens + p % block_tokens
// (K transposed so that one vector load gives one dimension of consecutive positions, and
// scores come out of FMAs without horizontal sums).
struct KvLayerView {
  void* pool = nullptr;
  TensorType type = TensorType::F16;  // F32 or F16
  int layer = 0;
  int n_layers = 0;
  int block_tokens = 0;
  int kv_dim = 0;    // n_kv_heads * head_dim
  int head_dim = 0;

  // Element offset of head h's run in block `block`; which: 0 = K, 1 = V.
  size_t run(size_t block, int which, int h) const {
    return ((block * size_t(n_layers) + size_t(layer)) * 2 + size_t(which)) * size_t(block_tokens) * size_t(kv_dim) +
           size_t(h) * size_t(block_tokens) * size_t(head_dim);
  }
  size_t k_index(size_t block, int h, int p, int i) const {
    return run(block, 0, h) + size_t(i) * size_t(block_tokens) + size_t(p % block_tokens);
  }
  size_t v_index(size_t block, int h, int p, int i) const {
    return run(block, 1, h) + size_t(p % block_tokens) * size_t(head_dim) + size_t(i);
  }
};

// One sequence's rows of the current ragged batch: tokens [row, row + n_tokens) of the batch
// are positions [first_pos, first_pos + n_tokens) of the sequence, whose KV blocks are
// block_table[0 .. ceil((first_pos + n_tokens) / block_tokens)).
struct AttentionSeq {
  const int32_t* block_table = nullptr;
  int32_t first_pos = 0;
  int32_t n_tokens = 0;
  int32_t row = 0;
};

enum class RopeLayout : uint8_t { Normal, Neox };

struct RopeParams {
  int n_rot = 0;                         // rotated values per head (even, <= head_dim)
  float base = 10000.f;
  float freq_scale = 1.f;                // linear rope scaling (1 / factor)
  RopeLayout layout = RopeLayout::Normal;
  const float* freq_factors = nullptr;   // n_rot/2 divisors, backend memory (Llama 3.1+ rope_freqs), or none
};

struct AttentionShape {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  float scale = 1.f;  // usually 1 / sqrt(head_dim)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string describe() const = 0;  // e.g. "cpu avx512-vnni, 2 threads"
  virtual int threads() const = 0;

  // The memory bandwidth a decode step is measured against, in bytes per second: the CPU's
  // read bandwidth (its threads streaming a buffer far larger than the caches); on a GPU the
  // device-to-device copy bandwidth (bytes read plus bytes written per second).
  virtual double measure_bandwidth() = 0;

  // Memory in the backend's space. alloc never returns null (throws std::bad_alloc).
  virtual void* alloc(size_t bytes) = 0;
  virtual void free(void* p) = 0;
  // Makes a weight matrix resident; the CPU backend uses the mmap in place (no copy).
  virtual MatrixView upload_weights(const MatrixView& host) = 0;
  virtual void copy_to_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void copy_to_device(void* dst, const void* src, size_t bytes) = 0;

  // y = W x for each task; all tasks share the input x[n_tokens][cols] (cols equal).
  virtual void matmul(std::span<const MatmulTask> tasks, const float* x, int n_tokens) = 0;
  // out[t] = table row ids[t], converted to f32.
  virtual void embed(const MatrixView& table, const int32_t* ids, int n, float* out) = 0;
  // y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, for n rows of dim values.
  virtual void rms_norm(const float* x, const float* weight, float* y, int n, int dim, float eps) = 0;
  // Rotates the first n_rot values of each head of each row, pair i (i < n_rot/2) by
  //   freq_scale * (positions[t] * base^(-2i / n_rot)) / freq_factors[i]
  // with the angle built as ggml builds it (repeated multiplication in float). The pairs are
  // (x[2i], x[2i+1]) in the Normal layout (GGUF llama) and (x[i], x[i + n_rot/2]) in Neox
  // (qwen2, qwen3).
  virtual void rope(float* x, const int32_t* positions, int n, int n_heads, int head_dim, const RopeParams& p) = 0;
  // x[t] += bias for n rows of dim values (attention biases).
  virtual void add_rows(float* x, const float* bias, int n, int dim) = 0;
  // Writes rows of k and v ([n_rows][kv_dim]) into the cache at their sequences' positions.
  virtual void kv_store(const KvLayerView& kv, std::span<const AttentionSeq> seqs, const float* k,
                        const float* v) = 0;
  // A hint that matmul() over these weights comes next (same grouping as the call): a
  // backend reading weights from slower memory may start fetching the first rows each of
  // its workers will take, so the call does not begin with a cold stream. Optional.
  virtual void prefetch_weights(std::span<const MatrixView> weights) {}
  // A hint, given before a layer's other work, that attention over these sequences' cached
  // K/V follows: a backend whose cache sits behind slower memory may start fetching it so
  // the transfer overlaps the work in between. Optional; no effect on results.
  virtual void prefetch_attention(const KvLayerView& kv, std::span<const AttentionSeq> seqs) {}
  // Causal attention of q ([rows][n_head * head_dim]) over each sequence's cached K/V up to
  // and including each row's position; out has q's shape.
  virtual void attention(const KvLayerView& kv, std::span<const AttentionSeq> seqs, const AttentionShape& shape,
                         const float* q, float* out) = 0;
  // out = silu(gate) * up, element-wise over n values.
  virtual void swiglu(const float* gate, const float* up, float* out, size_t n) = 0;
  // dst[i] = src row rows[i], for n rows of dim floats (device to device).
  virtual void gather_rows(const float* src, const int32_t* rows, int n, int dim, float* dst) = 0;
  // x += y over n values.
  virtual void add(float* x, const float* y, size_t n) = 0;
};

struct CpuBackendOptions {
  int threads = 0;          // 0: one per available core
  std::string isa = "auto"; // "auto", "avx512", "avx2", "scalar" (forces a kernel set; tests use it)
};
std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& options = {});

}  // namespace tutti
