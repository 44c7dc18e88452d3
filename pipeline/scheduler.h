// Continuous batching with playback-deadline pacing: which sequences run in the next
// forward step, and how many tokens each. Plain logic with no threads, clocks or model:
// the executor calls plan(now), runs the step, and reports back with on_step_done(), so
// tests drive it with a fake clock and a fake step cost.
//
// Classes and priority (highest first) when pacing is on:
//   1. realtime streams close to their deadline (playback lead under the low watermark),
//      earliest deadline first;
//   2. interactive decodes, then interactive and realtime prefills (time to first token);
//   3. realtime streams between the watermarks (these only join steps that run anyway);
//   4. batch decodes and prefills.
// Realtime streams at or above the high watermark skip the step, so their capacity goes to
// text. With pacing off, realtime streams are plain decodes that run every step.
//
// Every step respects a token budget: a long prompt is prefilled in chunks, so it never
// stalls tokens already streaming. KV blocks are checked before a sequence is planned; when
// they run out, batch work is preempted first (its cache is dropped and recomputed later).
//
// Real time under load (with pacing and admission on):
//   - the step cost is learned from every step (StepCostModel: record_step());
//   - admission (pipeline/admission.h) takes a realtime stream only while every admitted
//     stream still gets its rate with the configured headroom, and refuses any request
//     whose predicted wait to its first token exceeds its class's target;
//   - while realtime streams play, every step has a time allowance: half the smallest lead
//     (a step must never eat a stream's buffer), and while a stream is urgent (under its low
//     watermark) its token period less the headroom, so the stream's lead grows again.
//     Realtime decodes are never cut; every other chunk is added only as far as the
//     predicted step time stays within the allowance, a prefill chunk cut finer to fit. What
//     does not fit is deferred to a later step (counted);
//   - while any stream is urgent, batch sequences yield: they sit out the step with their
//     KV kept. A realtime stream that needs a slot or KV blocks preempts batch work instead
//     (its KV dropped, recomputed when it runs again).
//
// Not thread-safe: owned by the executor (one thread).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pipeline/admission.h"
#include "pipeline/batch.h"
#include "pipeline/expected.h"
#include "pipeline/kv_cache.h"
#include "pipeline/request_kinds.h"
#include "pipeline/step_cost.h"

namespace tutti {


// A realtime stream is consumed at `tokens_per_second` once its first token is out. Lead is
// how far generation is ahead of playback, in seconds of playback.
struct RealtimePacing {
  double tokens_per_second = 50;
  double low_watermark_s = 0.2;   // below: urgent
  double high_watermark_s = 0.6;  // at or above: skip steps
};

struct SchedulerConfig {
  int max_sequences_per_step = 32;
  int step_token_budget = 512;   // decode tokens + prefill chunk tokens per step
  int prefill_chunk = 256;       // most prompt tokens of one sequence per step
  int max_waiting = 64;          // admission queue; beyond it requests are refused (busy)
  int max_running = 64;          // sequences holding KV at once
  bool pacing = true;            // false: realtime streams decode every step (the baseline)
  // Flow control: the most tokens a sequence may be ahead of what its client has received
  // (on_delivered). A client that stops reading holds its own sequence (KV kept) after this
  // many tokens instead of filling queues between the stages; 0: no limit.
  int client_window = 256;
  AdmissionConfig admission;  // realtime capacity, wait targets (with pacing: step allowances)
  // A step-cost model to start from (a reload of the same weights on the same machine:
  // StepCostModel::seed); none: learned from the first steps.
  std::optional<StepCostModel::Coefficients> cost_prior;
  Status validate() const;
};

struct SequenceRequest {
  int64_t id = 0;
  RequestClass cls = RequestClass::Interactive;
  std::vector<int32_t> prompt;
  int max_new_tokens = 16;
  RealtimePacing pacing;  // realtime only
  // Compute the prompt's K/V and finish without sampling (max_new_tokens is ignored): its full
  // blocks stay in the prefix cache for a request that will start with the same tokens (a
  // user's speech prefilled while they are still talking).
  bool prefill_only = false;
  // The model's context (its training length), for text answers: a prompt that fills it is
  // refused as context_length_exceeded (as is a request longer than the KV cache), and the
  // answer is cut where the context ends (finish reason length); 0: the KV cache alone bounds
  // it (media answers, which must come out whole).
  int64_t max_context = 0;
};

// What the scheduler needs from the KV cache; PagedKvCache through KvCacheCapacity, a
// fake in tests. Blocks are reserved by the forward pass, released by the scheduler.
class KvCapacity {
 public:
  virtual ~KvCapacity() = default;
  virtual int free_blocks() const = 0;
  virtual int total_blocks() const = 0;
  virtual int block_tokens() const = 0;
  virtual int blocks_needed(int64_t seq, int n_tokens) const = 0;
  virtual void release(int64_t seq) = 0;
  // Prefix cache (see PagedKvCache): positions of `tokens` a new sequence finds cached, and
  // publishing what a step computed. Without one: nothing is cached.
  virtual int adopt_prefix(int64_t /*seq*/, const std::vector<int32_t>& /*tokens*/) { return 0; }
  virtual void publish(int64_t /*seq*/, const std::vector<int32_t>& /*tokens*/, int /*computed*/) {}
  // Positions of `tokens` adopt_prefix would find now (nothing is adopted).
  virtual int cached_prefix(const std::vector<int32_t>& /*tokens*/) const { return 0; }
};

class KvCacheCapacity final : public KvCapacity {
 public:
  explicit KvCacheCapacity(PagedKvCache& kv) : kv_(kv) {}
  int free_blocks() const override { return kv_.free_blocks(); }
  int total_blocks() const override { return kv_.total_blocks(); }
  int block_tokens() const override { return kv_.config().block_tokens; }
  int blocks_needed(int64_t seq, int n) const override { return kv_.blocks_needed(seq, n); }
  void release(int64_t seq) override { kv_.release(seq); }
  int adopt_prefix(int64_t seq, const std::vector<int32_t>& tokens) override { return kv_.adopt_prefix(seq, tokens); }
  void publish(int64_t seq, const std::vector<int32_t>& tokens, int computed) override { kv_.publish(seq, tokens, computed); }
  int cached_prefix(const std::vector<int32_t>& tokens) const override { return kv_.cached_prefix(tokens); }

