// The continuous-batching scheduler, driven by a fake clock and a fake step cost (step time
// = fixed part + per-token part), so pacing, priority, stall-free prefill, admission,
// preemption and cancellation show up as numbers. The last test runs it against the real
// model and checks that batching changes no sequence's tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "pipeline/generate.h"
#include "pipeline/scheduler.h"
#include "test_support.h"

namespace tutti {
namespace {

// Block accounting as PagedKvCache does it; reserve() plays the forward pass's part.
class FakeKv final : public KvCapacity {
 public:
  FakeKv(int total, int block_tokens) : total_(total), bt_(block_tokens) {}
  int free_blocks() const override {
    int used = 0;
    for (auto& [id, n] : held_) used += n;
    return total_ - used;
  }
  int total_blocks() const override { return total_; }
  int block_tokens() const override { return bt_; }
  int blocks_needed(int64_t seq, int n) const override {
    auto it = held_.find(seq);
    const int have = it == held_.end() ? 0 : it->second;
    return std::max(0, (n + bt_ - 1) / bt_ - have);
  }
  void release(int64_t seq) override { held_.erase(seq); }
  void reserve(const Batch& b) {
    for (auto& c : b.chunks) {
      held_[c.seq_id] += blocks_needed(c.seq_id, c.start_pos + int(c.tokens.size()));
      ASSERT_LE(free_blocks(), total_);
      ASSERT_GE(free_blocks(), 0) << "the plan overcommitted the cache";
    }
  }
  int held(int64_t seq) const { return held_.count(seq) ? held_.at(seq) : 0; }

 private:
  int total_, bt_;
  std::map<int64_t, int> held_;
};

struct Arrival {
  double time;
  SequenceRequest req;
};

struct SimResult {
  std::map<int64_t, SequenceStats> stats;
  double max_step = 0;
  int steps = 0;
  int max_step_tokens = 0;
};

// Runs arrivals through the scheduler until everything is done or `until` passes.
SimResult simulate(Scheduler& sched, FakeKv& kv, std::vector<Arrival> arrivals, double fixed_s, double per_token_s,
                   double until = 1e9) {
  std::sort(arrivals.begin(), arrivals.end(), [](auto& a, auto& b) { return a.time < b.time; });
  SimResult r;
  double now = 0;
  size_t next = 0;
  std::vector<int64_t> ids;
  while (now < until) {
    while (next < arrivals.size() && arrivals[next].time <= now) {
      ids.push_back(arrivals[next].req.id);
      EXPECT_TRUE(sched.submit(arrivals[next].req, arrivals[next].time).ok());
      ++next;
    }
    StepPlan plan = sched.plan(now);
    if (plan.empty()) {
      if (next >= arrivals.size() && sched.idle()) break;
      // Like the executor: with work held back (streams ahead of playback) look again in
      // 2 ms; with nothing at all, wait for the next arrival.
      const double next_arrival = next < arrivals.size() ? arrivals[next].time : 1e30;
      now = sched.idle() ? std::max(now + 1e-4, next_arrival) : std::min(now + 0.002, std::max(now + 1e-4, next_arrival));
      continue;
    }
    kv.reserve(plan.batch);
    const double cost = fixed_s + per_token_s * plan.tokens;
    now += cost;
    r.max_step = std::max(r.max_step, cost);
    r.max_step_tokens = std::max(r.max_step_tokens, plan.tokens);
    ++r.steps;
    std::vector<TokenOutcome> out;
    for (size_t i = 0; i < plan.batch.chunks.size(); ++i)
      if (plan.samples[i]) out.push_back({plan.batch.chunks[i].seq_id, 7, false});
    sched.on_step_done(plan, out, now);
  }
  for (int64_t id : ids)
    if (const SequenceStats* s = sched.stats(id)) r.stats[id] = *s;
  return r;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size())))];
}

SequenceRequest request(int64_t id, RequestClass cls, int prompt, int new_tokens, double rate = 0) {
  SequenceRequest r;
  r.id = id;
  r.cls = cls;
  r.prompt.assign(size_t(prompt), 5);
  r.max_new_tokens = new_tokens;
  if (rate > 0) r.pacing.tokens_per_second = rate;
  return r;
}

