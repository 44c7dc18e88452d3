// Helpers shared by the tests: where ../shared/ is, and small random models made on the fly.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "pipeline/model_builder.h"

namespace tutti::test {

// n values from a normal distribution (mean 0, deviation `scale`), the same for a seed.
inline std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// TUTTI_SHARED_DIR, or ../shared beside the source tree. Empty if absent.
inline std::string shared_dir() {
  if (const char* env = std::getenv("TUTTI_SHARED_DIR"); env && *env)
    return std::filesystem::exists(env) ? std::string(env) : std::string();
  const std::filesystem::path p = std::filesystem::path(TUTTI_SOURCE_DIR) / ".." / "shared";
  return std::filesystem::exists(p / "README.md") ? p.lexically_normal().string() : std::string();
}

// Skips the calling test, saying why, when a shared file is missing.
#define TUTTI_REQUIRE_SHARED(relpath, out_path)                                                        \
  std::string out_path;                                                                              \
  do {                                                                                               \
    const std::string dir_ = ::tutti::test::shared_dir();                                            \
    if (dir_.empty()) GTEST_SKIP() << "../shared/ is absent (set TUTTI_SHARED_DIR): " << relpath;   \
    out_path = dir_ + "/" + relpath;                                                                 \
    if (!std::filesystem::exists(out_path)) GTEST_SKIP() << out_path << " is absent";                \
  } while (0)

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Files that tests make live in the build tree, shared by the test processes (ctest runs
// each test in its own process); writers replace files atomically.
inline std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::path(TUTTI_BINARY_DIR) / "test-data";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

// A small random model with the built-in vocabulary, written once per process per spec.
inline std::string random_model(const RandomModelSpec& spec, const std::string& name) {
  const std::string path = temp_path(name);
  if (!std::filesystem::exists(path)) {
    static const VocabularyMetadata vocab = builtin_vocabulary(300);
    Status s = write_random_model(spec, vocab, path);
    EXPECT_TRUE(s.ok()) << s.message();
  }
  return path;
}

}  // namespace tutti::test
