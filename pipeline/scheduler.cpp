#include "pipeline/scheduler.h"

#include <algorithm>
#include <numeric>
#include <cmath>
#include <cstdio>
#include <limits>

namespace tutti {

Status SchedulerConfig::validate() const {
  if (max_sequences_per_step < 1) return Error{"max_sequences_per_step must be at least 1"};
  if (step_token_budget < max_sequences_per_step)
    return Error{"step_token_budget must be at least max_sequences_per_step (one token per sequence)"};
  if (prefill_chunk < 1) return Error{"prefill_chunk must be at least 1"};
  if (max_waiting < 0 || max_running < 1) return Error{"max_waiting must be >= 0 and max_running >= 1"};
  if (client_window < 0) return Error{"client_window must be >= 0 (0: no limit)"};
  return admission.validate();
}

Scheduler::Scheduler(SchedulerConfig config, KvCapacity& kv) : config_(config), kv_(kv) {
  if (config_.cost_prior) cost_.seed(*config_.cost_prior);
}

Status Scheduler::submit(SequenceRequest r, double now) {
  if (r.prompt.empty()) return Error{"request " + std::to_string(r.id) + " has an empty prompt"};
  if (r.prefill_only) r.max_new_tokens = 0;
  else if (r.max_new_tokens < 1) return Error{"max_new_tokens must be at least 1"};
  if (seqs_.count(r.id) || done_.count(r.id)) return Error{"request id " + std::to_string(r.id) + " is already in use"};
  if (r.cls == RequestClass::Realtime && !(r.pacing.tokens_per_second > 0 && r.pacing.low_watermark_s >= 0 &&
                                          r.pacing.high_watermark_s > r.pacing.low_watermark_s))
    return Error{"a realtime request needs a positive rate and low < high watermarks"};
  if (r.max_context > 0 && int64_t(r.prompt.size()) >= r.max_context)
    return Error{"this model's maximum context length is " + std::to_string(r.max_context) + " tokens; the prompt has " +
                 std::to_string(r.prompt.size()), ErrorCode::context_length_exceeded};
  if (r.max_context > 0 && !r.prefill_only)
    r.max_new_tokens = int(std::min<int64_t>(r.max_new_tokens, r.max_context - int64_t(r.prompt.size())));
  const int64_t total = int64_t(r.prompt.size()) + r.max_new_tokens;
  const int64_t capacity = int64_t(kv_.total_blocks()) * kv_.block_tokens();
  if (total > capacity)
    return Error{"request needs " + std::to_string(total) + " tokens of context; the KV cache holds " +
                 std::to_string(capacity), ErrorCode::context_length_exceeded};
  if (int(waiting_.size()) >= config_.max_waiting) {
    count(r.cls, AdmissionOutcome::QueueFull);
    last_decision_ = AdmissionDecision{AdmissionOutcome::QueueFull, 0, 0, 1,
                                       "busy: " + std::to_string(waiting_.size()) + " requests are already waiting"};
    return Error{last_decision_.message, ErrorCode::busy};
  }
  double admit_by = -1;
  const AdmissionRequest asked = admission_request(r);
  last_decision_ = decide(config_.admission, picture(), asked);
  if (last_decision_.admitted()) {
    count(r.cls, AdmissionOutcome::Admitted);
  } else if (last_decision_.outcome == AdmissionOutcome::Capacity &&
             config_.admission.realtime_overload == OverloadPolicy::Queue && config_.admission.realtime_queue_s > 0) {
    admit_by = now + config_.admission.realtime_queue_s;  // waits for a stream to end (admit_queued)
  } else {
    count(r.cls, last_decision_.outcome);
    return Error{last_decision_.message, ErrorCode::busy};
  }
  Sequence s;
  s.admit_by = admit_by;
  s.cached_at_submit = int(r.prompt.size()) - asked.prompt_tokens;
  s.tokens = r.prompt;
  s.stats.cls = r.cls;
  s.stats.arrival = now;
  s.req = std::move(r);
  const int64_t id = s.req.id;
  seqs_.emplace(id, std::move(s));
  waiting_.push_back(id);
  return Status::Ok();
}

void Scheduler::cancel(int64_t id) {
  auto it = seqs_.find(id);
  if (it != seqs_.end()) it->second.cancelled = true;
}

bool Scheduler::on_delivered(int64_t id, int delivered, double now) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return false;
  Sequence& s = it->second;
  s.delivered = std::clamp(delivered, s.delivered, s.generated);
  if (s.held_since >= 0 && !over_window(s)) {
    // Playback cannot run ahead of what the client has: a stream's clock waits while its own
    // client is not reading, so that wait is not counted as the server's underrun.
    if (s.stream_start >= 0) s.stream_start += now - s.held_since;
    s.held_since = -1;
    return true;
  }
  return false;
}

