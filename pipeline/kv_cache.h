// Paged KV cache: a pool of fixed-size blocks, sized in bytes at start-up, and a block table
// per sequence. Sequences grow block by block; a finished sequence returns its blocks to the
// free list for reuse. Running out of blocks is an Error for the caller to handle (the
// scheduler preempts or refuses work), never a crash.
//
// Prefix cache: a full block whose K/V are written is published under a hash of its tokens
// and of every token before it (a chain, so equal hashes mean equal prefixes; the tokens are
// compared too). A new sequence whose prompt starts with published blocks adopts them
// instead of computing them again: a conversation's next turn, the same system prompt, or a
// user's speech prefilled while they were still talking (the realtime session). Blocks are
// reference-counted; an adopted block is shared read-only (a sequence writes only at or
// after its own length, and adoption stops at a block boundary). A published block nobody
// uses stays cached until its room is needed: free_blocks() counts it, and reserve() takes
// free blocks first, then the least recently released cached ones.
//
// Ownership: the cache owns the pool memory (allocated through the Backend) and the block
// tables. It is used by one thread (the executor's), like the Backend.
#pragma once

#include <cstdint>
#include <list>
#include <span>
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
  bool prefix_cache = true;  // publish and adopt full blocks of equal prefixes
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
  // Blocks reserve() can hand out: never used, plus cached ones no sequence holds.
  int free_blocks() const { return int(free_.size() + idle_cached_.size()); }
  int cached_blocks() const { return int(idle_cached_.size()); }  // published, held by no sequence
  size_t block_bytes() const { return block_bytes_; }
  int max_tokens() const { return n_blocks_ * config_.block_tokens; }

  // Makes room for `n_tokens` positions in total for `seq` (creating it if new). On error
  // nothing changes: the sequence keeps the blocks it had.
  Status reserve(int64_t seq, int n_tokens);
  // Blocks needed to grow `seq` to n_tokens positions (0 if it already has them).
  int blocks_needed(int64_t seq, int n_tokens) const;
  // Drops seq's hold on its blocks: shared and published ones stay for others, the rest are
  // free. Unknown seq is a no-op.
  void release(int64_t seq);
  // For a sequence that holds no blocks yet: adopts the published blocks that hold a prefix
  // of `tokens` (whole blocks, leaving at least one token to compute so the sequence has
  // logits) and returns how many positions it now has cached (its length). 0 when nothing
  // matches or the prefix cache is off.
  int adopt_prefix(int64_t seq, std::span<const int32_t> tokens);
  // How many positions of `tokens` adopt_prefix would find cached now, without adopting.
  int cached_prefix(std::span<const int32_t> tokens) const;
  // Publishes seq's full blocks among its first `computed` positions of `tokens` (their K/V
  // are written), so later sequences can adopt them.
  void publish(int64_t seq, std::span<const int32_t> tokens, int computed);
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
  int32_t take_block();  // a free block, else the least recently used idle cached one
  // The published blocks that hold a prefix of `tokens`, in order, leaving at least one token
  // to compute; `chain` gets the chain hash through the last of them.
  std::vector<int32_t> matching_prefix(std::span<const int32_t> tokens, uint64_t* chain) const;

  std::vector<int32_t> free_;  // stack of free block ids (never published, or evicted)
  struct Sequence {
    std::vector<int32_t> blocks;
    int length = 0;
    int published = 0;   // leading blocks whose chain hash is known (adopted or published)
    uint64_t chain = 0;  // chain hash through block `published - 1`
  };
  std::unordered_map<int64_t, Sequence> tables_;
  // Per block: sequences holding it, and for published blocks their place in the cache.
  struct BlockInfo {
    int refs = 0;
    bool published = false;
    uint64_t hash = 0, parent = 0;      // chain hash of this block and of the one before it
    std::vector<int32_t> tokens;        // its tokens (checked on adoption: no false hits)
    std::list<int32_t>::iterator idle;  // into idle_cached_ while refs == 0
  };
  std::vector<BlockInfo> info_;
  std::unordered_map<uint64_t, int32_t> by_hash_;
  std::list<int32_t> idle_cached_;  // published blocks with no holder; front is evicted first
};

}  // namespace tutti
