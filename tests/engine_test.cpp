// The engine's step loop with the real model: batched sequences of every class give the
// same tokens as each alone (seeded sampling included), stop tokens, cancellation, refusals.
#include <gtest/gtest.h>

#include <map>

#include "pipeline/engine.h"
#include "pipeline/generate.h"
#include "test_support.h"

namespace tutti {
namespace {

struct Fixture {
  std::unique_ptr<Backend> backend = make_cpu_backend({2});
  std::unique_ptr<Model> model;
  Fixture() {
    RandomModelSpec spec;
    spec.dim = 64; spec.layers = 2; spec.heads = 4; spec.kv_heads = 2; spec.ffn = 96; spec.type = TensorType::F32; spec.seed = 3;
    model = std::move(Model::load(test::random_model(spec, "ref-f32.gguf"), *backend)).value();
  }
  // These tests are about the engine's tokens, on the real clock: admission, which decides
  // on measured step times (slow on a loaded test machine), is off (scheduler_test has it).
  static SchedulerConfig without_admission(SchedulerConfig c = {}) {
    c.admission.enabled = false;
    return c;
  }
  std::unique_ptr<Engine> engine(SchedulerConfig c = {}, size_t kv_bytes = 4 << 20) {
    c.admission.enabled = false;
    return std::make_unique<Engine>(*model, std::move(model->make_kv_cache(kv_bytes, TensorType::F32)).value(), c, nullptr);
  }
  std::vector<int32_t> alone(const EngineRequest& r) {
    auto kv = std::move(model->make_kv_cache(4 << 20, TensorType::F32)).value();
    Sampler sampler(r.sampling);
    GenerateOptions o;
    o.max_tokens = r.seq.max_new_tokens;
    o.stop_at_eog = false;
    return generate(*model, *kv, nullptr, r.seq.prompt, sampler, o)->tokens;
  }
};

EngineRequest make(int64_t id, RequestClass cls, int prompt_len, int n, float temperature = 0, uint64_t seed = 0) {
  EngineRequest r;
  r.seq.id = id;
  r.seq.cls = cls;
  for (int k = 0; k < prompt_len; ++k) r.seq.prompt.push_back(int32_t((k * 31 + id * 7) % 280 + 4));
  r.seq.max_new_tokens = n;
  r.seq.pacing.tokens_per_second = 1000;
  r.sampling.temperature = temperature;
  r.sampling.top_k = 40;
  r.sampling.seed = seed;
  r.stop_at_eog = false;
  return r;
}

// Runs until idle; returns each sequence's tokens and finish reason.
std::map<int64_t, std::pair<std::vector<int32_t>, FinishReason>> drain(Engine& e, double& now) {
  std::map<int64_t, std::pair<std::vector<int32_t>, FinishReason>> out;
  for (int step = 0; step < 500 && !e.idle(); ++step) {
    for (const EngineEvent& ev : e.step(now)) {
      if (ev.token >= 0) out[ev.seq].first.push_back(ev.token);
      if (ev.finish != FinishReason::None) out[ev.seq].second = ev.finish;
    }
    now += 0.001;
  }
  return out;
}

TEST(Engine, BatchedSequencesMatchRunsAloneIncludingSeededSampling) {
  Fixture f;
  SchedulerConfig c;
  c.step_token_budget = 20;
  c.prefill_chunk = 12;
  auto e = f.engine(c);
  std::vector<EngineRequest> reqs = {make(1, RequestClass::Interactive, 9, 10), make(2, RequestClass::Realtime, 23, 8),
                                     make(3, RequestClass::Batch, 17, 12, 0.9f, 42), make(4, RequestClass::Interactive, 5, 6, 1.2f, 7)};
  double now = 0;
  for (auto& r : reqs) ASSERT_TRUE(e->submit(r, now).ok());
  auto got = drain(*e, now);
  ASSERT_TRUE(e->idle());
  for (auto& r : reqs) {
    EXPECT_EQ(got[r.seq.id].first, f.alone(r)) << "sequence " << r.seq.id;
    EXPECT_EQ(got[r.seq.id].second, FinishReason::Length);
  }
  EXPECT_EQ(e->kv_cache().free_blocks(), e->kv_cache().total_blocks());
}

// A conversation's next turn and a prompt prefilled ahead (prefill_only) start from the
// prefix cache: fewer tokens computed, and not one generated token different from a run
// without it.
TEST(Engine, PrefixCacheReusesEarlierPromptsAndChangesNoToken) {
  Fixture f;
  for (bool cached : {true, false}) {
    auto e = std::make_unique<Engine>(*f.model, std::move(f.model->make_kv_cache(4 << 20, TensorType::F32, 16, cached)).value(),
                                      Fixture::without_admission(), nullptr);
    double now = 0;
    EngineRequest first = make(1, RequestClass::Interactive, 40, 8, 0.8f, 5);
    ASSERT_TRUE(e->submit(first, now).ok());
    auto got = drain(*e, now);
    // The next turn: the first prompt, its answer, and new tokens.
    EngineRequest next = make(2, RequestClass::Interactive, 0, 6, 0.8f, 9);
    next.seq.prompt = first.seq.prompt;
    next.seq.prompt.insert(next.seq.prompt.end(), got[1].first.begin(), got[1].first.end());
    for (int k = 0; k < 11; ++k) next.seq.prompt.push_back(300 + k);
    ASSERT_TRUE(e->submit(next, now).ok());
    got = drain(*e, now);
    EXPECT_EQ(got[2].first, f.alone(next));
    // 40 prompt + 7 computed answer tokens: 2 full blocks of 16.
    EXPECT_EQ(e->scheduler().cached_tokens_total(), cached ? 32u : 0u);

    // Prefill ahead: a prefill-only request finishes with no token, and keeps its K/V.
    EngineRequest ahead = make(3, RequestClass::Realtime, 37, 1);
    ahead.seq.prefill_only = true;
    ASSERT_TRUE(e->submit(ahead, now).ok());
    got = drain(*e, now);
    EXPECT_TRUE(got[3].first.empty());
    EXPECT_EQ(got[3].second, FinishReason::Length);
    EXPECT_EQ(e->kv_cache().free_blocks(), e->kv_cache().total_blocks());
    EngineRequest turn = make(4, RequestClass::Realtime, 0, 5, 0.9f, 1);
    turn.seq.prompt = ahead.seq.prompt;
    turn.seq.prompt.insert(turn.seq.prompt.end(), {5, 6, 7});
    const uint64_t before = e->scheduler().prefill_tokens_total();
    ASSERT_TRUE(e->submit(turn, now).ok());
    got = drain(*e, now);
    EXPECT_EQ(got[4].first, f.alone(turn));
    EXPECT_EQ(e->scheduler().prefill_tokens_total() - before, cached ? 40u - 32u : 40u);
  }
}

TEST(Engine, StopTokenEndsTheSequenceWithoutEmittingIt) {
  Fixture f;
  auto e = f.engine();
  EngineRequest r = make(1, RequestClass::Interactive, 8, 10);
  const auto greedy = f.alone(r);
  r.sampling.stop_tokens = {greedy[3]};
  const auto first = std::find(greedy.begin(), greedy.end(), greedy[3]) - greedy.begin();
  double now = 0;
  ASSERT_TRUE(e->submit(r, now).ok());
  auto got = drain(*e, now);
  EXPECT_EQ(got[1].second, FinishReason::Stop);
  EXPECT_EQ(got[1].first, std::vector<int32_t>(greedy.begin(), greedy.begin() + first));
}

// Media generation: each generated token is a code of its slot's stage, in order; the end
// token comes only at a frame boundary and ends the answer; without one, the length does.
TEST(Engine, MediaCodesFollowTheirStagesAndEndOnlyAtFrameBoundaries) {
  Fixture f;
  auto e = f.engine();
  const int32_t n_vocab = int32_t(f.model->hparams().n_vocab);
  MediaLayout layout{100, 20, 3, 50};  // stages of 20 codes from id 100; end token 50
  double now = 0;
  for (int64_t id = 1; id <= 6; ++id) {
    EngineRequest r = make(id, RequestClass::Interactive, 6, 30, 1.5f, uint64_t(id));
    r.sampling.top_k = 0;
    r.media = layout;
    if (id == 6) r.media->end_token = -1;  // no end: exactly max_new_tokens codes
    ASSERT_TRUE(e->submit(r, now).ok());
  }
  auto got = drain(*e, now);
  for (auto& [id, result] : got) {
    const auto& tokens = result.first;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const int stage = int(i % 3);
      EXPECT_GE(tokens[i], 100 + stage * 20) << id << " at " << i;
      EXPECT_LT(tokens[i], 100 + (stage + 1) * 20) << id << " at " << i;
    }
    if (result.second == FinishReason::Stop) {
      EXPECT_EQ(tokens.size() % 3, 0u) << "the end token came inside a frame";
    } else {
      EXPECT_EQ(tokens.size(), 30u);
    }
  }
  EXPECT_EQ(got[6].first.size(), 30u);
  EngineRequest bad = make(9, RequestClass::Interactive, 4, 4);
  bad.media = MediaLayout{n_vocab - 5, 10, 1, -1};
  EXPECT_FALSE(e->submit(bad, now).ok());
}

// SNAC frames: 7 slots whose levels share ids (tutti layout: 0 1 2 2 1 2 2 over three
// ranges) or each have their own (orpheus layout); each slot samples only its own range.
TEST(Engine, MediaSlotsSampleTheirOwnRanges) {
  Fixture f;
  auto e = f.engine();
  const std::vector<int> levels = {0, 1, 2, 2, 1, 2, 2};
  MediaLayout tutti{100, 10, 7, 50, {}};
  for (int l : levels) tutti.slot_offsets.push_back(100 + l * 10);
  MediaLayout orpheus{100, 10, 7, 50, {}};
  for (int k = 0; k < 7; ++k) orpheus.slot_offsets.push_back(100 + k * 10);
  double now = 0;
  for (int64_t id = 1; id <= 4; ++id) {
    EngineRequest r = make(id, RequestClass::Interactive, 6, 28, 1.5f, uint64_t(id));
    r.sampling.top_k = 0;
    r.media = id % 2 ? tutti : orpheus;
    ASSERT_TRUE(e->submit(r, now).ok());
  }
  auto got = drain(*e, now);
  for (auto& [id, result] : got) {
    const MediaLayout& m = id % 2 ? tutti : orpheus;
    const auto& tokens = result.first;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const int32_t lo = m.slot_offsets[i % 7];
      EXPECT_GE(tokens[i], lo) << id << " at " << i;
      EXPECT_LT(tokens[i], lo + 10) << id << " at " << i;
    }
    if (result.second == FinishReason::Stop) EXPECT_EQ(tokens.size() % 7, 0u) << "the end token came inside a frame";
  }
  EngineRequest bad = make(9, RequestClass::Interactive, 4, 4);
  bad.media = tutti;
  bad.media->slot_offsets.pop_back();  // not one per slot
  EXPECT_FALSE(e->submit(bad, now).ok());
}

