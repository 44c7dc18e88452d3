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