// 24 realtime streams at 12.5 tokens/s each (long enough to outlast the run), and text
// requests (150-token prompts) every 60 ms for 5 s; the run is measured over its first 6 s.
// Step budget 64 tokens, step cost 2 ms + 0.25 ms per token. Without pacing the streams
// take 24 tokens of every step and text prefill falls behind its arrivals; with pacing they
// take what playback needs (about 6 per step) and text keeps up.
TEST(Scheduler, PacingLowersTextTimeToFirstTokenAtEqualUnderruns) {
  auto run = [](bool pacing) {
    SchedulerConfig c;
    c.step_token_budget = 64;
    c.prefill_chunk = 64;
    c.max_sequences_per_step = 48;
    c.max_waiting = 1000;
    c.max_running = 1000;
    c.pacing = pacing;
    FakeKv kv(100000, 16);
    Scheduler s(c, kv);
    std::vector<Arrival> arrivals;
    for (int i = 0; i < 24; ++i) arrivals.push_back({0.01 * i, request(i, RequestClass::Realtime, 8, 1000, 12.5)});
    for (int i = 0; i < 84; ++i) arrivals.push_back({0.3 + 0.06 * i, request(1000 + i, RequestClass::Interactive, 150, 4)});
    return simulate(s, kv, arrivals, 0.002, 0.00025, 6.0);
  };
  const SimResult paced = run(true), unpaced = run(false);
  auto summarize = [](const SimResult& r, const char* name, bool pacing_run) {
    std::vector<double> ttft;
    int underruns = 0, unserved = 0;
    for (auto& [id, s] : r.stats) {
      if (s.cls == RequestClass::Interactive) {
        // Still waiting when the window closed: counted with the time it had waited so far.
        if (s.first_token < 0) ++unserved;
        ttft.push_back((s.first_token < 0 ? 6.0 : s.first_token) - s.arrival);
      }
      if (s.cls == RequestClass::Realtime) {
        underruns += s.underruns;
        EXPECT_GE(s.generated, 6 * 12.5 * 0.9) << name << " stream " << id << " fell behind playback";
      }
    }
    std::printf("%-9s text TTFT p50 %6.1f ms  p99 %6.1f ms  (%d of %zu still waiting at 6 s)   stream underruns %d   steps %d\n",
                name, percentile(ttft, 0.5) * 1e3, percentile(ttft, 0.99) * 1e3, unserved, ttft.size(), underruns, r.steps);
    if (pacing_run) { EXPECT_EQ(unserved, 0); }
    return std::make_tuple(percentile(ttft, 0.5), percentile(ttft, 0.99), underruns);
  };
  const auto [p50_on, p99_on, u_on] = summarize(paced, "pacing", true);
  const auto [p50_off, p99_off, u_off] = summarize(unpaced, "no pacing", false);
  EXPECT_EQ(u_on, 0);
  EXPECT_EQ(u_off, 0);
  EXPECT_LT(p50_on, 0.5 * p50_off);
  EXPECT_LT(p99_on, 0.5 * p99_off);
}

