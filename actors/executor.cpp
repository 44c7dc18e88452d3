// Executor: the engine's step loop on its own thread (see actors.hpp).
#include "actors/pipeline_actors.hpp"

#include <chrono>
#include <cstdio>
#include <set>

#include "pipeline/engine.h"

namespace tutti::actors {

namespace {

// ---- executor: the engine's step loop on its own thread.
struct executor_state {
  std::shared_ptr<const Tokenizer> tokenizer;  // outlives the engine, which borrows it
  std::shared_ptr<Engine> engine;             // used by this actor's thread only
  std::shared_ptr<ServingMetrics> metrics;
  decoder_actor decoder;
  bool step_queued = false;   // a step_atom is in the mailbox
  bool relook_armed = false;  // a delayed relook_atom is on its way
  // Cancels that arrived before their request (cancel travels at high priority and may
  // overtake the submit): the submit is answered with "cancelled" at once.
  std::set<int64_t> early_cancels;
  ExecutorCanaries canaries;
  std::unique_ptr<PagedKvCache> canary_kv;  // the canaries' own few blocks, never the serving pool
  std::shared_ptr<const codecs::ModelCodecs> codecs;
  ~executor_state() {
    // The engine borrows the weights canaries.keep_alive holds: it goes first.
    engine.reset();
    canary_kv.reset();
  }
};

// Ends a request the engine never took (cancelled before it arrived, or refused) with one
// final event, sent the same way as a step's.
void end_unadmitted(executor_actor::stateful_pointer<executor_state> self, int64_t id, FinishReason finish,
                    ErrorCode code, std::string error) {
  step_events ev;
  ev.request = {id};
  ev.token = {-1};
  ev.finish = {finish};
  ev.code = {code};
  ev.error = {std::move(error)};
  self->send(self->state.decoder, events_atom::value, std::move(ev));
}

std::chrono::milliseconds canary_period(double seconds) { return std::chrono::milliseconds(std::max<int64_t>(1, int64_t(seconds * 1000))); }

void schedule_step(executor_actor::stateful_pointer<executor_state> self) {
  if (self->state.step_queued) return;
  self->state.step_queued = true;
  self->send(self, step_atom::value);
}

executor_actor::behavior_type executor_impl(executor_actor::stateful_pointer<executor_state> self,
                                            std::shared_ptr<Engine> engine, std::shared_ptr<const Tokenizer> tokenizer,
                                            decoder_actor decoder, RealtimePacing pacing,
                                            std::function<void(const std::string&, int64_t)> fault_injection,
                                            std::shared_ptr<ServingMetrics> metrics,
                                            std::shared_ptr<const codecs::ModelCodecs> codecs, ExecutorCanaries canaries) {
  self->state.metrics = std::move(metrics);
  self->state.codecs = codecs;
  self->state.canaries = std::move(canaries);
  if (self->state.canaries.health && self->state.canaries.interval_s > 0)
    self->delayed_send(self, canary_period(self->state.canaries.interval_s), canary_atom::value);
  self->state.tokenizer = std::move(tokenizer);
  self->state.engine = std::move(engine);
  self->state.decoder = decoder;
  return {
      [=](submit_atom, const text_request& r, const std::vector<int32_t>& ids, const sink_actor&) {
        if (self->state.early_cancels.erase(r.id)) return end_unadmitted(self, r.id, FinishReason::Cancelled, ErrorCode::cancelled, "");
        EngineRequest er;
        er.seq.id = r.id;
        er.seq.prompt = ids;
        er.seq.max_new_tokens = r.max_tokens;
        er.seq.prefill_only = r.prefill_only;
        er.seq.cls = r.request_class;
        er.seq.pacing = pacing;
        if (r.tokens_per_second > 0) er.seq.pacing.tokens_per_second = r.tokens_per_second;
        if (r.low_watermark_s >= 0) er.seq.pacing.low_watermark_s = r.low_watermark_s;
        if (r.high_watermark_s >= 0) er.seq.pacing.high_watermark_s = r.high_watermark_s;
        // A codec that holds samples back (SNAC's look-ahead) delays playback behind the
        // tokens: the lead must cover that too, or the listener runs dry while the stream
        // looks ahead.
        if (codecs)
          if (auto codec = codecs->audio(r.modality)) {
            const double delay = double(codec->decoder_latency_samples()) / codec->sample_rate();
            er.seq.pacing.low_watermark_s += delay;
            er.seq.pacing.high_watermark_s += delay;
          }
        er.sampling.temperature = r.temperature;
        er.sampling.top_p = r.top_p;
        er.sampling.top_k = r.top_k;
        er.sampling.seed = r.seed;
        er.stop_at_eog = !r.ignore_eos;
        er.modality = r.modality;
        const Model& model = self->state.engine->model();
        if (r.modality != Modality::Text) {
          // A media answer: the prompt opens the modality's span, and every token is a code.
          const ModalityInfo* info = model.config().modalities.find(r.modality);
          if (!info)
            return end_unadmitted(self, r.id, FinishReason::Error, ErrorCode::unsupported_modality,
                                  std::string("this model has no ") + modality_name(r.modality) + " modality");
          er.seq.prompt.push_back(int32_t(info->begin_token));
          // Images and video frames are whole grids: no early end.
          const bool audio_like = info->modality == Modality::Audio || info->modality == Modality::Music;
          er.media = MediaLayout{int32_t(info->token_offset), int32_t(info->codebook_size), int32_t(info->num_stages),
                                 audio_like ? int32_t(info->end_token) : -1,
                                 std::vector<int32_t>(info->slot_offsets.begin(), info->slot_offsets.end())};
        } else {
          er.seq.max_context = int64_t(model.hparams().n_ctx_train);
          // Text requests on a unified model never sample media codes.
          if (!model.config().modalities.empty()) er.sampling.allowed = model.config().modalities.text_ranges(model.hparams().n_vocab);
        }
        if (Status s = self->state.engine->submit(std::move(er), seconds_now()); !s) {
          // Refused (busy, too long, bad sampling): the request ends at once with the reason.
          return end_unadmitted(self, r.id, FinishReason::Error, s.code(), s.message());
        }
        schedule_step(self);
      },
      [=](cancel_atom, int64_t id) {
        if (!self->state.engine->cancel(id)) {
          // Unknown: either finished already, or its submit is still on the way.
          if (self->state.early_cancels.size() > 4096) self->state.early_cancels.clear();
          self->state.early_cancels.insert(id);
          return;
        }
        schedule_step(self);
      },
      [=](credit_atom, int64_t id, int32_t delivered) {
        // Only a credit that releases a held sequence creates work; the rest just count.
        if (self->state.engine->on_delivered(id, delivered, seconds_now())) schedule_step(self);
      },
      [=](canary_atom, Modality m) -> bool {
        ExecutorCanaries& c = self->state.canaries;
        if (!c.health || !c.model || !self->state.codecs) return true;
        if (!self->state.canary_kv) {
          auto kv = codecs::make_canary_cache(*c.model);
          if (!kv) {
            codecs::CanaryResult failed;
            failed.modality = m;
            failed.reason = "no memory for the canary's cache: " + kv.error().message;
            c.health->record(failed);
            return false;
          }
          self->state.canary_kv = std::move(kv).value();
        }
        const codecs::CanaryResult r = codecs::run_canary(*c.model, *self->state.tokenizer, *self->state.codecs,
                                                          *self->state.canary_kv, m, c.thresholds, c.baselines);
        c.health->record(r);
        if (self->state.metrics) {
          self->state.metrics->canaries_run++;
          self->state.metrics->canary_micros += uint64_t(r.seconds * 1e6);
        }
        if (!r.passed) std::fprintf(stderr, "tutti: canary %s failed: %s\n", modality_name(m), r.reason.c_str());
        return r.passed;
      },
      [=](canary_atom) {
        // A round: one message per modality, so steps run between them.
        ExecutorCanaries& c = self->state.canaries;
        if (!c.health || !c.model) return;
        for (Modality m : codecs::canary_modalities(*c.model)) caf::anon_send(self, canary_atom::value, m);  // verdicts go to health
        if (c.interval_s > 0) self->delayed_send(self, canary_period(c.interval_s), canary_atom::value);
      },
      [=](relook_atom) {
        self->state.relook_armed = false;
        if (!self->state.engine->idle()) schedule_step(self);
      },
      [=](step_atom) {
        self->state.step_queued = false;
        if (self->state.metrics) self->state.metrics->executor_wakeups++;
        EngineStepStats stats;
        std::vector<EngineEvent> events;
        try {
          if (fault_injection) fault_injection("step", -1);
          events = self->state.engine->step(seconds_now(), &stats);
        } catch (const std::exception& e) {
          // A step failed in a way the engine could not contain: said loudly, every sequence
          // it held ends with the reason (their clients get it), and the loop goes on with an
          // empty engine rather than hanging or taking the server down.
          std::fprintf(stderr, "tutti: executor step failed: %s; ending its sequences\n", e.what());
          if (self->state.metrics) self->state.metrics->step_failures++;
          events = self->state.engine->fail_all(std::string("the model step failed: ") + e.what());
        }
        if (!events.empty()) {
          step_events ev;
          for (const EngineEvent& e : events) {
            ev.request.push_back(e.seq);
            ev.token.push_back(e.token);
            ev.finish.push_back(e.finish);
            ev.code.push_back(e.finish == FinishReason::Cancelled ? ErrorCode::cancelled : e.code);
            ev.error.push_back(e.error);
          }
          self->send(self->state.decoder, events_atom::value, std::move(ev));
        }
        if (self->state.engine->idle()) return;
        if (stats.sequences > 0 || !events.empty()) {
          schedule_step(self);
        } else if (!self->state.relook_armed) {
          // Work exists but none is due (realtime streams ahead of playback, or sequences
          // waiting for their clients): look again shortly instead of spinning. Submits,
          // cancels and releasing credit still wake the loop at once.
          self->state.relook_armed = true;
          self->delayed_send(self, std::chrono::milliseconds(2), relook_atom::value);
        }
      },
  };
}


}  // namespace

executor_actor spawn_executor(caf::actor_system& system, std::shared_ptr<Engine> engine, std::shared_ptr<const Tokenizer> tokenizer,
                              decoder_actor decoder, RealtimePacing pacing, FaultInjection fault_injection,
                              std::shared_ptr<ServingMetrics> metrics, std::shared_ptr<const codecs::ModelCodecs> codecs,
                              ExecutorCanaries canaries) {
  return system.spawn<caf::detached>(executor_impl, std::move(engine), std::move(tokenizer), std::move(decoder), pacing,
                                     std::move(fault_injection), std::move(metrics), std::move(codecs), std::move(canaries));
}

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace tutti::actors
