// The settings file: the shipped config/default.toml states the defaults, and every kind of
// mistake is an error that names the setting.
#include <gtest/gtest.h>

#include "config/settings.h"
#include "test_support.h"

namespace tutti {
namespace {

TEST(Settings, ShippedFileStatesTheDefaults) {
  auto s = load_settings(std::string(TUTTI_SOURCE_DIR) + "/config/default.toml");
  ASSERT_TRUE(s) << s.error().message;
  const Settings d;
  EXPECT_EQ(s->model_path, d.model_path);
  EXPECT_EQ(s->kv_cache_mb, d.kv_cache_mb);
  EXPECT_EQ(s->kv_cache_type, d.kv_cache_type);
  EXPECT_EQ(s->max_batch, d.max_batch);
  EXPECT_EQ(s->step_token_budget, d.step_token_budget);
  EXPECT_EQ(s->pacing, d.pacing);
  EXPECT_EQ(s->low_watermark_ms, d.low_watermark_ms);
  EXPECT_EQ(s->host, d.host);
  EXPECT_EQ(s->port, d.port);
  EXPECT_EQ(s->max_body_bytes, d.max_body_bytes);
  EXPECT_EQ(s->caf_workers, d.caf_workers);
  EXPECT_EQ(s->client_window, d.client_window);
  EXPECT_EQ(s->read_timeout_s, d.read_timeout_s);
  EXPECT_EQ(s->write_timeout_s, d.write_timeout_s);
  EXPECT_EQ(s->send_buffer_bytes, d.send_buffer_bytes);
}

TEST(Settings, MistakesNameTheSetting) {
  auto err = [](const std::string& text) {
    auto s = parse_settings(text, "t.toml");
    return s ? std::string() : s.error().message;
  };
  EXPECT_NE(err("[server]\nport = 70000\n").find("server.port must be between 0 and 65535"), std::string::npos);
  EXPECT_NE(err("[server]\nport = \"80\"\n").find("server.port must be an integer"), std::string::npos);
  EXPECT_NE(err("[kv_cache]\ntype = \"q8\"\n").find("kv_cache.type must be one of f16, f32"), std::string::npos);
  EXPECT_NE(err("[scheduler]\nmax_btach = 4\n").find("unknown setting scheduler.max_btach"), std::string::npos);
  EXPECT_NE(err("[cache]\nsize_mb = 4\n").find("unknown section [cache]"), std::string::npos);
  EXPECT_NE(err("[scheduler]\npacing = 1\n").find("scheduler.pacing must be true or false"), std::string::npos);
  EXPECT_NE(err("[realtime]\nlow_watermark_ms = 700\n").find("low_watermark_ms must be below"), std::string::npos);
  EXPECT_NE(err("[server]\nread_timeout_s = 0\n").find("server.read_timeout_s must be between"), std::string::npos);
  EXPECT_NE(err("[scheduler]\nclient_window = -1\n").find("scheduler.client_window must be between"), std::string::npos);
  EXPECT_NE(err("[server\nport = 1").find("t.toml:1"), std::string::npos);
  auto ok = parse_settings("[scheduler]\nmax_batch = 8\n[server]\nport = 9000\n", "t.toml");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->max_batch, 8);
  EXPECT_EQ(ok->port, 9000);
  EXPECT_EQ(ok->kv_cache_mb, 256);
}

}  // namespace
}  // namespace tutti
