// The Llama-family transformer over a device-neutral Backend: loads a GGUF file's weights
// (resident on the backend, in place on the CPU) and runs the forward pass over a ragged
// batch with a paged KV cache. What varies between architectures (biases, q/k norms, the
// rotary layout and frequency factors) comes from the file's BlockDescription.
//
// Ownership: a Model owns its GgufFile (the mmap), its backend-side norm vectors and its
// activation workspace; it borrows the Backend, which must outlive it. forward() is called
// by one thread at a time (the executor's); the weights are read-only and shareable.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "pipeline/batch.h"
#include "pipeline/expected.h"
#include "pipeline/gguf.h"
#include "pipeline/kv_cache.h"
#include "pipeline/model_config.h"

namespace tutti {

class Model {
 public:
  static Expected<std::unique_ptr<Model>> load(const std::string& path, Backend& backend);
  static Expected<std::unique_ptr<Model>> from_file(std::shared_ptr<const GgufFile> file, Backend& backend);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }
  const LlamaHparams& hparams() const { return config_.hparams; }
  const GgufFile& file() const { return *file_; }
  std::shared_ptr<const GgufFile> file_ptr() const { return file_; }
  Backend& backend() const { return backend_; }
  // Bytes of weights one decode step reads (every matrix once; the embedding row is tiny).
  size_t weight_bytes_per_step() const;
  size_t total_weight_bytes() const;

  // A KV cache shaped for this model.
  Expected<std::unique_ptr<PagedKvCache>> make_kv_cache(size_t pool_bytes, TensorType type = TensorType::F16,
                                                        int block_tokens = 16, bool prefix_cache = true) const;

  // Runs one step: reserves KV blocks, writes K/V of every token, returns the logits that
  // the batch asks for. Errors (bad token id, position gap, KV exhausted) leave the cache's
  // written lengths unchanged.
  Status forward(const Batch& batch, PagedKvCache& kv, StepLogits& out);

 private:
  Model(std::shared_ptr<const GgufFile> file, ModelConfig config, Backend& backend);
  Status bind_weights();
  float* buffer(size_t index, size_t floats);

  // One block's weights; the vectors the block description may leave out are null then.
  struct Layer {
    MatrixView attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down;
    float* attn_norm = nullptr;
    float* ffn_norm = nullptr;
    float* q_bias = nullptr;  // BlockDescription::qkv_bias
    float* k_bias = nullptr;
    float* v_bias = nullptr;
    float* q_norm = nullptr;  // BlockDescription::qk_norm
    float* k_norm = nullptr;
  };

  std::shared_ptr<const GgufFile> file_;
  ModelConfig config_;
  Backend& backend_;
  MatrixView token_embd_, output_;
  float* output_norm_ = nullptr;
  float* rope_freqs_ = nullptr;  // frequency factors (rope_freqs.weight), or null
  RopeParams rope_;
  std::vector<Layer> layers_;
  std::vector<float*> owned_;  // backend allocations for norms

  // Activation workspace, grown on demand (backend memory).
  struct Buffer {
    float* data = nullptr;
    size_t floats = 0;
  };
  std::vector<Buffer> work_;
  std::vector<int32_t> positions_, ids_;
  std::vector<AttentionSeq> attn_seqs_;
  std::vector<int32_t> logit_rows_;
};

}  // namespace tutti