// A stream below its low watermark runs even when text work would fill the step.
TEST(Scheduler, UrgentStreamGoesFirst) {
  SchedulerConfig c;
  c.max_sequences_per_step = 2;
  c.step_token_budget = 64;
  FakeKv kv(1000, 16);
  Scheduler s(c, kv);
  ASSERT_TRUE(s.submit(request(1, RequestClass::Realtime, 4, 100, 10), 0).ok());
  StepPlan p = s.plan(0);
  kv.reserve(p.batch);
  s.on_step_done(p, {{1, 7, false}}, 0.01);  // first token: playback starts, lead 0.1 s
  for (int i = 2; i <= 4; ++i) ASSERT_TRUE(s.submit(request(i, RequestClass::Interactive, 4, 100), 0.01).ok());
  // The three text requests arrived first in the queue, but the stream is urgent.
  p = s.plan(0.05);
  ASSERT_EQ(p.batch.chunks.size(), 2u);
  EXPECT_EQ(p.batch.chunks[0].seq_id, 1);
  EXPECT_LT(s.lead(1, 0.05), 0.2);
  // Far ahead of playback, the same stream skips the step.
  kv.reserve(p.batch);
  s.on_step_done(p, {{1, 7, false}, {2, 7, false}}, 0.06);
  SchedulerConfig c2 = c;
  FakeKv kv2(1000, 16);
  Scheduler ahead(c2, kv2);
  ASSERT_TRUE(ahead.submit(request(9, RequestClass::Realtime, 4, 100, 10), 0).ok());
  double now = 0;
  for (int i = 0; i < 20; ++i) {  // generates fast: 10 ms a token against 100 ms of playback
    StepPlan q = ahead.plan(now);
    if (q.empty()) break;
    kv2.reserve(q.batch);
    now += 0.01;
    ahead.on_step_done(q, {{9, 7, false}}, now);
  }
  // Between the watermarks a lone stream does not start a step: it coasts until urgent.
  EXPECT_GE(ahead.lead(9, now), 0.2);
  EXPECT_TRUE(ahead.plan(now).empty());
  const double coast = ahead.lead(9, now) - 0.2;
  EXPECT_TRUE(ahead.plan(now + coast - 0.01).empty());
  EXPECT_FALSE(ahead.plan(now + coast + 0.01).empty());  // urgent again
}

// A 5000-token prompt arrives while four sequences stream: every step still carries their
// decodes, no step exceeds the token budget, and their token gaps stay one step long.
TEST(Scheduler, LongPromptNeverStallsStreamingTokens) {
  SchedulerConfig c;
  c.step_token_budget = 128;
  c.prefill_chunk = 512;
  FakeKv kv(100000, 16);
  Scheduler s(c, kv);
  std::vector<Arrival> arrivals;
  for (int i = 0; i < 4; ++i) arrivals.push_back({0, request(i, RequestClass::Interactive, 8, 200)});
  arrivals.push_back({0.05, request(99, RequestClass::Interactive, 5000, 4)});
  const SimResult r = simulate(s, kv, arrivals, 0.002, 0.00025);
  EXPECT_LE(r.max_step_tokens, c.step_token_budget);
  const double max_step = 0.002 + 0.00025 * c.step_token_budget;
  double worst_gap = 0;
  for (int i = 0; i < 4; ++i) {
    const auto& t = r.stats.at(i).token_times;
    ASSERT_EQ(t.size(), 200u);
    for (size_t k = 1; k < t.size(); ++k) worst_gap = std::max(worst_gap, t[k] - t[k - 1]);
  }
  std::printf("long prompt: first token after %.1f ms; streaming sequences' worst token gap %.2f ms (step %.2f ms)\n",
              (r.stats.at(99).first_token - 0.05) * 1e3, worst_gap * 1e3, max_step * 1e3);
  EXPECT_LE(worst_gap, max_step + 1e-9);
  // 5000 prompt tokens at up to 124 per step (4 go to the decodes): about 41 steps.
  EXPECT_LT(r.stats.at(99).first_token - 0.05, 45 * max_step);
}

TEST(Scheduler, AdmissionRefusesWithReasons) {
  SchedulerConfig c;
  c.max_waiting = 2;
  FakeKv kv(10, 16);  // 160 tokens of context
  Scheduler s(c, kv);
  EXPECT_TRUE(s.submit(request(1, RequestClass::Interactive, 10, 10), 0).ok());
  EXPECT_TRUE(s.submit(request(2, RequestClass::Interactive, 10, 10), 0).ok());
  Status busy = s.submit(request(3, RequestClass::Interactive, 10, 10), 0);
  ASSERT_FALSE(busy.ok());
  EXPECT_NE(busy.message().find("busy"), std::string::npos);
  Status dup = s.submit(request(1, RequestClass::Batch, 10, 10), 0);
  EXPECT_NE(dup.message().find("already in use"), std::string::npos);
  Status big = s.submit(request(4, RequestClass::Interactive, 150, 20), 0);
  EXPECT_NE(big.message().find("holds 160"), std::string::npos);
  EXPECT_FALSE(s.submit(request(5, RequestClass::Interactive, 0, 10), 0).ok());
  SequenceRequest bad = request(6, RequestClass::Realtime, 4, 4, 10);
  bad.pacing.high_watermark_s = 0.1;
  EXPECT_FALSE(s.submit(bad, 0).ok());
}

