#include "pipeline/config_file.h"

#include <fstream>
#include <sstream>

namespace tutti {

namespace {
std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return {};
  const size_t e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

Expected<int64_t> parse_int(const std::string& v, const std::string& where) {
  try {
    size_t used = 0;
    const long long x = std::stoll(v, &used);
    if (used != v.size()) throw std::invalid_argument("trailing");
    return int64_t(x);
  } catch (...) {
    return Error{where + ": '" + v + "' is not an integer"};
  }
}
}  // namespace

Expected<EngineConfig> parse_engine_config(const std::string& text, const std::string& name, EngineConfig c) {
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    line = trim(line.substr(0, line.find('#')));
    if (line.empty()) continue;
    const std::string where = name + ":" + std::to_string(n);
    const size_t eq = line.find('=');
    if (eq == std::string::npos) return Error{where + ": expected 'key = value'"};
    const std::string key = trim(line.substr(0, eq)), value = trim(line.substr(eq + 1));
    auto integer = [&](int64_t lo, int64_t hi) -> Expected<int64_t> {
      auto v = parse_int(value, where);
      if (!v) return v;
      if (*v < lo || *v > hi) return Error{where + ": " + key + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]"};
      return v;
    };
    if (key == "model") {
      c.model = value;
    } else if (key == "device") {
      if (value != "cpu" && value != "cuda") return Error{where + ": device must be cpu or cuda"};
      c.device = value;
    } else if (key == "threads") {
      auto v = integer(0, 1024);
      if (!v) return v.error();
      c.threads = int(*v);
    } else if (key == "kernels") {
      if (value != "auto" && value != "avx512" && value != "avx2" && value != "scalar")
        return Error{where + ": kernels must be auto, avx512, avx2 or scalar"};
      c.kernels = value;
    } else if (key == "kv_cache_mb") {
      auto v = integer(1, 1 << 22);
      if (!v) return v.error();
      c.kv_cache_bytes = size_t(*v) << 20;
    } else if (key == "kv_cache_type") {
      if (value != "f16" && value != "f32") return Error{where + ": kv_cache_type must be f16 or f32"};
      c.kv_cache_type = value;
    } else if (key == "kv_block_tokens") {
      auto v = integer(1, 1024);
      if (!v) return v.error();
      c.kv_block_tokens = int(*v);
    } else if (key == "prefill_chunk") {
      auto v = integer(1, 1 << 16);
      if (!v) return v.error();
      c.prefill_chunk = int(*v);
    } else {
      return Error{where + ": unknown key '" + key + "'"};
    }
  }
  return c;
}

Expected<EngineConfig> load_engine_config(const std::string& path, EngineConfig base) {
  std::ifstream f(path);
  if (!f) return Error{path + ": cannot open"};
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_engine_config(ss.str(), path, base);
}

}  // namespace tutti