int Scheduler::held_for_client() const {
  return int(std::count_if(seqs_.begin(), seqs_.end(), [](const auto& kv) { return kv.second.held_since >= 0; }));
}

void Scheduler::remove(int64_t id) {
  auto it = seqs_.find(id);
  if (it != seqs_.end()) retire(it);
}

std::map<int64_t, Scheduler::Sequence>::iterator Scheduler::retire(std::map<int64_t, Sequence>::iterator it) {
  release(it->second);
  it->second.stats.finished = true;
  done_[it->first] = std::move(it->second.stats);  // the sequence is erased next
  return seqs_.erase(it);
}

void Scheduler::release(Sequence& s) {
  if (s.running) kv_.release(s.req.id);
  s.running = false;
  s.computed = 0;
  running_.erase(std::remove(running_.begin(), running_.end(), s.req.id), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), s.req.id), waiting_.end());
}

void Scheduler::preempt(Sequence& s, StepPlan& plan) {
  // Drop its cache; it goes back to the front of the queue and recomputes prompt and the
  // tokens generated so far when it runs again (its output so far stays delivered).
  release(s);
  s.stats.preemptions++;
  waiting_.push_front(s.req.id);
  plan.preempted.push_back(s.req.id);
}

double Scheduler::lead_of(const Sequence& s, double now) const {
  if (s.req.cls != RequestClass::Realtime || s.stream_start < 0) return std::numeric_limits<double>::infinity();
  const double rate = s.req.pacing.tokens_per_second;
  return s.generated / rate - (now - s.stream_start);
}

double Scheduler::lead(int64_t id, double now) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? 0 : lead_of(it->second, now);
}

void Scheduler::note_underrun(Sequence& s, double now) {
  // Playback has caught up with generation: the listener hears a gap. Playback waits for
  // data, so its clock moves by the gap.
  const double l = lead_of(s, now);
  if (l < -1e-9) {  // (not the rounding left by the last adjustment)
    s.stats.underruns++;
    s.stream_start += -l;
  }
}

int Scheduler::expected_tokens(const Sequence& s) const {
  if (s.req.prefill_only) return 1;
  return std::max(1, int(std::ceil(s.req.max_new_tokens * length_fraction_[size_t(s.req.cls)])));
}

AdmissionRequest Scheduler::admission_request(const SequenceRequest& r) const {
  AdmissionRequest a;
  a.cls = r.cls;
  // What the prefix cache already holds costs nothing (a voice turn prefilled while the user
  // spoke, the earlier turns of a conversation).
  a.prompt_tokens = int(r.prompt.size()) - kv_.cached_prefix(r.prompt);
  a.max_new_tokens = r.prefill_only ? 1 : r.max_new_tokens;
  if (r.cls == RequestClass::Realtime && !r.prefill_only) a.tokens_per_second = r.pacing.tokens_per_second;
  return a;
}

LoadPicture Scheduler::picture() const {
  LoadPicture p;
  p.cost = cost_.coefficients();
  p.cost_ready = cost_.ready();
  p.slots = std::min(config_.max_sequences_per_step, config_.max_running);
  p.step_token_budget = config_.step_token_budget;
  p.max_waiting = config_.max_waiting;
  p.length_fraction = length_fraction_;
  p.streams = streams();
  for (const auto& [id, s] : seqs_) {
    if (s.cancelled || s.admit_by >= 0 || !s.running) continue;
    p.running.push_back({s.req.cls, tokens_left(s), int64_t(s.tokens.size()), std::max(0, int(s.tokens.size()) - 1 - s.computed)});
  }
  for (int64_t id : waiting_) {
    const Sequence& s = seqs_.at(id);
    if (s.running || s.cancelled || s.admit_by >= 0) continue;
    p.waiting.push_back({s.req.cls, int(s.tokens.size()) - std::max(s.computed, s.cached_at_submit), expected_tokens(s)});
  }
  return p;
}

