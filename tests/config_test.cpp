// The engine configuration file.
#include <gtest/gtest.h>

#include "pipeline/config_file.h"
#include "test_support.h"

namespace tutti {
namespace {

TEST(Config, ShippedFileParsesToTheDefaults) {
  auto c = load_engine_config(std::string(TUTTI_SOURCE_DIR) + "/config/tutti.conf");
  ASSERT_TRUE(c) << c.error().message;
  const EngineConfig d;
  EXPECT_EQ(c->kv_cache_bytes, d.kv_cache_bytes);
  EXPECT_EQ(c->kv_cache_type, d.kv_cache_type);
  EXPECT_EQ(c->threads, d.threads);
  EXPECT_EQ(c->prefill_chunk, d.prefill_chunk);
}

TEST(Config, ErrorsNameTheLine) {
  auto c = parse_engine_config("threads = 2\nkv_cache_mb = lots\n", "t.conf");
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("t.conf:2"), std::string::npos);
  auto u = parse_engine_config("thread = 2\n", "t.conf");
  ASSERT_FALSE(u);
  EXPECT_NE(u.error().message.find("unknown key 'thread'"), std::string::npos);
  auto ok = parse_engine_config("# comment\n threads=3 # trailing\nkv_cache_type = f32\n", "t.conf");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->threads, 3);
  EXPECT_EQ(ok->kv_cache_type, "f32");
}

}  // namespace
}  // namespace tutti
