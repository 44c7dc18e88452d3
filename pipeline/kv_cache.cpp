#include "pipeline/kv_cache.h"

#include <algorithm>
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
  info_.resize(size_t(n_blocks));
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
  if (need > free_blocks())
    return Error{"KV cache exhausted: sequence needs " + std::to_string(need) + " more blocks of " +
                 std::to_string(config_.block_tokens) + " tokens, " + std::to_string(free_blocks()) + " of " +
                 std::to_string(n_blocks_) + " are free"};
  auto& table = tables_[seq].blocks;
  for (int i = 0; i < need; ++i) table.push_back(take_block());
  return Status::Ok();
}

int32_t PagedKvCache::take_block() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {  // evict: the caller checked free_blocks(), so an idle cached block exists
    b = idle_cached_.front();
    idle_cached_.pop_front();
    BlockInfo& old = info_[size_t(b)];
    by_hash_.erase(old.hash);
    old.published = false;
    old.tokens.clear();
  }
  info_[size_t(b)].refs = 1;
  return b;
}

void PagedKvCache::release(int64_t seq) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  // Last block first: of a released chain, its tail is evicted before its head (a cached
  // block is only useful while the ones before it are cached too).
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) {
    BlockInfo& info = info_[size_t(*b)];
    if (--info.refs > 0) continue;
    if (info.published) {
      idle_cached_.push_back(*b);
      info.idle = std::prev(idle_cached_.end());
    } else {
      free_.push_back(*b);
    }
  }
  tables_.erase(it);
}

namespace {
// Chain hash of a block: its tokens mixed into the hash of everything before it (FNV-1a
// over the ids, then a 64-bit finaliser).
uint64_t chain_hash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = parent ^ 0xcbf29ce484222325ull;
  for (int32_t t : tokens) {
    h ^= uint32_t(t);
    h *= 0x100000001b3ull;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}
}  // namespace

std::vector<int32_t> PagedKvCache::matching_prefix(std::span<const int32_t> tokens, uint64_t* chain) const {
  std::vector<int32_t> blocks;
  *chain = 0;
  if (!config_.prefix_cache || tokens.empty()) return blocks;
  const size_t bt = size_t(config_.block_tokens);
  const size_t max_blocks = (tokens.size() - 1) / bt;  // at least one token left to compute
  for (size_t i = 0; i < max_blocks; ++i) {
    const auto block_tokens = tokens.subspan(i * bt, bt);
    const uint64_t h = chain_hash(*chain, block_tokens);
    auto hit = by_hash_.find(h);
    if (hit == by_hash_.end()) break;
    const BlockInfo& info = info_[size_t(hit->second)];
    if (info.parent != *chain || !std::equal(block_tokens.begin(), block_tokens.end(), info.tokens.begin())) break;
    blocks.push_back(hit->second);
    *chain = h;
  }
  return blocks;
}

int PagedKvCache::adopt_prefix(int64_t seq, std::span<const int32_t> tokens) {
  if (!config_.prefix_cache || tokens.empty()) return 0;
  auto existing = tables_.find(seq);
  if (existing != tables_.end() && !existing->second.blocks.empty()) return existing->second.length;
  Sequence adopted;
  adopted.blocks = matching_prefix(tokens, &adopted.chain);
  if (adopted.blocks.empty()) return 0;
  for (int32_t b : adopted.blocks)
    if (BlockInfo& info = info_[size_t(b)]; info.refs++ == 0) idle_cached_.erase(info.idle);
  adopted.published = int(adopted.blocks.size());
  adopted.length = int(adopted.blocks.size()) * config_.block_tokens;
  const int length = adopted.length;
  tables_[seq] = std::move(adopted);
  return length;
}

int PagedKvCache::cached_prefix(std::span<const int32_t> tokens) const {
  uint64_t chain = 0;
  return int(matching_prefix(tokens, &chain).size()) * config_.block_tokens;
}

void PagedKvCache::publish(int64_t seq, std::span<const int32_t> tokens, int computed) {
  if (!config_.prefix_cache) return;
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  Sequence& s = it->second;
  const size_t bt = size_t(config_.block_tokens);
  const size_t full = std::min({size_t(std::max(computed, 0)), tokens.size(), size_t(s.length)}) / bt;
  for (size_t i = size_t(s.published); i < full && i < s.blocks.size(); ++i) {
    const auto block_tokens = tokens.subspan(i * bt, bt);
    const uint64_t h = chain_hash(s.chain, block_tokens);
    BlockInfo& info = info_[size_t(s.blocks[i])];
    // The same prefix may be cached already (computed by another sequence at the same time):
    // this block then stays private and is freed when seq ends.
    if (!info.published && !by_hash_.count(h)) {
      info.published = true;
      info.hash = h;
      info.parent = s.chain;
      info.tokens.assign(block_tokens.begin(), block_tokens.end());
      by_hash_[h] = s.blocks[i];
    }
    s.chain = h;
    s.published = int(i + 1);
  }
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