// The cache holds 10 blocks of 16 tokens; two batch jobs hold 8. A text request needing 3
// preempts the newer batch job, which later recomputes and still finishes all its tokens.
TEST(Scheduler, PreemptsBatchWorkFirstAndRecomputesIt) {
  SchedulerConfig c;
  c.step_token_budget = 256;
  c.prefill_chunk = 256;
  FakeKv kv(10, 16);
  Scheduler s(c, kv);
  std::vector<Arrival> arrivals = {{0, request(1, RequestClass::Batch, 60, 20)},
                                   {0.001, request(2, RequestClass::Batch, 60, 20)},
                                   {0.02, request(3, RequestClass::Interactive, 40, 8)}};
  const SimResult r = simulate(s, kv, arrivals, 0.002, 0.00025);
  EXPECT_EQ(r.stats.at(3).generated, 8);
  EXPECT_EQ(r.stats.at(1).generated, 20);
  EXPECT_EQ(r.stats.at(2).generated, 20);
  EXPECT_EQ(r.stats.at(1).preemptions + r.stats.at(2).preemptions, 1);
  EXPECT_EQ(r.stats.at(2).preemptions, 1) << "the newest batch job goes first";
  EXPECT_LT(r.stats.at(3).first_token - 0.02, 0.05);  // within the steps in flight when it arrived
  EXPECT_EQ(kv.free_blocks(), 10);
}

TEST(Scheduler, CancellationFreesBlocksOnTheNextStep) {
  SchedulerConfig c;
  FakeKv kv(100, 16);
  Scheduler s(c, kv);
  ASSERT_TRUE(s.submit(request(1, RequestClass::Interactive, 40, 100), 0).ok());
  ASSERT_TRUE(s.submit(request(2, RequestClass::Interactive, 40, 100), 0).ok());
  StepPlan p = s.plan(0);
  kv.reserve(p.batch);
  s.on_step_done(p, {{1, 7, false}, {2, 7, false}}, 0.01);
  EXPECT_EQ(kv.held(1), 3);
  s.cancel(1);
  p = s.plan(0.01);
  EXPECT_EQ(p.cancelled, std::vector<int64_t>{1});
  EXPECT_EQ(kv.held(1), 0);
  ASSERT_EQ(p.batch.chunks.size(), 1u);
  EXPECT_EQ(p.batch.chunks[0].seq_id, 2);
  EXPECT_TRUE(s.stats(1)->finished);
}

// Flow control: a sequence whose client stops reading is held after client_window tokens
// (KV kept, no steps), the others go on; credit resumes it where it stopped. A held realtime
// stream's playback clock waits with it, so its client's pause is not an underrun.
TEST(Scheduler, ClientThatStopsReadingHoldsOnlyItsOwnSequence) {
  SchedulerConfig c;
  c.client_window = 4;
  FakeKv kv(100, 16);
  Scheduler s(c, kv);
  ASSERT_TRUE(s.submit(request(1, RequestClass::Interactive, 8, 50), 0).ok());   // reads everything
  ASSERT_TRUE(s.submit(request(2, RequestClass::Interactive, 8, 50), 0).ok());   // never reads
  ASSERT_TRUE(s.submit(request(3, RequestClass::Realtime, 8, 50, 100), 0).ok()); // pauses, then reads
  double now = 0;
  auto step = [&] {
    StepPlan p = s.plan(now);
    kv.reserve(p.batch);
    std::vector<TokenOutcome> out;
    for (size_t i = 0; i < p.batch.chunks.size(); ++i)
      if (p.samples[i]) out.push_back({p.batch.chunks[i].seq_id, 7, false});
    now += 0.005;
    s.on_step_done(p, out, now);
    s.on_delivered(1, s.stats(1)->generated, now);
    return p;
  };
  for (int i = 0; i < 20; ++i) step();
  EXPECT_EQ(s.stats(1)->generated, 20);
  EXPECT_EQ(s.stats(2)->generated, 4) << "held at the window";
  EXPECT_EQ(s.stats(3)->generated, 4);
  EXPECT_EQ(s.held_for_client(), 2);
  EXPECT_GT(kv.held(2), 0) << "a held sequence keeps its cache";
  // Sequence 2's client reads two tokens: it may make two more.
  s.on_delivered(2, 2, now);
  for (int i = 0; i < 5; ++i) step();
  EXPECT_EQ(s.stats(2)->generated, 6);
  // The stream's client reads everything after a 100 ms pause; playback resumes from there.
  now += 0.1;
  s.on_delivered(3, 4, now);
  EXPECT_EQ(s.held_for_client(), 1);
  for (int i = 0; i < 5; ++i) {
    step();
    s.on_delivered(3, s.stats(3)->generated, now);
  }
  EXPECT_GT(s.stats(3)->generated, 4);
  EXPECT_EQ(s.stats(3)->underruns, 0);
  // Credit beyond what was generated is clamped; unknown ids are ignored.
  s.on_delivered(2, 1000, now);
  s.on_delivered(99, 5, now);
  step();
  EXPECT_EQ(s.stats(2)->generated, 7);
}

