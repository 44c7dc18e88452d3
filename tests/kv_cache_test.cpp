// Paged KV cache: block accounting, reuse after release, exhaustion as an error.
#include <gtest/gtest.h>

#include "pipeline/kv_cache.h"

namespace tutti {
namespace {

TEST(KvCache, AllocatesBlocksPerSequenceAndReusesThem) {
  auto backend = make_cpu_backend({1});
  KvCacheConfig c;
  c.n_layers = 2;
  c.kv_dim = 8;
  c.head_dim = 4;
  c.block_tokens = 4;
  c.type = TensorType::F32;
  const size_t block = 2 * 2 * 4 * 8 * 4;
  c.pool_bytes = block * 5 + 7;  // a partial block is not counted
  auto kv = std::move(PagedKvCache::create(*backend, c)).value();
  EXPECT_EQ(kv->total_blocks(), 5);
  EXPECT_EQ(kv->block_bytes(), block);
  ASSERT_TRUE(kv->reserve(1, 9).ok());  // 3 blocks
  EXPECT_EQ(kv->block_table(1).size(), 3u);
  EXPECT_EQ(kv->capacity(1), 12);
  ASSERT_TRUE(kv->reserve(1, 12).ok());  // still 3
  EXPECT_EQ(kv->free_blocks(), 2);
  ASSERT_TRUE(kv->reserve(2, 8).ok());
  EXPECT_EQ(kv->free_blocks(), 0);
  Status s = kv->reserve(3, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("exhausted"), std::string::npos);
  EXPECT_FALSE(kv->contains(3));
  const auto table1 = kv->block_table(1);
  kv->release(1);
  EXPECT_EQ(kv->free_blocks(), 3);
  ASSERT_TRUE(kv->reserve(3, 12).ok());
  auto reused = kv->block_table(3);
  std::sort(reused.begin(), reused.end());
  auto before = table1;
  std::sort(before.begin(), before.end());
  EXPECT_EQ(reused, before);
  kv->release(42);  // unknown: no-op
}

// The prefix cache: full blocks are published with their chain of tokens, adopted by a
// sequence whose tokens start the same way (shared, counted), kept after their owner ends,
// and evicted (tail first) only when the room is needed.
TEST(KvCache, PublishedPrefixBlocksAreAdoptedSharedAndEvictedLast) {
  auto backend = make_cpu_backend({1});
  KvCacheConfig c;
  c.n_layers = 1, c.kv_dim = 4, c.head_dim = 4, c.block_tokens = 4, c.type = TensorType::F32;
  c.pool_bytes = size_t(2 * 4 * 4 * 4) * 6;  // 6 blocks
  auto kv = std::move(PagedKvCache::create(*backend, c)).value();
  std::vector<int32_t> a(14);
  for (int i = 0; i < 14; ++i) a[size_t(i)] = 100 + i;
  ASSERT_TRUE(kv->reserve(1, 14).ok());  // 4 blocks
  kv->set_length(1, 14);
  kv->publish(1, a, 10);  // K/V written for 10 positions: 2 full blocks
  const auto table1 = kv->block_table(1);
  // A sequence with the same first 9 tokens adopts the first 2 blocks (8 positions), shared.
  std::vector<int32_t> b(a.begin(), a.begin() + 9);
  EXPECT_EQ(kv->adopt_prefix(2, b), 8);
  EXPECT_EQ(kv->length(2), 8);
  EXPECT_EQ(kv->block_table(2), std::vector<int32_t>(table1.begin(), table1.begin() + 2));
  EXPECT_EQ(kv->free_blocks(), 2);  // shared blocks are not counted twice
  // At least one token is left to compute: 8 tokens adopt one block, not two.
  EXPECT_EQ(kv->adopt_prefix(3, std::span<const int32_t>(a.data(), 8)), 4);
  kv->release(3);
  // A different token in the second block: only the first is shared.
  std::vector<int32_t> d = b;
  d[5] = 7;
  EXPECT_EQ(kv->adopt_prefix(4, d), 4);
  kv->release(4);
  // The same tokens at a different place in the chain are not a prefix.
  std::vector<int32_t> shifted(a.begin() + 4, a.end());
  EXPECT_EQ(kv->adopt_prefix(5, shifted), 0);
  EXPECT_FALSE(kv->contains(5));
  // Owners end: published blocks stay cached (and count as free), the rest are free.
  kv->release(1);
  kv->release(2);
  EXPECT_EQ(kv->free_blocks(), 6);
  EXPECT_EQ(kv->cached_blocks(), 2);
  EXPECT_EQ(kv->adopt_prefix(6, a), 8);
  kv->release(6);
  // Room is needed: the free blocks go first, then cached ones, the chain's tail first.
  ASSERT_TRUE(kv->reserve(7, 16).ok());  // 4 blocks: all never-published ones
  EXPECT_EQ(kv->cached_blocks(), 2);
  ASSERT_TRUE(kv->reserve(8, 4).ok());  // evicts the tail block
  EXPECT_EQ(kv->cached_blocks(), 1);
  EXPECT_EQ(kv->adopt_prefix(9, a), 4);
  kv->release(9);
  EXPECT_FALSE(kv->reserve(10, 8).ok());  // 1 free (cached) block, 2 needed: nothing changes
  EXPECT_EQ(kv->cached_blocks(), 1);
  // Off: nothing is adopted.
  c.prefix_cache = false;
  auto off = std::move(PagedKvCache::create(*backend, c)).value();
  ASSERT_TRUE(off->reserve(1, 14).ok());
  off->set_length(1, 14);
  off->publish(1, a, 14);
  off->release(1);
  EXPECT_EQ(off->adopt_prefix(2, a), 0);
  EXPECT_EQ(off->cached_blocks(), 0);
}

TEST(KvCache, RejectsAPoolTooSmallForOneBlock) {
  auto backend = make_cpu_backend({1});
  KvCacheConfig c;
  c.n_layers = 32;
  c.kv_dim = 1024;
  c.head_dim = 64;
  c.pool_bytes = 1000;
  auto kv = PagedKvCache::create(*backend, c);
  ASSERT_FALSE(kv);
  EXPECT_NE(kv.error().message.find("cannot hold one block"), std::string::npos);
}

}  // namespace
}  // namespace tutti