TEST(Engine, CancelEndsOneSequenceAndFreesItsBlocks) {
  Fixture f;
  auto e = f.engine();
  double now = 0;
  ASSERT_TRUE(e->submit(make(1, RequestClass::Interactive, 8, 50), now).ok());
  ASSERT_TRUE(e->submit(make(2, RequestClass::Interactive, 8, 5), now).ok());
  size_t before = 0;  // tokens of sequence 2 from the two steps before the cancel
  for (int i = 0; i < 2; ++i)
    for (const EngineEvent& ev : e->step(now)) before += ev.seq == 2 && ev.token >= 0;
  e->cancel(1);
  auto got = drain(*e, now);
  EXPECT_EQ(got[1].second, FinishReason::Cancelled);
  EXPECT_LT(got[1].first.size(), 50u);
  EXPECT_EQ(got[2].second, FinishReason::Length);
  EXPECT_EQ(before + got[2].first.size(), 5u);
  EXPECT_EQ(e->kv_cache().free_blocks(), e->kv_cache().total_blocks());
}

TEST(Engine, RefusesBadRequestsWithReasons) {
  Fixture f;
  SchedulerConfig c;
  c.max_waiting = 1;
  auto e = f.engine(c);
  EngineRequest bad = make(1, RequestClass::Interactive, 4, 4);
  bad.seq.prompt.push_back(int32_t(f.model->hparams().n_vocab));
  Status s = e->submit(bad, 0);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("outside the vocabulary"), std::string::npos);
  EngineRequest sampling = make(2, RequestClass::Interactive, 4, 4);
  sampling.sampling.top_p = 0;
  EXPECT_FALSE(e->submit(sampling, 0).ok());
  ASSERT_TRUE(e->submit(make(3, RequestClass::Interactive, 4, 4), 0).ok());
  Status busy = e->submit(make(4, RequestClass::Interactive, 4, 4), 0);
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.code(), ErrorCode::busy);
  EXPECT_FALSE(e->submit(make(3, RequestClass::Interactive, 4, 4), 0).ok());  // id in use
}

}  // namespace
}  // namespace tutti