int Scheduler::tokens_left(const Sequence& s) const { return std::max(1, expected_tokens(s) - s.generated); }

std::vector<LoadPicture::Stream> Scheduler::streams() const {
  std::vector<LoadPicture::Stream> out;
  for (const auto& [id, s] : seqs_) {
    const double rate = s.req.pacing.tokens_per_second;
    if (s.cancelled || s.admit_by >= 0 || s.req.cls != RequestClass::Realtime || s.req.prefill_only || rate <= 0) continue;
    out.push_back(stream_for(rate, int64_t(s.tokens.size()), tokens_left(s)));
  }
  return out;
}

double Scheduler::realtime_load() const { return tutti::realtime_load(cost_.coefficients(), streams()); }

void Scheduler::admit_queued(StepPlan& plan, double now) {
  std::vector<int64_t> queued;
  for (int64_t id : waiting_)
    if (seqs_.at(id).admit_by >= 0) queued.push_back(id);
  if (queued.empty()) return;
  std::vector<LoadPicture::Stream> playing = streams();
  const double limit = 1 - config_.admission.realtime_headroom;
  for (int64_t id : queued) {
    Sequence& s = seqs_.at(id);
    playing.push_back(stream_for(s.req.pacing.tokens_per_second, int64_t(s.tokens.size()), tokens_left(s)));
    if (!cost_.ready() || tutti::realtime_load(cost_.coefficients(), playing) <= limit) {
      s.admit_by = -1;
      count(s.req.cls, AdmissionOutcome::Admitted);
      continue;
    }
    playing.pop_back();
    if (now >= s.admit_by) {
      count(s.req.cls, AdmissionOutcome::QueueTimeout);
      char buf[128];
      std::snprintf(buf, sizeof buf, "busy: no realtime capacity freed within %.1f s", config_.admission.realtime_queue_s);
      plan.refused.push_back({id, buf});
      retire(seqs_.find(id));
    }
  }
}

const SequenceStats* Scheduler::stats(int64_t id) const {
  if (auto it = seqs_.find(id); it != seqs_.end()) return &it->second.stats;
  if (auto it = done_.find(id); it != done_.end()) return &it->second;
  return nullptr;
}

