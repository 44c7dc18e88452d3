#include "pipeline/engine.h"

#include <algorithm>
#include <cmath>

#include <chrono>

namespace tutti {

Engine::Engine(Model& model, std::unique_ptr<PagedKvCache> kv, SchedulerConfig config, const Tokenizer* tokenizer,
               std::shared_ptr<ServingMetrics> metrics, std::shared_ptr<AdmissionBoard> board)
    : model_(model), kv_(std::move(kv)), capacity_(*kv_), scheduler_(config, capacity_), tokenizer_(tokenizer),
      metrics_(std::move(metrics)), board_(std::move(board)) {
  if (metrics_) {
    metrics_->kv_blocks_total = kv_->total_blocks();
    metrics_->realtime_limit = 1 - config.admission.realtime_headroom;
  }
}

void Engine::publish_load(int64_t arrived) {
  if (!board_) return;
  board_->publish(std::make_shared<const LoadPicture>(scheduler_.picture()));
  if (arrived) board_->arrived(arrived);
}

void Engine::record(const std::vector<EngineEvent>& events, const EngineStepStats& stats, double now) {
  ServingMetrics& m = *metrics_;
  if (stats.sequences > 0) {
    m.steps++;
    m.step_seconds.observe(stats.seconds);
    m.step_batch.observe(stats.sequences);
  }
  for (const EngineEvent& e : events) {
    const SequenceStats* st = scheduler_.stats(e.seq);
    if (!st) continue;
    const size_t c = size_t(st->cls);
    if (e.token >= 0) {
      m.generated_tokens[c]++;
      const auto& t = st->token_times;
      if (t.size() == 1) m.ttft[c].observe(t[0] - st->arrival);
      if (t.size() >= 2) m.itl[c].observe(t.back() - t[t.size() - 2]);
      if (st->cls == RequestClass::Realtime) m.realtime_lead.observe(std::max(0.0, scheduler_.lead(e.seq, now)));
    }
    if (e.finish != FinishReason::None) {
      m.requests_finished[c]++;
      if (st->cls == RequestClass::Realtime) m.realtime_underruns += uint64_t(st->underruns);
    }
  }
  m.queue_depth = scheduler_.waiting();
  m.running = scheduler_.running();
  m.held_for_client = scheduler_.held_for_client();
  m.kv_blocks_used = kv_->total_blocks() - kv_->free_blocks();
  m.kv_blocks_cached = kv_->cached_blocks();
  m.prefill_tokens = scheduler_.prefill_tokens_total();
  m.prefix_cache_hit_tokens = scheduler_.cached_tokens_total();
  record_admission();
}

void Engine::record_admission() {
  ServingMetrics& m = *metrics_;
  for (int c = 0; c < ServingMetrics::kClasses; ++c)
    for (int o = 0; o < kAdmissionOutcomes; ++o)
      m.admission_engine[size_t(c)][size_t(o)] = scheduler_.admissions(RequestClass(c), AdmissionOutcome(o));
  m.deferred_tokens = scheduler_.deferred_tokens_total();
  m.batch_yields = scheduler_.yields_total();
  const StepCostModel& cost = scheduler_.cost_model();
  const auto& k = cost.coefficients();
  m.step_cost[0] = k.base, m.step_cost[1] = k.per_row, m.step_cost[2] = k.per_prefill_token, m.step_cost[3] = k.per_context_token;
  m.step_cost_error = cost.relative_error();
  m.step_predicted_total = cost.predicted_seconds_total();
  m.step_measured_total = cost.measured_seconds_total();
  m.realtime_load = scheduler_.realtime_load();
}

Status Engine::submit(EngineRequest r, double now) {
  const int n_vocab = int(model_.hparams().n_vocab);
  if (Status s = validate(r.sampling, n_vocab); !s) return s;
  for (int32_t t : r.seq.prompt)
    if (t < 0 || t >= n_vocab) return Error{"prompt token " + std::to_string(t) + " is outside the vocabulary"};
  const int64_t id = r.seq.id;
  if (live_.count(id)) return Error{"request id " + std::to_string(id) + " is already in use"};
  const RequestClass cls = r.seq.cls;
  const size_t prompt = r.seq.prompt.size();
  if (r.media) {
    const MediaLayout& m = *r.media;
    bool inside = m.size >= 1 && m.stages >= 1 && m.end_token < n_vocab &&
                  (m.slot_offsets.empty() || m.slot_offsets.size() == size_t(m.stages));
    for (int s = 0; inside && s < m.stages; ++s)
      inside = m.slot_offset(s) >= 0 && int64_t(m.slot_offset(s)) + m.size <= n_vocab;
    if (!inside) return Error{"the media layout lies outside the vocabulary"};
    if (m.end_token >= 0) r.sampling.stop_tokens.push_back(m.end_token);
    r.stop_at_eog = false;  // a media answer ends at its own end token or its length
  }
  const Status admitted = scheduler_.submit(std::move(r.seq), now);
  publish_load(id);  // with it (or without it): the front door no longer counts it as on its way
  if (!admitted) {
    if (metrics_) {
      metrics_->requests_refused[size_t(cls)]++;
      record_admission();
    }
    return admitted;
  }
  Sampler sampler(std::move(r.sampling));
  live_.emplace(id, Live{std::move(sampler), r.stop_at_eog, cls, r.media, r.modality});
  if (metrics_) {
    metrics_->prompt_tokens[size_t(cls)] += prompt;
    metrics_->queue_depth = scheduler_.waiting();
  }
  return Status::Ok();
}

std::vector<EngineEvent> Engine::fail_all(const std::string& reason) {
  std::vector<EngineEvent> events;
  for (const auto& [id, live] : live_) {
    scheduler_.remove(id);
    events.push_back({id, -1, -1, FinishReason::Error, reason, ErrorCode::generation_failed});
  }
  live_.clear();
  if (metrics_) record(events, EngineStepStats{}, 0);  // counted as finished; gauges: nothing runs
  for (const EngineEvent& e : events) scheduler_.forget(e.seq);
  return events;
}

std::vector<EngineEvent> Engine::step(double now, EngineStepStats* stats) {
  std::vector<EngineEvent> events;
  StepPlan plan = scheduler_.plan(now);
  for (int64_t id : plan.cancelled) {
    live_.erase(id);
    events.push_back({id, -1, -1, FinishReason::Cancelled, {}});
  }
  for (const StepPlan::Refusal& r : plan.refused) {  // queued for realtime capacity too long
    live_.erase(r.id);
    events.push_back({r.id, -1, -1, FinishReason::Error, r.message, ErrorCode::busy});
  }
  if (plan.empty()) {
    if (stats) *stats = EngineStepStats{};
    if (metrics_) record(events, EngineStepStats{}, now);  // gauges move without steps too
    for (const EngineEvent& e : events) scheduler_.forget(e.seq);  // all are cancellations or refusals
    if (!events.empty()) publish_load();
    return events;
  }

  const auto t0 = std::chrono::steady_clock::now();
  const int n_vocab = int(model_.hparams().n_vocab);
  if (step_hook_) step_hook_(plan);
  if (Status s = model_.forward(plan.batch, *kv_, logits_); !s) {
    // A failed step ends the sequences it carried, each with the reason; the rest go on.
    for (const SequenceChunk& c : plan.batch.chunks) {
      scheduler_.remove(c.seq_id);
      scheduler_.forget(c.seq_id);
      live_.erase(c.seq_id);
      events.push_back({c.seq_id, -1, -1, FinishReason::Error, s.message(), ErrorCode::generation_failed});
    }
    return events;
  }
  std::vector<TokenOutcome> outcomes;
  std::vector<size_t> event_of;  // index into events for each outcome
  std::vector<int64_t> poisoned;  // sequences whose logits were not finite
  for (size_t i = 0; i < plan.batch.chunks.size(); ++i) {
    if (!plan.samples[i]) continue;
    const int64_t id = plan.batch.chunks[i].seq_id;
    Live& live = live_.at(id);
    if (const float* row = logits_.last_of(i, plan.batch); !std::all_of(row, row + n_vocab, [](float x) { return std::isfinite(x); })) {
      // The runtime guard: never sample from NaN/Inf. The request ends with the reason; the
      // modality is reported so routing can move it to a fallback.
      poisoned.push_back(id);
      events.push_back({id, -1, -1, FinishReason::Error,
                        std::string("the model's logits for this ") + modality_name(live.modality) +
                            " request are not finite (NaN or Inf); the modality is marked unhealthy",
                        ErrorCode::generation_failed});
      if (nonfinite_hook_) nonfinite_hook_(live.modality);
      continue;
    }
    if (live.media) {  // this slot's stage, and the end token at a frame boundary after the first frame
      const MediaLayout& m = *live.media;
      const SequenceStats* st = scheduler_.stats(id);
      const int generated = st ? st->generated : 0;
      const int stage = generated % m.stages;
      std::vector<TokenRange> allowed = {{m.slot_offset(stage), m.slot_offset(stage) + m.size}};
      // Never before one whole frame: a media answer is never empty (no 200 with no audio).
      if (stage == 0 && generated > 0 && m.end_token >= 0) allowed.push_back({m.end_token, m.end_token + 1});
      live.sampler.set_allowed(std::move(allowed));
    }
    const int32_t token = live.sampler.sample(logits_.last_of(i, plan.batch), n_vocab);
    const bool stop = token < 0 || live.sampler.is_stop(token) ||
                      (live.stop_at_eog && tokenizer_ && tokenizer_->is_end_of_generation(token));
    outcomes.push_back({id, token < 0 ? 0 : token, stop});
    const SequenceStats* st = scheduler_.stats(id);
    EngineEvent e{id, stop ? -1 : token, st ? st->generated : 0, FinishReason::None, {}};
    if (stop) e.finish = FinishReason::Stop;
    event_of.push_back(events.size());
    events.push_back(e);
  }
  // The tokens come out when the step ends: `now` was its start (a stream's playback, and a
  // request's first token, are timed from there).
  const double forward_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double done_at = now + forward_s;
  for (int64_t id : poisoned) {  // out of the step before it is accounted: they sampled nothing
    scheduler_.remove(id);
    live_.erase(id);
  }
  const std::vector<int64_t> finished = scheduler_.on_step_done(plan, outcomes, done_at);
  for (int64_t id : finished) {
    live_.erase(id);
    bool told = false;
    for (size_t k : event_of)
      if (events[k].seq == id) {
        told = true;
        if (events[k].finish == FinishReason::None) events[k].finish = FinishReason::Length;
      }
    if (!told) events.push_back({id, -1, -1, FinishReason::Length, {}});  // a prefill-only request is done
  }
  EngineStepStats step_stats{int(plan.batch.chunks.size()), plan.tokens,
                             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
  scheduler_.record_step(plan, step_stats.seconds);
  if (stats) *stats = step_stats;
  if (metrics_) record(events, step_stats, done_at);
  for (const EngineEvent& e : events)
    if (e.finish != FinishReason::None) scheduler_.forget(e.seq);
  publish_load();
  return events;
}

}  // namespace tutti
