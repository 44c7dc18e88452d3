// Sampling: greedy, seeded reproducibility, top-k/top-p/min-p, repetition penalty, stop
// tokens, and modality masks.
#include <gtest/gtest.h>

#include <map>

#include "pipeline/sampler.h"

namespace tutti {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.5f, -1.0f, 0.5f, 2.9f, 0.0f, -3.0f};

TEST(Sampler, GreedyPicksTheMaximum) {
  Sampler s({});
  EXPECT_EQ(s.sample(kLogits.data(), 8), 1);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferent) {
  SamplingParams p;
  p.temperature = 1.5f;
  auto run = [&](uint64_t seed) {
    p.seed = seed;
    Sampler s(p);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.sample(kLogits.data(), 8));
    return out;
  };
  EXPECT_EQ(run(1), run(1));
  EXPECT_NE(run(1), run(2));
}

TEST(Sampler, TopKOneIsGreedyAndTopKLimitsTheChoice) {
  SamplingParams p;
  p.temperature = 5.f;
  p.top_k = 1;
  Sampler s(p);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(kLogits.data(), 8), 1);
  p.top_k = 3;
  Sampler s3(p);
  for (int i = 0; i < 200; ++i) {
    const int32_t t = s3.sample(kLogits.data(), 8);
    EXPECT_TRUE(t == 1 || t == 5 || t == 2) << t;
  }
}

TEST(Sampler, TopPAndMinPCutTheTail) {
  SamplingParams p;
  p.temperature = 1.f;
  p.top_p = 0.01f;  // only the best token reaches the mass
  Sampler s(p);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(kLogits.data(), 8), 1);
  SamplingParams m;
  m.temperature = 1.f;
  m.min_p = 0.5f;  // keeps tokens with p >= 0.5 p(best): ids 1, 5, 2
  Sampler sm(m);
  std::map<int32_t, int> seen;
  for (int i = 0; i < 500; ++i) ++seen[sm.sample(kLogits.data(), 8)];
  for (auto& [t, n] : seen) EXPECT_TRUE(t == 1 || t == 5 || t == 2) << t;
  EXPECT_EQ(seen.size(), 3u);
}

TEST(Sampler, TemperatureFollowsTheSoftmax) {
  SamplingParams p;
  p.temperature = 1.f;
  p.seed = 9;
  Sampler s(p);
  const std::vector<float> two = {0.f, std::log(3.f)};  // p = 1/4, 3/4
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.sample(two.data(), 2) == 1;
  EXPECT_NEAR(double(ones) / n, 0.75, 0.02);
}

TEST(Sampler, RepetitionPenaltyMovesAwayFromRecentTokens) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  Sampler s(p);
  s.accept(1);  // 3.0 -> 1.5: now 5 (2.9) is best
  EXPECT_EQ(s.sample(kLogits.data(), 8), 5);
}

TEST(Sampler, MaskRestrictsToAModalityRange) {
  SamplingParams p;
  p.allowed = {{3, 5}, {7, 8}};  // e.g. audio codes [3, 5) plus their end token 7
  Sampler s(p);
  EXPECT_EQ(s.sample(kLogits.data(), 8), 4);
  p.temperature = 2.f;
  Sampler t(p);
  for (int i = 0; i < 100; ++i) {
    const int32_t x = t.sample(kLogits.data(), 8);
    EXPECT_TRUE(x == 3 || x == 4 || x == 7) << x;
  }
}

TEST(Sampler, StopTokensAndValidation) {
  SamplingParams p;
  p.stop_tokens = {1};
  Sampler s(p);
  EXPECT_TRUE(s.is_stop(1));
  EXPECT_FALSE(s.is_stop(2));
  EXPECT_TRUE(validate(p, 8).ok());
  p.top_p = 0.f;
  EXPECT_FALSE(validate(p, 8).ok());
  p.top_p = 1.f;
  p.allowed = {{5, 20}};
  EXPECT_FALSE(validate(p, 8).ok());
  p.allowed = {};
  p.temperature = -1.f;
  EXPECT_FALSE(validate(p, 8).ok());
  p.temperature = 0.f;
  p.stop_tokens = {8};
  EXPECT_FALSE(validate(p, 8).ok());
}

}  // namespace
}  // namespace tutti
