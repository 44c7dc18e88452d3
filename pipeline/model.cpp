#include "pipeline/model.h"

#include <cmath>

namespace tutti {

Expected<std::unique_ptr<Model>> Model::load(const std::string& path, Backend& backend) {
  auto file = GgufFile::open(path);
  if (!file) return file.error();
  return from_file(std::move(file).value(), backend);
}

Expected<std::unique_ptr<Model>> Model::from_file(std::shared_ptr<const GgufFile> file, Backend& backend) {
  auto config = read_model_config(*file);
  if (!config) return config.error();
  std::unique_ptr<Model> m(new Model(std::move(file), std::move(config).value(), backend));
  // A device may run out of memory while the weights go resident (the CUDA backend throws
  // with the sizes): that is this load's error, not a crash.
  try {
    if (Status s = m->bind_weights(); !s) return s.error();
  } catch (const std::exception& e) {
    return Error{m->file_->path() + ": " + e.what()};
  }
  return m;
}

Model::Model(std::shared_ptr<const GgufFile> file, ModelConfig config, Backend& backend)
    : file_(std::move(file)), config_(std::move(config)), backend_(backend) {}

Model::~Model() {
  for (float* p : owned_) backend_.free(p);
  for (auto& b : work_) backend_.free(b.data);
}

Status Model::bind_weights() {
  const LlamaHparams& h = config_.hparams;
  auto matrix = [&](const std::string& name) {
    const GgufTensorInfo* t = file_->find_tensor(name);
    return backend_.upload_weights(MatrixView{t->type, t->data, int64_t(t->ne[1]), int64_t(t->ne[0])});
  };
  // A 1-D tensor (norm, bias, frequency factors) as f32 in backend memory; null if absent.
  auto vec = [&](const std::string& name) -> float* {
    const GgufTensorInfo* t = file_->find_tensor(name);
    if (!t) return nullptr;
    std::vector<float> host(size_t(t->ne[0]));
    dequantize_row(t->type, t->data, host.data(), host.size());
    auto* dev = static_cast<float*>(backend_.alloc(host.size() * 4));
    backend_.copy_to_device(dev, host.data(), host.size() * 4);
    owned_.push_back(dev);
    return dev;
  };
  token_embd_ = matrix("token_embd.weight");
  output_ = h.tied_output ? token_embd_ : matrix("output.weight");
  output_norm_ = vec("output_norm.weight");
  rope_freqs_ = h.rope_freqs ? vec("rope_freqs.weight") : nullptr;
  rope_ = RopeParams{int(h.n_rot), h.rope_freq_base, h.rope_freq_scale, h.block.rope, rope_freqs_};
  layers_.resize(h.n_layer);
  for (uint32_t i = 0; i < h.n_layer; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    Layer& l = layers_[i];
    l.attn_q = matrix(b + "attn_q.weight");
    l.attn_k = matrix(b + "attn_k.weight");
    l.attn_v = matrix(b + "attn_v.weight");
    l.attn_output = matrix(b + "attn_output.weight");
    l.ffn_gate = matrix(b + "ffn_gate.weight");
    l.ffn_up = matrix(b + "ffn_up.weight");
    l.ffn_down = matrix(b + "ffn_down.weight");
    l.attn_norm = vec(b + "attn_norm.weight");
    l.ffn_norm = vec(b + "ffn_norm.weight");
    if (h.qkv_bias) {
      l.q_bias = vec(b + "attn_q.bias");
      l.k_bias = vec(b + "attn_k.bias");
      l.v_bias = vec(b + "attn_v.bias");
    }
    if (h.block.qk_norm) {
      l.q_norm = vec(b + "attn_q_norm.weight");
      l.k_norm = vec(b + "attn_k_norm.weight");
    }
  }
  return Status::Ok();
}

size_t Model::weight_bytes_per_step() const {
  size_t n = output_.row_bytes() * size_t(output_.rows);
  for (const Layer& l : layers_)
    for (const MatrixView* m : {&l.attn_q, &l.attn_k, &l.attn_v, &l.attn_output, &l.ffn_gate, &l.ffn_up, &l.ffn_down})
      n += m->row_bytes() * size_t(m->rows);
  return n;
}

size_t Model::total_weight_bytes() const {
  size_t n = 0;
  for (auto& t : file_->tensors()) n += t.n_bytes;
  return n;
}

Expected<std::unique_ptr<PagedKvCache>> Model::make_kv_cache(size_t pool_bytes, TensorType type, int block_tokens, bool prefix_cache) const {
  KvCacheConfig c;
  c.n_layers = int(hparams().n_layer);
  c.kv_dim = int(hparams().n_head_kv * hparams().head_dim);
  c.head_dim = int(hparams().head_dim);
  c.block_tokens = block_tokens;
  c.type = type;
  c.pool_bytes = pool_bytes;
  c.prefix_cache = prefix_cache;
  return PagedKvCache::create(backend_, c);
}

float* Model::buffer(size_t index, size_t floats) {
  if (work_.size() <= index) work_.resize(index + 1);
  Buffer& b = work_[index];
  if (b.floats < floats) {
    backend_.free(b.data);
    b.data = static_cast<float*>(backend_.alloc(floats * 4));
    b.floats = floats;
  }
  return b.data;
}

Status Model::forward(const Batch& batch, PagedKvCache& kv, StepLogits& out) {
  const LlamaHparams& h = config_.hparams;
  const int T = batch.total_tokens();
  if (T == 0) return Error{"empty batch"};

  // Validate everything before touching the cache.
  for (const SequenceChunk& c : batch.chunks) {
    if (c.tokens.empty()) return Error{"sequence " + std::to_string(c.seq_id) + " has an empty chunk"};
    for (int32_t id : c.tokens)
      if (id < 0 || uint32_t(id) >= h.n_vocab)
        return Error{"token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(h.n_vocab)};
    if (c.start_pos < 0 || c.start_pos > kv.length(c.seq_id))
      return Error{"sequence " + std::to_string(c.seq_id) + " starts at position " + std::to_string(c.start_pos) +
                   " but only " + std::to_string(kv.length(c.seq_id)) + " positions are cached"};
    for (const SequenceChunk& other : batch.chunks)
      if (&other != &c && other.seq_id == c.seq_id) return Error{"sequence appears twice in one batch"};
  }
  int blocks = 0;
  for (const SequenceChunk& c : batch.chunks) blocks += kv.blocks_needed(c.seq_id, c.start_pos + int(c.tokens.size()));
  if (blocks > kv.free_blocks())
    return Error{"KV cache exhausted: step needs " + std::to_string(blocks) + " blocks, " +
                 std::to_string(kv.free_blocks()) + " free"};
  for (const SequenceChunk& c : batch.chunks)
    if (Status s = kv.reserve(c.seq_id, c.start_pos + int(c.tokens.size())); !s) return s;

  // Flatten the ragged batch.
  positions_.clear();
  ids_.clear();
  attn_seqs_.clear();
  logit_rows_.clear();
  out.row_begin.clear();
  for (const SequenceChunk& c : batch.chunks) {
    AttentionSeq s;
    s.block_table = kv.block_table(c.seq_id).data();
    s.first_pos = c.start_pos;
    s.n_tokens = int32_t(c.tokens.size());
    s.row = int32_t(ids_.size());
    attn_seqs_.push_back(s);
    out.row_begin.push_back(int(logit_rows_.size()));
    for (size_t i = 0; i < c.tokens.size(); ++i) {
      if (c.logits_for_all || i + 1 == c.tokens.size()) logit_rows_.push_back(int32_t(ids_.size()));
      ids_.push_back(c.tokens[i]);
      positions_.push_back(c.start_pos + int32_t(i));
    }
  }

  const size_t D = h.n_embd, Q = size_t(h.n_head) * h.head_dim, KV = size_t(h.n_head_kv) * h.head_dim, F = h.n_ff;
  float* x = buffer(0, T * D);
  float* n = buffer(1, T * D);
  float* q = buffer(2, T * Q);
  float* k = buffer(3, T * KV);
  float* v = buffer(4, T * KV);
  float* att = buffer(5, T * Q);
  float* o = buffer(6, T * D);
  float* gate = buffer(7, T * F);
  float* up = buffer(8, T * F);

  backend_.embed(token_embd_, ids_.data(), T, x);
  const AttentionShape shape{int(h.n_head), int(h.n_head_kv), int(h.head_dim), 1.0f / std::sqrt(float(h.head_dim))};
  for (uint32_t li = 0; li < h.n_layer; ++li) {
    const Layer& l = layers_[li];
    const KvLayerView view = kv.layer_view(int(li));
    // Hints to the backend of what comes next (on the CPU: start DRAM fetches early).
    const MatrixView qkv_w[] = {l.attn_q, l.attn_k, l.attn_v}, wo_w[] = {l.attn_output},
                     gate_up_w[] = {l.ffn_gate, l.ffn_up}, down_w[] = {l.ffn_down};
    backend_.prefetch_weights(qkv_w);
    backend_.prefetch_attention(view, attn_seqs_);
    backend_.rms_norm(x, l.attn_norm, n, T, int(D), h.rms_eps);
    const MatmulTask qkv[] = {{l.attn_q, q}, {l.attn_k, k}, {l.attn_v, v}};
    backend_.matmul(qkv, n, T);
    if (l.q_bias) {
      backend_.add_rows(q, l.q_bias, T, int(Q));
      backend_.add_rows(k, l.k_bias, T, int(KV));
      backend_.add_rows(v, l.v_bias, T, int(KV));
    }
    if (l.q_norm) {  // per head: rows of head_dim values
      backend_.rms_norm(q, l.q_norm, q, T * int(h.n_head), int(h.head_dim), h.rms_eps);
      backend_.rms_norm(k, l.k_norm, k, T * int(h.n_head_kv), int(h.head_dim), h.rms_eps);
    }
    backend_.rope(q, positions_.data(), T, int(h.n_head), int(h.head_dim), rope_);
    backend_.rope(k, positions_.data(), T, int(h.n_head_kv), int(h.head_dim), rope_);
    backend_.kv_store(view, attn_seqs_, k, v);
    backend_.prefetch_weights(wo_w);
    backend_.attention(view, attn_seqs_, shape, q, att);
    const MatmulTask wo[] = {{l.attn_output, o}};
    backend_.matmul(wo, att, T);
    backend_.add(x, o, T * D);

    backend_.prefetch_weights(gate_up_w);
    backend_.rms_norm(x, l.ffn_norm, n, T, int(D), h.rms_eps);
    const MatmulTask gate_up[] = {{l.ffn_gate, gate}, {l.ffn_up, up}};
    backend_.matmul(gate_up, n, T);
    backend_.prefetch_weights(down_w);
    backend_.swiglu(gate, up, gate, T * F);
    const MatmulTask down[] = {{l.ffn_down, o}};
    backend_.matmul(down, gate, T);
    backend_.add(x, o, T * D);
  }

  // Final norm and output projection only for the rows whose logits are wanted.
  const int R = int(logit_rows_.size());
  float* sel = buffer(9, size_t(R) * D);
  backend_.gather_rows(x, logit_rows_.data(), R, int(D), sel);
  backend_.rms_norm(sel, output_norm_, n, R, int(D), h.rms_eps);
  float* logits = buffer(10, size_t(R) * h.n_vocab);
  const MatmulTask head[] = {{output_, logits}};
  backend_.matmul(head, n, R);
  out.n_vocab = int(h.n_vocab);
  out.data.resize(size_t(R) * h.n_vocab);
  backend_.copy_to_host(out.data.data(), logits, out.data.size() * 4);

  for (const SequenceChunk& c : batch.chunks) kv.set_length(c.seq_id, c.start_pos + int(c.tokens.size()));
  return Status::Ok();
}

}  // namespace tutti
