#include "actors/pipeline.hpp"

#include <chrono>
#include <cstdio>
#include <map>
#include <set>

#include "codecs/audio_tokenizer.h"
#include "codecs/patch_tokenizer.h"
#include "pipeline/engine.h"

namespace tutti::actors {

void configure_for_compute(caf::actor_system_config& cfg, int workers) {
  cfg.set("scheduler.max-threads", std::max(1, workers));
  cfg.set("scheduler.max-throughput", 100);
  cfg.set("work-stealing.aggressive-poll-attempts", 1);
  cfg.set("work-stealing.moderate-poll-attempts", 1);
  cfg.set("work-stealing.moderate-sleep-duration", caf::timespan(std::chrono::microseconds(50)));
  cfg.set("work-stealing.relaxed-sleep-duration", caf::timespan(std::chrono::microseconds(500)));
}

Expected<std::vector<int32_t>> encode_prompt(const Tokenizer& tokenizer, const text_request& r) {
  std::vector<int32_t> ids;
  bool first = true;
  size_t at = 0, end_of_last_part = 0;
  auto text = [&](const std::string& piece) {
    if (piece.empty() && !first) return;
    const auto t = tokenizer.encode(piece, r.add_special && first, false);
    ids.insert(ids.end(), t.begin(), t.end());
    first = false;
  };
  for (;;) {
    const size_t open = r.prompt.find_first_of("\x1d\x1e", at);
    if (open == std::string::npos) break;
    const size_t close = r.prompt.find('\x1f', open);
    if (close == std::string::npos) return Error{"an unterminated marker in the prompt"};
    text(r.prompt.substr(at, open - at));
    const std::string inside = r.prompt.substr(open + 1, close - open - 1);
    at = close + 1;
    if (r.prompt[open] == '\x1d') {
      // A template's control token: its id where the vocabulary has it, else its text (a
      // vocabulary of another family: the transcript stays readable).
      if (auto id = tokenizer.token_id(inside)) {
        ids.push_back(*id);
      } else {
        const auto t = tokenizer.encode(inside, false, false);
        ids.insert(ids.end(), t.begin(), t.end());
      }
      continue;
    }
    size_t k = 0;
    try {
      k = std::stoul(inside);
    } catch (...) {
      return Error{"a media marker without a number"};
    }
    if (k >= r.media_parts.size()) return Error{"a media marker names part " + std::to_string(k) + " of " + std::to_string(r.media_parts.size())};
    ids.insert(ids.end(), r.media_parts[k].begin(), r.media_parts[k].end());
    end_of_last_part = ids.size();
  }
  if (r.prefill_only) {
    // What follows the last part (its end token, the rest of the template) is not known yet.
    ids.resize(end_of_last_part);
    return ids;
  }
  text(r.prompt.substr(at));
  return ids;
}

Status PipelineConfig::validate() const {
  if (kv_cache_bytes == 0) return Error{"kv cache size must be positive"};
  return scheduler.validate();
}

namespace {

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- decoder: token ids to text deltas, or media, per request, in order.
struct decoder_state {
  std::function<void(const std::string&, int64_t)> fault_injection;
  executor_actor executor;  // told once at start (connect_atom)
  struct Entry {
    sink_actor sink;
    StreamingDetokenizer detok;
    int32_t prompt_tokens = 0;
    int32_t completion_tokens = 0;
    // Media answers: the modality, its streaming audio decoder or the codes of the frame
    // being generated.
    const ModalityInfo* media = nullptr;
    std::unique_ptr<codecs::AudioCodeDecoder> audio;
    std::vector<int32_t> frame_codes;
  };
  std::shared_ptr<const Tokenizer> tokenizer;
  std::shared_ptr<const codecs::ModelCodecs> codecs;
  std::map<int64_t, Entry> requests;
};

// Ends one request whose decoding failed: its sink gets the final delta with the error (in
// the form its modality expects), its sequence is cancelled, its state dropped.
void fail_request(decoder_actor::stateful_pointer<decoder_state> self, std::map<int64_t, decoder_state::Entry>::iterator it,
                  const std::string& error);

// One generated code (or the end) of a media answer: audio leaves frame by frame, images and
// video frames once all their patches are there.
void decode_media(decoder_actor::stateful_pointer<decoder_state> self, int64_t id, decoder_state::Entry& e, int32_t token,
                  FinishReason finish, const std::string& error) {
  const ModalityInfo& m = *e.media;
  media_delta d;
  d.request = id;
  if (token >= 0) {
    ++e.completion_tokens;
    d.token = token;
    // Every slot's first id lies a whole number of codebooks past token_offset (the loader
    // checks it), and the engine samples each slot from its own range.
    const int32_t code = int32_t((uint32_t(token) - m.token_offset) % m.codebook_size);
    if (e.audio) {
      auto samples = e.audio->push(std::span<const int32_t>(&code, 1));
      if (!samples) throw std::runtime_error(samples.error().message);
      d.samples = std::move(*samples);
    } else {
      e.frame_codes.push_back(code);
      const codecs::PatchGeometry g{int(m.width), int(m.height), int(m.patch_size)};
      if (e.frame_codes.size() == size_t(g.patches()) * m.num_stages) {
        if (auto rgb = codecs::decode_frame(g, *self->state.codecs->books(m.modality), e.frame_codes)) {
          d.rgb = std::move(rgb).value();
          d.width = g.width, d.height = g.height;
        }
        e.frame_codes.clear();
      }
    }
  }
  if (finish != FinishReason::None) {
    if (e.audio) {
      const auto tail = e.audio->finish();
      d.samples.insert(d.samples.end(), tail.begin(), tail.end());
    }
    d.finish_reason = finish_reason_name(finish);
    d.error = error;
  }
  d.prompt_tokens = e.prompt_tokens;
  d.completion_tokens = e.completion_tokens;
  // Every code leaves as a delta (most carry nothing yet): credit counts tokens.
  self->send(e.sink, media_atom::value, std::move(d));
}

void fail_request(decoder_actor::stateful_pointer<decoder_state> self, std::map<int64_t, decoder_state::Entry>::iterator it,
                  const std::string& error) {
  decoder_state::Entry& e = it->second;
  auto final_delta = [&](auto d) {  // text_delta or media_delta: the same fields
    d.request = it->first;
    d.finish_reason = "error";
    d.error = error;
    d.prompt_tokens = e.prompt_tokens, d.completion_tokens = e.completion_tokens;
    return d;
  };
  if (e.media) self->send(e.sink, media_atom::value, final_delta(media_delta{}));
  else self->send(e.sink, delta_atom::value, final_delta(text_delta{}));
  if (self->state.executor) caf::anon_send<caf::message_priority::high>(self->state.executor, cancel_atom::value, it->first);
  self->state.requests.erase(it);
}

decoder_actor::behavior_type decoder_impl(decoder_actor::stateful_pointer<decoder_state> self,
                                          std::shared_ptr<const Tokenizer> tokenizer,
                                          std::shared_ptr<const codecs::ModelCodecs> codecs,
                                          std::function<void(const std::string&, int64_t)> fault_injection) {
  self->state.tokenizer = std::move(tokenizer);
  self->state.codecs = std::move(codecs);
  self->state.fault_injection = std::move(fault_injection);
  return {
      [=](connect_atom, executor_actor executor) { self->state.executor = std::move(executor); },
      [=](register_atom, int64_t id, int32_t prompt_tokens, const std::string& modality, sink_actor sink) {
        decoder_state::Entry e{std::move(sink), StreamingDetokenizer(*self->state.tokenizer), prompt_tokens, 0};
        if (auto m = parse_modality(modality); m && *m != Modality::Text) {
          e.media = self->state.codecs->info(*m);  // the executor refuses a modality the model lacks
          if (auto codec = self->state.codecs->audio(*m)) {
            codecs::AudioDecodeOptions o;
            o.seed = uint64_t(id);  // SNAC's noise blocks: each answer its own noise
            e.audio = codec->decoder(o);
          }
        }
        self->state.requests.emplace(id, std::move(e));
      },
      [=](events_atom, const step_events& ev) {
        for (size_t i = 0; i < ev.request.size(); ++i) {
          auto it = self->state.requests.find(ev.request[i]);
          if (it == self->state.requests.end()) continue;
          auto& e = it->second;
          const auto finish = FinishReason(ev.finish[i]);
          // A failure decoding one request ends that request with the reason (and cancels
          // its sequence); the others go on.
          try {
            if (self->state.fault_injection) self->state.fault_injection("decode", ev.request[i]);
          } catch (const std::exception& x) {
            fail_request(self, it, std::string("decoding failed: ") + x.what());
            continue;
          }
          if (e.media) {
            try {
              decode_media(self, ev.request[i], e, ev.token[i], finish, ev.error[i]);
            } catch (const std::exception& x) {
              fail_request(self, it, std::string("decoding failed: ") + x.what());
              continue;
            }
            if (finish != FinishReason::None) self->state.requests.erase(it);
            continue;
          }
          text_delta d;
          d.request = ev.request[i];
          if (ev.token[i] >= 0) {
            ++e.completion_tokens;
            d.text = e.detok.push(ev.token[i]);
          }
          if (finish != FinishReason::None) {
            d.text += e.detok.flush();
            d.finish_reason = finish_reason_name(finish);
            d.error = ev.error[i];
          }
          d.prompt_tokens = e.prompt_tokens;
          d.completion_tokens = e.completion_tokens;
          // Every token leaves as a delta, even one whose text is held back (half a UTF-8
          // character, a control token): paced streams are timed per token.
          self->send(e.sink, delta_atom::value, std::move(d));
          if (finish != FinishReason::None) self->state.requests.erase(it);
        }
      },
  };
}

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
};

// Ends a request the engine never took (cancelled before it arrived, or refused) with one
// final event, sent the same way as a step's.
void end_unadmitted(executor_actor::stateful_pointer<executor_state> self, int64_t id, FinishReason finish,
                    std::string error) {
  step_events ev;
  ev.request = {id};
  ev.token = {-1};
  ev.finish = {int32_t(finish)};
  ev.error = {std::move(error)};
  self->send(self->state.decoder, events_atom::value, std::move(ev));
}

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
                                            std::shared_ptr<const codecs::ModelCodecs> codecs) {
  self->state.metrics = std::move(metrics);
  self->state.tokenizer = std::move(tokenizer);
  self->state.engine = std::move(engine);
  self->state.decoder = decoder;
  return {
      [=](submit_atom, const text_request& r, const std::vector<int32_t>& ids, const sink_actor&) {
        if (self->state.early_cancels.erase(r.id)) return end_unadmitted(self, r.id, FinishReason::Cancelled, "");
        EngineRequest er;
        er.seq.id = r.id;
        er.seq.prompt = ids;
        er.seq.max_new_tokens = r.max_tokens;
        er.seq.prefill_only = r.prefill_only;
        er.seq.cls = parse_request_class(r.request_class).value_or(RequestClass::Interactive);
        er.seq.pacing = pacing;
        if (r.tokens_per_second > 0) er.seq.pacing.tokens_per_second = r.tokens_per_second;
        if (r.low_watermark_s >= 0) er.seq.pacing.low_watermark_s = r.low_watermark_s;
        if (r.high_watermark_s >= 0) er.seq.pacing.high_watermark_s = r.high_watermark_s;
        // A codec that holds samples back (SNAC's look-ahead) delays playback behind the
        // tokens: the lead must cover that too, or the listener runs dry while the stream
        // looks ahead.
        if (auto m = parse_modality(r.modality); m && codecs)
          if (auto codec = codecs->audio(*m)) {
            const double delay = double(codec->decoder_latency_samples()) / codec->sample_rate();
            er.seq.pacing.low_watermark_s += delay;
            er.seq.pacing.high_watermark_s += delay;
          }
        er.sampling.temperature = r.temperature;
        er.sampling.top_p = r.top_p;
        er.sampling.top_k = r.top_k;
        er.sampling.seed = r.seed;
        er.stop_at_eog = !r.ignore_eos;
        const Model& model = self->state.engine->model();
        if (r.modality != "text") {
          // A media answer: the prompt opens the modality's span, and every token is a code.
          const auto m = parse_modality(r.modality);
          const ModalityInfo* info = m ? model.config().modalities.find(*m) : nullptr;
          if (!info) return end_unadmitted(self, r.id, FinishReason::Error, "this model has no " + r.modality + " modality");
          er.seq.prompt.push_back(int32_t(info->begin_token));
          // Images and video frames are whole grids: no early end.
          const bool audio_like = info->modality == Modality::Audio || info->modality == Modality::Music;
          er.media = MediaLayout{int32_t(info->token_offset), int32_t(info->codebook_size), int32_t(info->num_stages),
                                 audio_like ? int32_t(info->end_token) : -1,
                                 std::vector<int32_t>(info->slot_offsets.begin(), info->slot_offsets.end())};
        } else if (!model.config().modalities.empty()) {
          // Text requests on a unified model never sample media codes.
          er.sampling.allowed = model.config().modalities.text_ranges(model.hparams().n_vocab);
        }
        if (Status s = self->state.engine->submit(std::move(er), seconds_now()); !s) {
          // Refused (busy, too long, bad sampling): the request ends at once with the reason.
          return end_unadmitted(self, r.id, FinishReason::Error, s.message());
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
            ev.finish.push_back(int32_t(e.finish));
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

// ---- encoder: text to token ids, off the executor's thread.
struct encoder_state {
  std::shared_ptr<const Tokenizer> tokenizer;
  executor_actor executor;
  decoder_actor decoder;
};

encoder_actor::behavior_type encoder_impl(encoder_actor::stateful_pointer<encoder_state> self,
                                          std::shared_ptr<const Tokenizer> tokenizer, executor_actor executor,
                                          decoder_actor decoder, std::function<void(const std::string&, int64_t)> fault_injection) {
  self->state.tokenizer = std::move(tokenizer);
  self->state.executor = executor;
  self->state.decoder = decoder;
  return {
      [=](encode_atom, const text_request& r, const sink_actor& sink) -> caf::result<int32_t> {
        Expected<std::vector<int32_t>> encoded = Error{""};
        try {  // a failure encoding one request refuses it; the encoder goes on
          if (fault_injection) fault_injection("encode", r.id);
          encoded = encode_prompt(*self->state.tokenizer, r);
        } catch (const std::exception& e) {
          return caf::make_error(caf::sec::invalid_argument, std::string("encoding failed: ") + e.what());
        }
        if (!encoded) return caf::make_error(caf::sec::invalid_argument, encoded.error().message);
        std::vector<int32_t> ids = std::move(encoded).value();
        // Too long for the cache, or no room now: the executor refuses it through the
        // decoder, as a final delta with the reason.
        if (ids.empty()) return caf::make_error(caf::sec::invalid_argument, "the prompt is empty");
        const int32_t n = int32_t(ids.size());
        // Register before submitting: the decoder's mailbox then sees the registration
        // before any event the executor produces for this request.
        self->send(self->state.decoder, register_atom::value, r.id, n, r.modality, sink);
        self->send(self->state.executor, submit_atom::value, r, std::move(ids), sink);
        return n;
      },
  };
}

}  // namespace

Expected<PipelineHandles> spawn_pipeline(caf::actor_system& system, Model& model,
                                         std::shared_ptr<const Tokenizer> tokenizer, const PipelineConfig& config) {
  if (Status s = config.validate(); !s) return s.error();
  auto kv = model.make_kv_cache(config.kv_cache_bytes, config.kv_cache_type, config.kv_block_tokens, config.prefix_cache);
  if (!kv) return kv.error();
  PipelineHandles h;
  h.metrics = std::make_shared<ServingMetrics>();
  auto engine = std::make_shared<Engine>(model, std::move(kv).value(), config.scheduler, tokenizer.get(), h.metrics);
  auto codecs = codecs::load_model_codecs(model.file());
  if (!codecs) return codecs.error();
  h.codecs = std::make_shared<const codecs::ModelCodecs>(std::move(codecs).value());
  h.decoder = system.spawn(decoder_impl, tokenizer, h.codecs, config.fault_injection);
  h.executor = system.spawn<caf::detached>(executor_impl, std::move(engine), tokenizer, h.decoder, config.pacing, config.fault_injection,
                                               h.metrics, h.codecs);
  caf::anon_send(h.decoder, connect_atom::value, h.executor);
  h.encoder = system.spawn(encoder_impl, tokenizer, h.executor, h.decoder, config.fault_injection);
  return h;
}

}  // namespace tutti::actors