// Against the real model: sequences of every class batched by the scheduler produce exactly
// the greedy tokens each produces alone.
TEST(Scheduler, BatchedTokensEqualSequencesRunAlone) {
  RandomModelSpec spec;
  spec.dim = 64; spec.layers = 2; spec.heads = 4; spec.kv_heads = 2; spec.ffn = 96; spec.type = TensorType::F32; spec.seed = 3;
  const std::string path = test::random_model(spec, "ref-f32.gguf");
  auto backend = make_cpu_backend({2});
  auto model = std::move(Model::load(path, *backend)).value();
  const int n_vocab = int(model->hparams().n_vocab);
  std::vector<SequenceRequest> reqs = {request(1, RequestClass::Interactive, 0, 12), request(2, RequestClass::Realtime, 0, 10, 500),
                                       request(3, RequestClass::Batch, 0, 9), request(4, RequestClass::Interactive, 0, 7)};
  for (size_t i = 0; i < reqs.size(); ++i)
    for (int k = 0; k < 5 + 7 * int(i); ++k) reqs[i].prompt.push_back(int32_t((k * 37 + int(i) * 11) % 290 + 3));

  std::map<int64_t, std::vector<int32_t>> alone;
  for (auto& r : reqs) {
    auto kv = std::move(model->make_kv_cache(4 << 20, TensorType::F32)).value();
    Sampler sampler({});
    GenerateOptions o;
    o.max_tokens = r.max_new_tokens;
    o.stop_at_eog = false;
    alone[r.id] = generate(*model, *kv, nullptr, r.prompt, sampler, o)->tokens;
  }

  auto kv = std::move(model->make_kv_cache(4 << 20, TensorType::F32, 16)).value();
  KvCacheCapacity capacity(*kv);
  SchedulerConfig c;
  c.step_token_budget = 24;  // forces chunked prefill alongside decodes
  c.prefill_chunk = 16;
  Scheduler s(c, capacity);
  double now = 0;
  for (auto& r : reqs) ASSERT_TRUE(s.submit(r, now).ok());
  std::map<int64_t, std::vector<int32_t>> batched;
  StepLogits logits;
  for (int step = 0; step < 200 && !s.idle(); ++step) {
    StepPlan p = s.plan(now);
    if (p.empty()) {
      now += 0.01;
      continue;
    }
    ASSERT_TRUE(model->forward(p.batch, *kv, logits).ok());
    std::vector<TokenOutcome> out;
    for (size_t i = 0; i < p.batch.chunks.size(); ++i) {
      if (!p.samples[i]) continue;
      const float* row = logits.last_of(i, p.batch);
      const int32_t tok = int32_t(std::max_element(row, row + n_vocab) - row);
      batched[p.batch.chunks[i].seq_id].push_back(tok);
      out.push_back({p.batch.chunks[i].seq_id, tok, false});
    }
    now += 0.001;
    s.on_step_done(p, out, now);
  }
  EXPECT_TRUE(s.idle());
  for (auto& r : reqs) EXPECT_EQ(batched[r.id], alone[r.id]) << "sequence " << r.id;
  EXPECT_EQ(kv->free_blocks(), kv->total_blocks());
}

}  // namespace
}  // namespace tutti
