// The continuous-batching scheduler, driven by a fake clock and a fake step cost (step time
// = fixed part + per-token part), so pacing, priority, stall-free prefill, admission,
// preemption and cancellation show up as numbers. The last test runs it against the real
// model and checks that batching changes no sequence's tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
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
  std::map<int64_t, AdmissionDecision> refused;      // at submit, with the decision
  std::map<int64_t, std::string> refused_in_queue;   // by a later plan (queued for capacity)
};

// What a step costs on the fake machine.
using StepCost = std::function<double(const StepPlan&)>;

struct SimOptions {
  double until = 1e9;
  bool learn = false;           // report each step's cost to the scheduler (its cost model)
  bool allow_refusals = false;  // a refused submit is recorded instead of failing the test
};

// Runs arrivals through the scheduler until everything is done or `until` passes.
SimResult simulate(Scheduler& sched, FakeKv& kv, std::vector<Arrival> arrivals, const StepCost& step_cost, SimOptions opt) {
  std::sort(arrivals.begin(), arrivals.end(), [](auto& a, auto& b) { return a.time < b.time; });
  SimResult r;
  double now = 0;
  size_t next = 0;
  std::vector<int64_t> ids;
  while (now < opt.until) {
    while (next < arrivals.size() && arrivals[next].time <= now) {
      const Status st = sched.submit(arrivals[next].req, arrivals[next].time);
      if (st.ok()) {
        ids.push_back(arrivals[next].req.id);
      } else {
        EXPECT_TRUE(opt.allow_refusals) << st.message();
        EXPECT_EQ(st.code(), ErrorCode::busy) << st.message();
        r.refused[arrivals[next].req.id] = sched.last_decision();
      }
      ++next;
    }
    StepPlan plan = sched.plan(now);
    for (const auto& q : plan.refused) r.refused_in_queue[q.id] = q.message;
    if (plan.empty()) {
      if (next >= arrivals.size() && sched.idle()) break;
      // Like the executor: with work held back (streams ahead of playback) look again in
      // 2 ms; with nothing at all, wait for the next arrival.
      const double next_arrival = next < arrivals.size() ? arrivals[next].time : 1e30;
      now = sched.idle() ? std::max(now + 1e-4, next_arrival) : std::min(now + 0.002, std::max(now + 1e-4, next_arrival));
      continue;
    }
    kv.reserve(plan.batch);
    const double cost = step_cost(plan);
    now += cost;
    if (opt.learn) sched.record_step(plan, cost);
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

// The first tests' machine: a fixed part and a part per token, nothing learned.
SimResult simulate(Scheduler& sched, FakeKv& kv, std::vector<Arrival> arrivals, double fixed_s, double per_token_s,
                   double until = 1e9) {
  return simulate(sched, kv, std::move(arrivals), [=](const StepPlan& p) { return fixed_s + per_token_s * p.tokens; },
                  SimOptions{until});
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

// ---- Real time under mixed load: the learned step cost, admission by capacity and by
// expected wait, batch work yielding. The fake machine's cost is linear in the step's
// composition (a fixed part, a part per row, a part per prefill token), and the scheduler
// learns it from the steps it runs, as it does from measured ones in the server.

StepCost linear_cost(double base, double per_row, double per_prefill) {
  return [=](const StepPlan& p) { return base + per_row * p.shape.rows + per_prefill * p.shape.prefill_tokens; };
}

// Steps of varied shapes before the measured part, so the cost model has seen both decodes
// and prefills (the server's first requests do the same for it).
void add_warm_up(std::vector<Arrival>& arrivals, int64_t first_id) {
  for (int i = 0; i < 8; ++i)
    arrivals.push_back({0.01 * i, request(first_id + i, RequestClass::Interactive, 16 + 37 * i, 4 + 3 * i)});
}

int underruns_of(const SimResult& r, RequestClass cls) {
  int n = 0;
  for (auto& [id, st] : r.stats)
    if (st.cls == cls) n += st.underruns;
  return n;
}

TEST(StepCost, LearnsALinearCostAndPredictsUnseenShapes) {
  StepCostModel m;
  EXPECT_EQ(m.predict({4, 0, 100}), 0) << "nothing is known before a step";
  const auto truth = [](const StepShape& s) { return 0.003 + 0.0004 * s.rows + 0.00002 * s.prefill_tokens + 1e-7 * double(s.context_tokens); };
  uint64_t x = 12345;
  auto next = [&](int mod) { x = x * 6364136223846793005ull + 1442695040888963407ull; return int((x >> 33) % uint64_t(mod)); };
  for (int i = 0; i < 300; ++i) {
    StepShape s{1 + next(32), next(3) == 0 ? next(512) : 0, next(20000)};
    m.observe(s, truth(s));
  }
  ASSERT_TRUE(m.ready());
  const auto& k = m.coefficients();
  std::printf("learned: base %.3f ms, per row %.4f ms, per prefill token %.5f ms, per cached position %.2e ms; error %.2f%%\n",
              k.base * 1e3, k.per_row * 1e3, k.per_prefill_token * 1e3, k.per_context_token * 1e3, m.relative_error() * 100);
  EXPECT_NEAR(k.base, 0.003, 0.0003);
  EXPECT_NEAR(k.per_row, 0.0004, 0.00004);
  EXPECT_NEAR(k.per_prefill_token, 0.00002, 0.000004);
  for (StepShape s : {StepShape{64, 0, 100000}, StepShape{1, 1000, 500}}) EXPECT_NEAR(m.predict(s), truth(s), 0.05 * truth(s));
  EXPECT_LT(m.relative_error(), 0.05);

  // A machine on which steps cost the same whatever is in them: no negative per-unit terms.
  StepCostModel flat;
  for (int i = 0; i < 50; ++i) flat.observe({1 + i % 7, (i % 5) * 30, 1000 + 50 * i}, 0.01);
  EXPECT_NEAR(flat.predict({32, 256, 60000}), 0.01, 0.001);
  EXPECT_GE(flat.coefficients().per_row, 0);
  EXPECT_GE(flat.coefficients().per_context_token, 0);

  // Only decodes seen so far: a prefill token is priced like a row until prefills are seen.
  StepCostModel decodes;
  for (int i = 0; i < 50; ++i) decodes.observe({1 + i % 16, 0, 0}, 0.002 + 0.001 * (1 + i % 16));
  EXPECT_NEAR(decodes.coefficients().per_prefill_token, decodes.coefficients().per_row, 0.0002);
}

TEST(Admission, PredictedWaitCountsSlotsAheadAndTheRealtimeShare) {
  LoadPicture load;
  load.cost = {0.001, 0, 0, 0};  // 1 ms a step
  load.cost_ready = true;
  load.slots = 2;
  load.running = {{RequestClass::Interactive, 10, 0, 0}, {RequestClass::Interactive, 30, 0, 0}};
  AdmissionRequest r;
  r.cls = RequestClass::Interactive;
  r.prompt_tokens = 1;
  // Both slots are taken: the first frees after 10 steps, then one step for its own token.
  EXPECT_NEAR(predicted_wait(load, r), 0.011, 1e-9);
  load.waiting = {{RequestClass::Interactive, 1, 5}};  // takes that slot for 5 steps
  EXPECT_NEAR(predicted_wait(load, r), 0.016, 1e-9);
  // Batch work ahead does not hold an interactive request back; a batch request waits for
  // everything (here: a long batch prompt queued ahead of it).
  load.cost.per_prefill_token = 0.0001;
  const double interactive = predicted_wait(load, r);
  load.waiting.push_back({RequestClass::Batch, 10000, 1});
  EXPECT_NEAR(predicted_wait(load, r), interactive, 1e-9);
  r.cls = RequestClass::Batch;
  EXPECT_GT(predicted_wait(load, r), interactive + 0.9);
  load.waiting.pop_back();
  load.cost.per_prefill_token = 0;
  // Realtime streams taking half the time double the wait.
  r.cls = RequestClass::Interactive;
  load.streams = {{250, 0, 1}};  // 250 tokens/s x 1 ms base... plus nothing per row
  load.cost.per_row = 0.001;     // base x 250 + 250 x 1 ms: the load is 0.5
  EXPECT_NEAR(realtime_load(load.cost, load.streams), 0.5, 1e-9);
  const double with_streams = predicted_wait(load, r);
  load.streams.clear();
  EXPECT_NEAR(with_streams, 2 * predicted_wait(load, r), 1e-9);
}

// 30 streams at 40 tokens/s ask for more than the machine has (step 2 ms + 1 ms a row:
// 30 of them need 128% of its time). Admission takes those that fit with 25% headroom and
// refuses the rest at once; every admitted stream then plays with no underrun. Without
// admission all are taken and all stutter.
TEST(Scheduler, AdmissionRefusesTheStreamThatWouldBreakTheOthers) {
  auto run = [](bool admission) {
    SchedulerConfig c;
    c.client_window = 0;  // the simulated clients read everything at once
    c.max_sequences_per_step = 64;
    c.max_running = 64;
    c.max_waiting = 100;
    c.admission.enabled = admission;
    FakeKv kv(100000, 16);
    Scheduler s(c, kv);
    std::vector<Arrival> arrivals;
    add_warm_up(arrivals, 1000);
    for (int i = 0; i < 30; ++i) arrivals.push_back({1.0 + 0.02 * i, request(i, RequestClass::Realtime, 8, 240, 40)});
    SimResult r = simulate(s, kv, arrivals, linear_cost(0.002, 0.001, 0.00005), {.until = 20, .learn = true, .allow_refusals = true});
    return std::make_pair(r, s.admissions(RequestClass::Realtime, AdmissionOutcome::Capacity));
  };
  const auto [with, refused_count] = run(true);
  const auto [without, unused] = run(false);
  int admitted = 0;
  for (auto& [id, st] : with.stats)
    if (st.cls == RequestClass::Realtime) {
      admitted++;
      EXPECT_EQ(st.generated, 240) << "stream " << id;
    }
  std::printf("30 streams asked: %d admitted, %zu refused (underruns %d); without admission: underruns %d\n", admitted,
              with.refused.size(), underruns_of(with, RequestClass::Realtime), underruns_of(without, RequestClass::Realtime));
  EXPECT_GE(admitted, 10);
  EXPECT_EQ(int(with.refused.size()), 30 - admitted);
  EXPECT_EQ(refused_count, with.refused.size());
  for (auto& [id, d] : with.refused) {
    EXPECT_EQ(d.outcome, AdmissionOutcome::Capacity);
    EXPECT_GT(d.realtime_load, 0.75);
    EXPECT_GT(d.retry_after_s, 0);
    EXPECT_NE(d.message.find("realtime streams"), std::string::npos) << d.message;
  }
  EXPECT_EQ(underruns_of(with, RequestClass::Realtime), 0);
  EXPECT_GT(underruns_of(without, RequestClass::Realtime), 30);
  EXPECT_TRUE(without.refused.empty());
}

// Two streams at 100 tokens/s (a token every 10 ms) while a flood of batch work arrives:
// 24 image-like answers of 1500 tokens and two 3000-token prompts. A step of the flood
// costs 2 ms + 0.5 ms a row + 0.02 ms a prefill token: 15 ms with its 26 rows, past the
// streams' 10 ms a token. With the allowance the batch work runs in the streams' slack (chunks cut
// to fit, sitting out while a stream is urgent) and the streams never underrun; the batch
// work still finishes, later.
TEST(Scheduler, BatchWorkNeverPushesAnAdmittedStreamPastItsDeadline) {
  auto run = [](bool shaping) {
    SchedulerConfig c;
    c.client_window = 0;  // the simulated clients read everything at once
    c.admission.enabled = shaping;
    c.admission.wait_target_s[size_t(RequestClass::Batch)] = 1000;
    FakeKv kv(100000, 16);
    Scheduler s(c, kv);
    std::vector<Arrival> arrivals;
    add_warm_up(arrivals, 1000);
    for (int i = 0; i < 2; ++i) arrivals.push_back({0.5 + 0.1 * i, request(i, RequestClass::Realtime, 8, 600, 100)});
    for (int i = 0; i < 24; ++i) arrivals.push_back({1.0 + 0.02 * i, request(100 + i, RequestClass::Batch, 300, 1500)});
    for (int i = 0; i < 2; ++i) arrivals.push_back({1.2 + 0.3 * i, request(200 + i, RequestClass::Batch, 3000, 16)});
    SimResult r = simulate(s, kv, arrivals, linear_cost(0.002, 0.0005, 0.00002), {.until = 200, .learn = true});
    return std::make_tuple(r, s.deferred_tokens_total(), s.yields_total());
  };
  const auto [shaped, deferred, yields] = run(true);
  const auto [unshaped, d0, y0] = run(false);
  auto batch_done = [](const SimResult& r) {
    double last = 0;
    for (auto& [id, st] : r.stats)
      if (st.cls == RequestClass::Batch && st.finished) last = std::max(last, st.token_times.back());
    return last;
  };
  std::printf("streams' underruns with the allowance %d (batch done at %.1f s, %llu tokens deferred, %llu yields); "
              "without %d (batch done at %.1f s)\n",
              underruns_of(shaped, RequestClass::Realtime), batch_done(shaped), (unsigned long long)deferred,
              (unsigned long long)yields, underruns_of(unshaped, RequestClass::Realtime), batch_done(unshaped));
  EXPECT_EQ(underruns_of(shaped, RequestClass::Realtime), 0);
  EXPECT_GT(underruns_of(unshaped, RequestClass::Realtime), 0);
  EXPECT_GT(deferred, 0u);
  EXPECT_GT(yields, 0u) << "batch work sat out while a stream was urgent (its KV kept)";
  for (auto& [id, st] : shaped.stats) {
    EXPECT_TRUE(st.finished) << id;
    if (st.cls == RequestClass::Batch) EXPECT_EQ(st.generated, id >= 200 ? 16 : 1500) << "batch " << id << " recovered";
  }
  EXPECT_GE(batch_done(shaped), batch_done(unshaped)) << "the batch work is what got slower";
}

// Four batch sequences hold every slot (max_running 4) when a stream arrives: the newest is
// preempted (its KV dropped) so the stream starts at once, and recomputes and finishes later.
TEST(Scheduler, RealtimeStreamTakesASlotFromBatchWork) {
  SchedulerConfig c;
  c.client_window = 0;
  c.max_running = 4;
  FakeKv kv(100000, 16);
  Scheduler s(c, kv);
  std::vector<Arrival> arrivals;
  for (int i = 0; i < 4; ++i) arrivals.push_back({0.001 * i, request(i, RequestClass::Batch, 20, 400)});
  arrivals.push_back({0.5, request(9, RequestClass::Realtime, 8, 100, 50)});
  const SimResult r = simulate(s, kv, arrivals, linear_cost(0.002, 0.0005, 0.00002), {.learn = true});
  const SequenceStats& stream = r.stats.at(9);
  EXPECT_LT(stream.first_token - stream.arrival, 0.02);
  EXPECT_EQ(stream.underruns, 0);
  EXPECT_EQ(r.stats.at(3).preemptions, 1) << "the newest batch sequence gives up its slot";
  for (int i = 0; i < 4; ++i) EXPECT_EQ(r.stats.at(i).generated, 400);
}

// Thirty interactive requests arrive at once on a machine that runs 4 sequences a step (9 ms
// a step; 100 tokens each). Those the slots will serve within the 400 ms target are taken;
// the rest are refused the moment they arrive, with the prediction; every one taken gets its
// first token within the target. Without the target all are queued and the last waits
// seconds.
TEST(Scheduler, RequestPredictedToWaitTooLongIsRefusedAtOnce) {
  auto run = [](bool admission) {
    SchedulerConfig c;
    c.client_window = 0;  // the simulated clients read everything at once
    c.max_sequences_per_step = 4;
    c.max_waiting = 100;
    c.admission.enabled = admission;
    FakeKv kv(100000, 16);
    Scheduler s(c, kv);
    std::vector<Arrival> arrivals;
    add_warm_up(arrivals, 1000);
    for (int i = 0; i < 30; ++i) arrivals.push_back({2.0, request(i, RequestClass::Interactive, 20, 100)});
    return simulate(s, kv, arrivals, linear_cost(0.005, 0.001, 0.00005), {.learn = true, .allow_refusals = true});
  };
  const SimResult with = run(true), without = run(false);
  double worst = 0, worst_without = 0;
  for (auto& [id, st] : with.stats)
    if (id < 1000) worst = std::max(worst, st.first_token - st.arrival);
  for (auto& [id, st] : without.stats)
    if (id < 1000) worst_without = std::max(worst_without, st.first_token - st.arrival);
  std::printf("30 at once: %zu taken (worst TTFT %.0f ms), %zu refused at arrival; without the target worst TTFT %.0f ms\n",
              with.stats.size() - 8, worst * 1e3, with.refused.size(), worst_without * 1e3);
  EXPECT_GE(with.stats.size() - 8, 4u);
  EXPECT_GE(with.refused.size(), 10u);
  EXPECT_LE(worst, 0.4);
  EXPECT_GT(worst_without, 2.0);
  for (auto& [id, d] : with.refused) {
    EXPECT_EQ(d.outcome, AdmissionOutcome::Wait);
    EXPECT_GT(d.predicted_wait_s, 0.4);
    EXPECT_NE(d.message.find("predicted wait"), std::string::npos) << d.message;
  }
}

// With the queue policy, a stream the capacity cannot hold waits for one to end: admitted
// when one does within realtime_queue_s, refused as busy when none does.
TEST(Scheduler, QueuedRealtimeStreamWaitsForCapacity) {
  SchedulerConfig c;
  c.client_window = 0;
  c.admission.realtime_overload = OverloadPolicy::Queue;
  c.admission.realtime_queue_s = 1.0;
  FakeKv kv(100000, 16);
  Scheduler s(c, kv);
  std::vector<Arrival> arrivals;
  add_warm_up(arrivals, 1000);
  // 2 ms a step + 1 ms a row at 100 tokens/s: 0.2 + 0.1 per stream, so 5 fit under 75%.
  // Stream 0 is generated by about 2.3 s (playback ends at 2.5 s; generation runs ahead).
  for (int i = 0; i < 5; ++i) arrivals.push_back({1.0, request(i, RequestClass::Realtime, 8, 150 + 200 * i, 100)});
  arrivals.push_back({2.0, request(10, RequestClass::Realtime, 8, 1000, 100)});  // waits for stream 0
  arrivals.push_back({2.4, request(11, RequestClass::Realtime, 8, 100, 100)});  // the next is generated by about 3.9 s: too late
  const SimResult r = simulate(s, kv, arrivals, linear_cost(0.002, 0.001, 0.00005), {.learn = true, .allow_refusals = true});
  EXPECT_TRUE(r.refused.empty());
  ASSERT_TRUE(r.stats.count(10));
  EXPECT_EQ(r.stats.at(10).generated, 1000);
  EXPECT_GE(r.stats.at(10).first_token, r.stats.at(0).token_times.back()) << "it waited for stream 0 to end";
  ASSERT_EQ(r.refused_in_queue.size(), 1u);
  EXPECT_TRUE(r.refused_in_queue.count(11));
  EXPECT_EQ(s.admissions(RequestClass::Realtime, AdmissionOutcome::QueueTimeout), 1u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(r.stats.at(i).underruns, 0);
}

// The front door decides on the executor's last picture plus what it admitted since, so a
// burst between two steps does not all pass on one stale picture.
TEST(Admission, BoardCountsWhatItAdmittedUntilTheExecutorHasIt) {
  AdmissionConfig config;
  AdmissionBoard board(config);
  AdmissionRequest r;
  r.cls = RequestClass::Interactive;
  r.prompt_tokens = 10;
  r.max_new_tokens = 100;
  EXPECT_TRUE(board.admit(1, r, 0).admitted()) << "nothing published yet: nothing is known";
  board.arrived(1);
  auto picture = std::make_shared<LoadPicture>();
  picture->cost = {0.009, 0, 0, 0};
  picture->cost_ready = true;
  picture->slots = 2;
  board.publish(picture);
  // Two slots of 100 steps of 9 ms: the first two start at once, the third would wait 0.9 s.
  EXPECT_TRUE(board.admit(2, r, 0).admitted());
  EXPECT_TRUE(board.admit(3, r, 0).admitted());
  const AdmissionDecision third = board.admit(4, r, 0);
  EXPECT_EQ(third.outcome, AdmissionOutcome::Wait);
  EXPECT_NEAR(third.predicted_wait_s, 0.909, 0.01);
  // The executor has them (its next picture shows them); nothing is counted twice.
  board.arrived(2);
  board.arrived(3);
  auto later = std::make_shared<LoadPicture>(*picture);
  later->running = {{RequestClass::Interactive, 100, 0, 0}, {RequestClass::Interactive, 100, 0, 0}};
  board.publish(later);
  EXPECT_EQ(board.admit(5, r, 0).outcome, AdmissionOutcome::Wait);
  // Pending entries the executor never saw stop counting after a few seconds.
  board.publish(picture);
  EXPECT_TRUE(board.admit(6, r, 10).admitted());
}

}  // namespace
}  // namespace tutti