StepPlan Scheduler::plan(double now) {
  StepPlan plan;
  // Cancellations first: their blocks are free for this very step.
  for (auto it = seqs_.begin(); it != seqs_.end();) {
    if (it->second.cancelled) {
      plan.cancelled.push_back(it->first);
      it = retire(it);
    } else {
      ++it;
    }
  }
  admit_queued(plan, now);

  // Rank every sequence that has work; note the smallest lead among the playing streams and
  // the shortest token period among the urgent ones (they bound this step's time).
  constexpr double kNone = std::numeric_limits<double>::infinity();
  double min_lead = kNone, urgent_period = kNone;
  std::vector<Candidate> cands;
  auto consider = [&](int64_t id) {
    Sequence& s = seqs_.at(id);
    if (s.admit_by >= 0) return;  // queued for realtime capacity
    if (over_window(s)) {  // its client is not reading: wait for credit (on_delivered)
      if (s.held_since < 0) s.held_since = now;
      return;
    }
    const bool decode = s.decoding();
    const double arrival = s.stats.arrival;
    switch (s.req.cls) {
      case RequestClass::Realtime:
        if (!decode) {
          cands.push_back({&s, 2, arrival});
        } else if (!config_.pacing) {
          cands.push_back({&s, 1, arrival});
        } else {
          note_underrun(s, now);
          const double l = lead_of(s, now);
          const double deadline = s.stream_start + s.generated / s.req.pacing.tokens_per_second;
          min_lead = std::min(min_lead, l);
          if (l < s.req.pacing.low_watermark_s) {
            cands.push_back({&s, 0, deadline});
            urgent_period = std::min(urgent_period, 1 / s.req.pacing.tokens_per_second);
          } else if (l < s.req.pacing.high_watermark_s) {
            cands.push_back({&s, 3, deadline});
          }
          // else: far enough ahead; skips this step
        }
        break;
      case RequestClass::Interactive:
        cands.push_back({&s, decode ? 1 : 2, arrival});
        break;
      case RequestClass::Batch:
        cands.push_back({&s, decode ? 4 : 5, arrival});
        break;
    }
  };
  for (int64_t id : running_) consider(id);
  for (int64_t id : waiting_) consider(id);
  std::stable_sort(cands.begin(), cands.end(),
                   [](const Candidate& a, const Candidate& b) { return a.tier != b.tier ? a.tier < b.tier : a.key < b.key; });
  // Streams between the watermarks ride along in steps that run anyway; on their own they
  // do not start one. Left alone they coast down to the low watermark and then run together,
  // so a step carries many streams at once instead of one each (a decode step costs about the
  // same for one sequence as for thirty).
  if (!cands.empty() && std::all_of(cands.begin(), cands.end(), [](const Candidate& c) { return c.tier == 3; }))
    cands.clear();

  // The step's time allowance while streams play (see the header): half the smallest lead,
  // and while one is urgent, its token period less the headroom.
  const bool shaping = config_.pacing && config_.admission.enabled && cost_.ready();
  const bool urgent = shaping && urgent_period < kNone;
  double allowance = kNone;
  if (shaping && min_lead < kNone) {
    allowance = 0.5 * std::max(0.0, min_lead);
    if (urgent) allowance = std::min(allowance, urgent_period * (1 - config_.admission.realtime_headroom));
    plan.allowance_s = allowance;
  }
  auto defer = [&](int tokens) {
    plan.deferred_tokens += tokens;
    deferred_tokens_ += uint64_t(tokens);
  };

  auto class_rank = [](RequestClass c) { return c == RequestClass::Realtime ? 0 : c == RequestClass::Interactive ? 1 : 2; };
  std::vector<int64_t> planned;
  auto is_planned = [&](int64_t id) { return std::find(planned.begin(), planned.end(), id) != planned.end(); };
  // The newest running sequence of a lower class than `s` that is not in this step.
  auto victim_for = [&](const Sequence& s) -> Sequence* {
    Sequence* victim = nullptr;
    for (int64_t id : running_) {
      Sequence& v = seqs_.at(id);
      if (&v == &s || is_planned(id)) continue;
      if (class_rank(v.req.cls) <= class_rank(s.req.cls)) continue;
      if (!victim || class_rank(v.req.cls) > class_rank(victim->req.cls) ||
          (class_rank(v.req.cls) == class_rank(victim->req.cls) && v.stats.arrival > victim->stats.arrival))
        victim = &v;
    }
    return victim;
  };
  int tokens_left = config_.step_token_budget, planned_blocks = 0;
  StepShape shape;
  for (const Candidate& c : cands) {
    if (int(plan.batch.chunks.size()) >= config_.max_sequences_per_step || tokens_left <= 0) break;
    Sequence& s = *c.seq;
    const bool realtime_decode = s.req.cls == RequestClass::Realtime && s.decoding();
    // Batch work sits out every step while a stream is urgent; its KV stays.
    if (urgent && s.req.cls == RequestClass::Batch) {
      if (!s.yielding) {
        s.yielding = true;
        s.stats.yields++;
        yields_++;
      }
      defer(s.decoding() ? 1 : std::min(int(s.tokens.size()) - s.computed, config_.prefill_chunk));
      continue;
    }
    if (!s.running && int(running_.size()) >= config_.max_running) {
      // A realtime stream takes a slot from batch work (recomputed later); others wait.
      Sequence* victim = s.req.cls == RequestClass::Realtime ? victim_for(s) : nullptr;
      if (!victim || victim->req.cls != RequestClass::Batch) continue;
      preempt(*victim, plan);
    }
    // A sequence that holds no KV yet starts from what the prefix cache has of its tokens.
    const bool admitting = !s.running && s.computed == 0;
    if (admitting) s.computed = kv_.adopt_prefix(s.req.id, s.tokens);
    auto unadmit = [&] {
      if (admitting && s.computed > 0) kv_.release(s.req.id);
      if (admitting) s.computed = 0;
    };
    const int remaining = int(s.tokens.size()) - s.computed;
    int n = s.decoding() ? 1 : std::min({remaining, config_.prefill_chunk, tokens_left});
    // Everything but realtime decodes fits the allowance, a prefill chunk cut finer to fit.
    // Work that has waited past its class's target gets the looser bound (half the smallest
    // lead, which no stream can underrun by) even while a stream is urgent: a stream short of
    // lead recovers more slowly, but text and a new stream's first token are never starved.
    const bool late = s.stats.first_token < 0 && s.req.cls != RequestClass::Batch &&
                      now - s.stats.arrival > config_.admission.wait_target_s[size_t(s.req.cls)];
    const double limit = late && allowance < kNone ? 0.5 * std::max(0.0, min_lead) : allowance;
    if (limit < kNone && !realtime_decode) {
      auto fits = [&](int k) {
        StepShape with = shape;
        with += chunk_shape(s.computed, k);
        return cost_.predict(with) <= limit;
      };
      if (!fits(n)) {
        if (n == 1 || !fits(1)) {
          defer(n);
          unadmit();
          continue;
        }
        int lo = 1, hi = n;  // fits(lo), !fits(hi)
        while (hi - lo > 1) {
          const int mid = (lo + hi) / 2;
          (fits(mid) ? lo : hi) = mid;
        }
        defer(n - lo);
        n = lo;
      }
    }
    auto free_blocks = [&] { return kv_.free_blocks() - planned_blocks; };
    int need = kv_.blocks_needed(s.req.id, s.computed + n);
    // Make room by preempting lower-class work that is not in this step, newest first.
    while (need > free_blocks()) {
      Sequence* victim = victim_for(s);
      if (!victim) break;
      preempt(*victim, plan);
    }
    // A prefill chunk may shrink to what fits; a decode needs its one token.
    while (n > 1 && need > free_blocks()) {
      n /= 2;
      need = kv_.blocks_needed(s.req.id, s.computed + n);
    }
    if (need > free_blocks()) {  // waits for blocks
      unadmit();
      continue;
    }
    if (admitting) {
      s.stats.cached_tokens = s.computed;
      cached_tokens_ += uint64_t(s.computed);
    }
    if (!s.decoding()) prefill_tokens_ += uint64_t(n);
    s.yielding = false;
    shape += chunk_shape(s.computed, n);
    SequenceChunk chunk;
    chunk.seq_id = s.req.id;
    chunk.start_pos = s.computed;
    chunk.tokens.assign(s.tokens.begin() + s.computed, s.tokens.begin() + s.computed + n);
    plan.batch.chunks.push_back(std::move(chunk));
    plan.samples.push_back(!s.req.prefill_only && s.computed + n == int(s.tokens.size()));
    plan.tokens += n;
    planned.push_back(s.req.id);
    planned_blocks += need;
    tokens_left -= n;
    if (!s.running) {
      s.running = true;
      waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), s.req.id), waiting_.end());
      running_.push_back(s.req.id);
    }
  }
  plan.shape = shape;
  plan.predicted_s = cost_.predict(shape);
  return plan;
}

