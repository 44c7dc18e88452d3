// Greedy continuations of ../shared/models/ against the ids an established engine produced.
// The f32 file must match every id; so must the q8_0 file with the default f16 KV cache
// (the reference quantizes activations the same way), with every kernel set this CPU has.
#include <gtest/gtest.h>

#include "pipeline/generate.h"
#include "pipeline/model.h"
#include "test_support.h"

namespace tutti {
namespace {

struct Expected {
  std::string prompt;
  std::vector<int32_t> prompt_ids, greedy;
};

std::vector<int32_t> ids_of(const std::string& line) {
  std::vector<int32_t> v;
  std::istringstream in(line);
  for (int32_t x; in >> x;) v.push_back(x);
  return v;
}

std::vector<Expected> read_expected(const std::string& path) {
  std::vector<Expected> out;
  std::istringstream in(test::read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("prompt: ", 0) == 0) {
      const std::string rest = line.substr(8);
      if (!out.empty() && out.back().prompt_ids.empty() && !out.back().prompt.empty()) {
        out.back().prompt_ids = ids_of(rest);
      } else {
        out.push_back({rest, {}, {}});
      }
    } else if (line.rfind("greedy: ", 0) == 0 && !out.empty()) {
      out.back().greedy = ids_of(line.substr(8));
    }
  }
  return out;
}

void check_model(const std::string& name, const std::string& isa) {
  TUTTI_REQUIRE_SHARED("models/" + name + ".gguf", path);
  const auto cases = read_expected(path.substr(0, path.size() - 5) + ".expected.txt");
  ASSERT_GE(cases.size(), 1u);
  std::unique_ptr<Backend> backend;
  try {
    backend = make_cpu_backend({2, isa});
  } catch (const std::exception& e) {
    GTEST_SKIP() << "kernel set " << isa << " unavailable: " << e.what();
  }
  auto model = Model::load(path, *backend);
  ASSERT_TRUE(model) << model.error().message;
  auto tok = Tokenizer::from_gguf((*model)->file());
  ASSERT_TRUE(tok) << tok.error().message;
  for (const Expected& c : cases) {
    const auto prompt = (*tok)->encode(c.prompt);
    ASSERT_EQ(prompt, c.prompt_ids) << c.prompt;
    auto kv = std::move((*model)->make_kv_cache(16 << 20)).value();
    Sampler sampler({});
    GenerateOptions o;
    o.max_tokens = int(c.greedy.size());
    o.stop_at_eog = false;
    auto r = generate(**model, *kv, tok->get(), prompt, sampler, o);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->tokens, c.greedy) << name << " '" << c.prompt << "' with " << isa;
  }
}

TEST(SharedModels, F32GreedyIdsMatchExactly) { check_model("tiny-llama-spm-f32", "auto"); }
TEST(SharedModels, F32GreedyIdsMatchWithScalarKernels) { check_model("tiny-llama-spm-f32", "scalar"); }
TEST(SharedModels, F32GreedyIdsMatchWithAvx2Kernels) { check_model("tiny-llama-spm-f32", "avx2"); }
TEST(SharedModels, Q8_0GreedyIdsMatch) { check_model("tiny-llama-spm-q8_0", "auto"); }

}  // namespace
}  // namespace tutti
