#include "pipeline/kv_cache.h"

#include <stdexcept>

namespace tutti {

Expected<std::unique_ptr<PagedKvCache>> PagedKvCache::create(Backend& backend, const KvCacheConfig& c) {
  if (c.type != TensorType::F16 && c.type != TensorType::F32) return Error{"KV cache type must be f16 or f32"};
  if (c.n_layers <= 0 || c.kv_dim <= 0 || c.block_tokens <= 0 || c.head_dim <= 0 || c.kv_dim % c.head_dim != 0)
    return Error{"KV cache shape is invalid"};
  const size_t elem = c.type == TensorType::F16 ? 2 : 4;
  const size_t block_bytes = size_t(c.n_layers) * 2 * size_t(c.block_tokens) * size_t(c.kv_dim) * elem;
  const size_t n_blocks = c.pool_bytes / block_bytes;
  if (n_blocks == 0)
    return Error{"KV cache pool of " + std::to_string(c.pool_bytes) + " bytes cannot hold one block of " +
                 std::to_string(block_bytes) + " bytes"};
  if (n_blocks > size_t(INT32_MAX)) return Error{"KV cache pool is too large"};
  void* pool = backend.alloc(n_blocks * block_bytes);
  return std::unique_ptr<PagedKvCache>(new PagedKvCache(backend, c, int(n_blocks), block_bytes, pool));
}

PagedKvCache::PagedKvCache(Backend& backend, const KvCacheConfig& config, int n_blocks, size_t block_bytes, void* pool)
    : backend_(backend), config_(config), n_blocks_(n_blocks), block_bytes_(block_bytes), pool_(pool) {
  free_.reserve(size_t(n_blocks));
  for (int b = n_blocks - 1; b >= 0; --b) free_.push_back(b);  // hand out low ids first
}

PagedKvCache::~PagedKvCache() { backend_.free(pool_); }

int PagedKvCache::blocks_needed(int64_t seq, int n_tokens) const {
  const int want = (n_tokens + config_.block_tokens - 1) / config_.block_tokens;
  auto it = tables_.find(seq);
  const int have = it == tables_.end() ? 0 : int(it->second.blocks.size());
  return want > have ? want - have : 0;
}

Status PagedKvCache::reserve(int64_t seq, int n_tokens) {
  if (n_tokens < 0) return Error{"negative sequence length"};
  const int need = blocks_needed(seq, n_tokens);
  if (need > int(free_.size()))
    return Error{"KV cache exhausted: sequence needs " + std::to_string(need) + " more blocks of " +
                 std::to_string(config_.block_tokens) + " tokens, " + std::to_string(free_.size()) + " of " +
                 std::to_string(n_blocks_) + " are free"};
  auto& table = tables_[seq].blocks;
  for (int i = 0; i < need; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return Status::Ok();
}

void PagedKvCache::release(int64_t seq) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  for (auto it2 = it->second.blocks.rbegin(); it2 != it->second.blocks.rend(); ++it2) free_.push_back(*it2);
  tables_.erase(it);
}

const std::vector<int32_t>& PagedKvCache::block_table(int64_t seq) const {
  auto it = tables_.find(seq);
  if (it == tables_.end()) throw std::logic_error("block_table of unknown sequence");
  return it->second.blocks;
}

int PagedKvCache::length(int64_t seq) const {
  auto it = tables_.find(seq);
  return it == tables_.end() ? 0 : it->second.length;
}

void PagedKvCache::set_length(int64_t seq, int n_tokens) {
  auto it = tables_.find(seq);
  if (it == tables_.end() || n_tokens > int(it->second.blocks.size()) * config_.block_tokens)
    throw std::logic_error("set_length beyond the reserved blocks");
  it->second.length = n_tokens;
}

int PagedKvCache::capacity(int64_t seq) const {
  auto it = tables_.find(seq);
  return it == tables_.end() ? 0 : int(it->second.blocks.size()) * config_.block_tokens;
}

KvLayerView PagedKvCache::layer_view(int layer) const {
  return KvLayerView{pool_, config_.type, layer, config_.n_layers, config_.block_tokens, config_.kv_dim, config_.head_dim};
}

}  // namespace tutti