 private:
  PagedKvCache& kv_;
};

// One step: the batch to run, and which of its chunks produce a token (their last logits
// are sampled). Sequences dropped since the last plan are listed so the caller can tell
// their clients.
struct StepPlan {
  struct Refusal {
    int64_t id;
    std::string message;
  };
  Batch batch;
  std::vector<bool> samples;            // per chunk
  std::vector<int64_t> preempted;       // cache dropped this step; will be recomputed
  std::vector<int64_t> cancelled;       // removed this step, KV released
  std::vector<Refusal> refused;         // queued for realtime capacity past their time: removed, busy
  int tokens = 0;
  StepShape shape;                      // what the cost model reads
  double predicted_s = 0;               // the cost model's prediction for this step
  double allowance_s = -1;              // the time budget realtime streams gave it; -1: none
  int deferred_tokens = 0;              // tokens of non-realtime work that did not fit the allowance
  bool empty() const { return batch.chunks.empty(); }
};

// Outcome of a step for one sequence that produced a token.
struct TokenOutcome {
  int64_t seq = 0;
  int32_t token = 0;
  bool stop = false;  // the executor saw a stop token: finish the sequence
};

struct SequenceStats {
  RequestClass cls = RequestClass::Interactive;
  double arrival = 0;
  double first_token = -1;          // time the first token came out, -1 if none yet
  std::vector<double> token_times;  // when each generated token came out
  int generated = 0;
  int underruns = 0;                // realtime: times playback caught up with generation
  int preemptions = 0;               // KV dropped for another sequence (recomputed later)
  int yields = 0;                    // times it sat out steps (KV kept) while a stream was urgent
  int cached_tokens = 0;            // prompt positions found in the prefix cache (last admission)
  bool finished = false;
};

class Scheduler {
 public:
  Scheduler(SchedulerConfig config, KvCapacity& kv);

  // Admits a request, or refuses it with an Error saying why (busy: the queue is full, the
  // realtime capacity cannot hold the stream, or the predicted wait exceeds the class's
  // target (last_decision() has the prediction); prompt plus max_new_tokens can never fit
  // the cache; duplicate id; empty prompt). A realtime stream the capacity cannot hold is
  // queued instead when the policy says so, and refused by a later plan() if no capacity
  // frees in time.
  Status submit(SequenceRequest request, double now);
  const AdmissionDecision& last_decision() const { return last_decision_; }
  // Marks a sequence for removal; the next plan() releases its KV. Unknown ids are ignored.
  void cancel(int64_t id);
  // The client of `id` has received its first `delivered` generated tokens (credit for
  // flow control; see SchedulerConfig::client_window). Unknown ids are ignored. Returns true
  // when this credit released a held sequence (it has work again).
  bool on_delivered(int64_t id, int delivered, double now);
  // Removes a sequence at once (its step failed): KV released, stats kept.
  void remove(int64_t id);
  // Drops the kept stats of a finished sequence (a long-running server calls this once it
  // has read them, so finished sequences cost nothing).
  void forget(int64_t id) { done_.erase(id); }

