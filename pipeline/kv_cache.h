// Paged KV cache: a pool of fixed-size blocks, sized in bytes at start-up, and a block table
// per sequence. Sequences grow block by block; a finished sequence returns its blocks to the
// free list for reuse. Running out of blocks is an Error for the caller to handle (the
// scheduler preempts or refuses work), never a crash.
//
// Ownership: the cache owns the pool memory (allocated through the Backend) and the block
// tables. It is used by one thread (the executor's), like the Backend.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "kernels/backend.h"
#include "pipeline/expected.h"

namespace tutti {

struct KvCacheConfig {
  int n_layers = 0;
  int kv_dim = 0;            // n_head_kv * head_dim
  int head_dim = 0;
  int block_tokens = 16;     // positions per block
  TensorType type = TensorType::F16;  // F16 (default, half the memory) or F32
  size_t pool_bytes = 256u << 20;
};

class PagedKvCache {
 public:
  // Errors if the pool cannot hold even one block.
  static Expected<std::unique_ptr<PagedKvCache>> create(Backend& backend, const KvCacheConfig& config);
  ~PagedKvCache();
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  const KvCacheConfig& config() const { return config_; }
  int total_blocks() const { return n_blocks_; }
  int free_blocks() const { return int(free_.size()); }
  size_t block_bytes() const { return block_bytes_; }
  int max_tokens() const { return n_blocks_ * config_.block_tokens; }

  // Makes room for `n_tokens` positions in total for `seq` (creating it if new). On error
  // nothing changes: the sequence keeps the blocks it had.
  Status reserve(int64_t seq, int n_tokens);
  // Blocks needed to grow `seq` to n_tokens positions (0 if it already has them).
  int blocks_needed(int64_t seq, int n_tokens) const;
  void release(int64_t seq);  // frees all of seq's blocks; unknown seq is a no-op
  bool contains(int64_t seq) const { return tables_.count(seq) != 0; }
  const std::vector<int32_t>& block_table(int64_t seq) const;
  int capacity(int64_t seq) const;  // positions reserved for seq
  // Positions of seq whose K/V have been written (the forward pass advances it).
  int length(int64_t seq) const;
  void set_length(int64_t seq, int n_tokens);  // requires n_tokens <= capacity(seq)

  KvLayerView layer_view(int layer) const;

 private:
  PagedKvCache(Backend& backend, const KvCacheConfig& config, int n_blocks, size_t block_bytes, void* pool);

  Backend& backend_;
  KvCacheConfig config_;
  int n_blocks_;
  size_t block_bytes_;
  void* pool_;
  std::vector<int32_t> free_;  // stack of free block ids
  struct Sequence {
    std::vector<int32_t> blocks;
    int length = 0;
  };
  std::unordered_map<int64_t, Sequence> tables_;
};

}  // namespace tutti