std::vector<int64_t> Scheduler::on_step_done(const StepPlan& plan, const std::vector<TokenOutcome>& tokens, double now) {
  std::vector<int64_t> finished;
  size_t next = 0;
  for (size_t i = 0; i < plan.batch.chunks.size(); ++i) {
    const SequenceChunk& chunk = plan.batch.chunks[i];
    auto it = seqs_.find(chunk.seq_id);
    if (it == seqs_.end()) continue;
    Sequence& s = it->second;
    s.computed = chunk.start_pos + int(chunk.tokens.size());
    kv_.publish(s.req.id, s.tokens, s.computed);
    if (s.req.prefill_only && s.computed == int(s.tokens.size())) {  // its K/V are cached: done
      finished.push_back(s.req.id);
      retire(it);
      continue;
    }
    if (!plan.samples[i] || next >= tokens.size()) continue;
    const TokenOutcome& out = tokens[next++];
    if (s.req.cls == RequestClass::Realtime && s.stream_start >= 0) note_underrun(s, now);
    s.tokens.push_back(out.token);
    s.generated++;
    s.stats.generated = s.generated;
    s.stats.token_times.push_back(now);
    if (s.stats.first_token < 0) s.stats.first_token = now;
    if (s.req.cls == RequestClass::Realtime && s.stream_start < 0) s.stream_start = now;  // playback starts
    if (out.stop || s.generated >= s.req.max_new_tokens) {
      double& fraction = length_fraction_[size_t(s.req.cls)];
      fraction = 0.9 * fraction + 0.1 * double(s.generated) / s.req.max_new_tokens;
      finished.push_back(s.req.id);
      retire(it);
    }
  }
  return finished;
}

}  // namespace tutti