  StepPlan plan(double now);
  // Applies a completed step: tokens for the sampled chunks, in the order of plan.samples.
  // Returns the ids of sequences that finished (KV released).
  std::vector<int64_t> on_step_done(const StepPlan& plan, const std::vector<TokenOutcome>& tokens, double now);
  // The measured time of a step that ran (the cost model learns from it).
  void record_step(const StepPlan& plan, double seconds) { cost_.observe(plan.shape, seconds); }
  const StepCostModel& cost_model() const { return cost_; }
  // The load as admission sees it (also published to the front door).
  LoadPicture picture() const;
  // Admission decisions since start, by class and outcome (Admitted counts admissions).
  uint64_t admissions(RequestClass c, AdmissionOutcome o) const { return admissions_[size_t(c)][size_t(o)]; }
  uint64_t deferred_tokens_total() const { return deferred_tokens_; }
  uint64_t yields_total() const { return yields_; }
  // The admitted realtime streams' share of the model's time (see admission.h).
  double realtime_load() const;

  // Realtime lead in seconds at `now` (generated minus played, at the stream's rate).
  double lead(int64_t id, double now) const;
  const SequenceStats* stats(int64_t id) const;
  int waiting() const { return int(waiting_.size()); }
  // Sequences that may not advance until their client reads (client_window reached).
  int held_for_client() const;
  int running() const { return int(running_.size()); }
  bool idle() const { return waiting_.empty() && running_.empty(); }
  // Prompt tokens computed, and prompt tokens found in the prefix cache instead, since start.
  uint64_t prefill_tokens_total() const { return prefill_tokens_; }
  uint64_t cached_tokens_total() const { return cached_tokens_; }
  const SchedulerConfig& config() const { return config_; }

 private:
  struct Sequence {
    SequenceRequest req;
    std::vector<int32_t> tokens;  // prompt + generated: everything whose KV must exist
    int computed = 0;             // tokens with KV in the cache
    int generated = 0;
    double stream_start = -1;     // realtime: playback clock origin (moves on underrun)
    int delivered = 0;            // generated tokens the client has received
    double held_since = -1;       // when the client window stopped it; -1: not held
    double admit_by = -1;         // queued for realtime capacity until then; -1: admitted
    int cached_at_submit = 0;     // prompt positions the prefix cache held when it came (admission's estimate)
    bool yielding = false;        // sat out the last step for an urgent stream
    bool cancelled = false;
    bool running = false;
    SequenceStats stats;
    bool decoding() const { return computed == int(tokens.size()) - 1 && generated > 0; }
  };
  struct Candidate {
    Sequence* seq;
    int tier;         // lower runs first
    double key;       // order inside the tier
  };

  void release(Sequence& s);
  // Ends a sequence: KV released, stats kept in done_ until forget(). Returns the next entry.
  std::map<int64_t, Sequence>::iterator retire(std::map<int64_t, Sequence>::iterator it);
  void preempt(Sequence& s, StepPlan& plan);
  double lead_of(const Sequence& s, double now) const;
  bool over_window(const Sequence& s) const {
    return config_.client_window > 0 && s.generated - s.delivered >= config_.client_window;
  }
  void note_underrun(Sequence& s, double now);
  int expected_tokens(const Sequence& s) const;
  int tokens_left(const Sequence& s) const;  // expected_tokens less those generated (at least 1)
  // The admitted realtime streams, as admission counts them (not those queued for capacity).
  std::vector<LoadPicture::Stream> streams() const;
  AdmissionRequest admission_request(const SequenceRequest& r) const;
  void count(RequestClass c, AdmissionOutcome o) { admissions_[size_t(c)][size_t(o)]++; }
  // Queued realtime streams: admitted once capacity frees, refused when their time is up.
  void admit_queued(StepPlan& plan, double now);

  SchedulerConfig config_;
  KvCapacity& kv_;
  std::map<int64_t, Sequence> seqs_;  // every sequence not yet finished
  std::deque<int64_t> waiting_;       // admitted, holding no KV (arrival order; preempted go first)
  std::vector<int64_t> running_;      // holding KV
  std::map<int64_t, SequenceStats> done_;
  uint64_t prefill_tokens_ = 0, cached_tokens_ = 0;
  StepCostModel cost_;
  AdmissionDecision last_decision_;
  std::array<std::array<uint64_t, kAdmissionOutcomes>, 3> admissions_{};
  std::array<double, 3> length_fraction_ = {1, 1, 1};  // generated / max_new_tokens, by class
  uint64_t deferred_tokens_ = 0, yields_ = 0;
};

}  // namespace tutti
