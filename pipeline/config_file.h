// The server's configuration file: `key = value` lines, `#` comments. Unknown keys are an
// error (a typo must not silently fall back to a default). config/tutti.conf documents
// every key with its default.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "pipeline/expected.h"

namespace tutti {

struct EngineConfig {
  std::string model;               // GGUF path; empty: the embedded default model
  std::string device = "cpu";      // cpu (cuda arrives with the GPU executor)
  int threads = 0;                 // compute threads; 0: one per core
  std::string kernels = "auto";    // auto, avx512, avx2, scalar
  size_t kv_cache_bytes = 512u << 20;
  std::string kv_cache_type = "f16";  // f16 or f32
  int kv_block_tokens = 16;
  int prefill_chunk = 512;
};

Expected<EngineConfig> parse_engine_config(const std::string& text, const std::string& name, EngineConfig base = {});
Expected<EngineConfig> load_engine_config(const std::string& path, EngineConfig base = {});

}  // namespace tutti
