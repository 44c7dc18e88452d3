#include "pipeline/admission.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <queue>

namespace tutti {

const char* admission_outcome_name(AdmissionOutcome o) {
  switch (o) {
    case AdmissionOutcome::Admitted: return "admitted";
    case AdmissionOutcome::Capacity: return "capacity";
    case AdmissionOutcome::Wait: return "wait";
    case AdmissionOutcome::QueueFull: return "queue_full";
    case AdmissionOutcome::QueueTimeout: return "queue_timeout";
  }
  return "admitted";
}

Status AdmissionConfig::validate() const {
  if (!(realtime_headroom >= 0 && realtime_headroom < 1)) return Error{"admission.realtime_headroom must be in [0, 1)"};
  if (!(realtime_queue_s >= 0)) return Error{"admission.realtime_queue_ms must be >= 0"};
  for (double t : wait_target_s)
    if (!(t > 0)) return Error{"admission wait targets must be positive"};
  return Status::Ok();
}

LoadPicture::Stream stream_for(double rate, int64_t context_now, int tokens_left) {
  return {rate, context_now + tokens_left / 2, tokens_left / rate};
}

double realtime_load(const StepCostModel::Coefficients& c, const std::vector<LoadPicture::Stream>& streams) {
  double max_rate = 0, rows = 0;
  for (const auto& s : streams) {
    max_rate = std::max(max_rate, s.tokens_per_second);
    rows += s.tokens_per_second * (c.per_row + c.per_context_token * double(s.context));
  }
  return max_rate * c.base + rows;
}

namespace {

// Realtime and interactive work share the tiers ahead of batch work; batch waits for all.
bool blocks(RequestClass ahead, RequestClass mine) { return mine == RequestClass::Batch || ahead != RequestClass::Batch; }

std::string seconds_text(double s) {
  char buf[32];
  if (s < 10) std::snprintf(buf, sizeof buf, "%.0f ms", s * 1000);
  else std::snprintf(buf, sizeof buf, "%.1f s", s);
  return buf;
}

}  // namespace

double predicted_wait(const LoadPicture& load, const AdmissionRequest& r) {
  const StepCostModel::Coefficients& c = load.cost;
  // Slots: the sequences that run in the steps ahead of this one's start, each until its
  // expected end; the new request takes the first slot that frees after everyone queued
  // ahead of it has taken theirs. Counted in steps.
  std::priority_queue<int64_t, std::vector<int64_t>, std::greater<int64_t>> ends;
  int64_t context = 0, prompt_ahead = 0;
  int rows = 0;
  for (const auto& s : load.running) {
    if (!blocks(s.cls, r.cls)) continue;
    ends.push(std::max(1, s.expected_left));
    context += s.context;
    prompt_ahead += s.prompt_left;
    rows++;
  }
  const int slots = std::max(1, load.slots);
  auto take_slot = [&](int64_t length) {
    int64_t start = 0;
    if (int(ends.size()) >= slots) {
      start = ends.top();
      ends.pop();
    }
    ends.push(start + std::max<int64_t>(1, length));
    return start;
  };
  for (const auto& w : load.waiting) {
    if (!blocks(w.cls, r.cls)) continue;
    prompt_ahead += w.prompt_left;
    take_slot(w.expected_tokens);
    rows++;
  }
  const int64_t start_step = take_slot(1);
  const int64_t prompt = prompt_ahead + std::max(0, r.prompt_tokens);
  // A typical step while it waits: the slots full of what is ahead (their average context).
  const int typical_rows = std::clamp(rows, 1, slots);
  const int64_t typical_context = rows > 0 ? context / std::max(1, int(load.running.size())) * typical_rows : 0;
  const double step_s = c.base + c.per_row * typical_rows + c.per_context_token * double(typical_context);
  const int64_t prefill_steps = (prompt + std::max(1, load.step_token_budget) - 1) / std::max(1, load.step_token_budget);
  double wait = double(std::max<int64_t>(start_step, prefill_steps - 1) + 1) * step_s + double(prompt) * c.per_prefill_token;
  // Realtime streams take their share of every second first.
  const double rt = std::min(0.9, realtime_load(c, load.streams));
  return wait / (1 - rt);
}

AdmissionDecision decide(const AdmissionConfig& config, const LoadPicture& load, const AdmissionRequest& r) {
  AdmissionDecision d;
  const size_t cls = size_t(r.cls);
  if (int(load.waiting.size()) >= load.max_waiting) {  // the hard bound, whatever the model says
    d.outcome = AdmissionOutcome::QueueFull;
    d.retry_after_s = 1;
    d.message = "busy: " + std::to_string(load.waiting.size()) + " requests are already waiting";
    return d;
  }
  if (!config.enabled || !load.cost_ready) return d;
  if (r.cls == RequestClass::Realtime && r.tokens_per_second > 0) {
    std::vector<LoadPicture::Stream> with = load.streams;
    with.push_back(stream_for(r.tokens_per_second, r.prompt_tokens, r.max_new_tokens));
    d.realtime_load = realtime_load(load.cost, with);
    const double limit = 1 - config.realtime_headroom;
    if (d.realtime_load > limit) {
      d.outcome = AdmissionOutcome::Capacity;
      // Capacity returns when the stream closest to its end finishes.
      double soonest = 0;
      for (const auto& s : load.streams) soonest = soonest == 0 ? s.seconds_left : std::min(soonest, s.seconds_left);
      d.retry_after_s = std::max(0.5, soonest);
      char buf[160];
      std::snprintf(buf, sizeof buf, "busy: %zu realtime streams with this one would need %.0f%% of the model's time (limit %.0f%%)",
                    with.size(), d.realtime_load * 100, limit * 100);
      d.message = buf;
      return d;
    }
  } else {
    d.realtime_load = realtime_load(load.cost, load.streams);
  }
  d.predicted_wait_s = predicted_wait(load, r);
  const double target = config.wait_target_s[cls];
  // The target bounds the wait that others cause: a long prompt's own prefill, which it
  // would take on an idle server too, is never a reason to refuse it.
  LoadPicture alone;
  alone.cost = load.cost;
  alone.slots = load.slots;
  alone.step_token_budget = load.step_token_budget;
  const double own_s = predicted_wait(alone, r);
  if (d.predicted_wait_s - own_s > target) {
    d.outcome = AdmissionOutcome::Wait;
    d.retry_after_s = std::max(0.5, d.predicted_wait_s - target);
    d.message = std::string("busy: the predicted wait for a first token is ") + seconds_text(d.predicted_wait_s) +
                ", over the " + request_class_name(r.cls) + " target of " + seconds_text(target);
  }
  return d;
}

void AdmissionBoard::publish(std::shared_ptr<const LoadPicture> picture) {
  std::lock_guard<std::mutex> lock(mu_);
  picture_ = std::move(picture);
}

AdmissionDecision AdmissionBoard::admit(int64_t id, const AdmissionRequest& r, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  AdmissionDecision d = decide_locked(r, now);
  if (d.admitted()) pending_[id] = Pending{r, now};
  return d;
}

AdmissionDecision AdmissionBoard::probe(const AdmissionRequest& r, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  return decide_locked(r, now);
}

AdmissionDecision AdmissionBoard::decide_locked(const AdmissionRequest& r, double now) {
  // A request the executor never saw (refused by the encoder, cancelled on the way) stops
  // counting after a few seconds.
  for (auto it = pending_.begin(); it != pending_.end();) it = now - it->second.at > 5 ? pending_.erase(it) : std::next(it);
  if (!picture_) return {};
  LoadPicture load = *picture_;
  for (const auto& [pid, p] : pending_) {
    load.waiting.push_back({p.request.cls, p.request.prompt_tokens,
                            std::max(1, int(std::ceil(p.request.max_new_tokens * load.length_fraction[size_t(p.request.cls)])))});
    if (p.request.cls == RequestClass::Realtime && p.request.tokens_per_second > 0)
      load.streams.push_back(stream_for(p.request.tokens_per_second, p.request.prompt_tokens, p.request.max_new_tokens));
  }
  AdmissionDecision d = decide(config_, load, r);
  // A realtime answer the capacity cannot hold now may wait for it in the scheduler.
  if (d.outcome == AdmissionOutcome::Capacity && config_.realtime_overload == OverloadPolicy::Queue)
    d = AdmissionDecision{};
  return d;
}

std::shared_ptr<const LoadPicture> AdmissionBoard::picture() {
  std::lock_guard<std::mutex> lock(mu_);
  return picture_;
}

void AdmissionBoard::arrived(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  pending_.erase(id);
}

}  // namespace tutti
