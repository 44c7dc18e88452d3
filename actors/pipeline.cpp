// Spawning the serving pipeline: one encoder, one executor, one decoder (one file each).
#include "actors/pipeline.hpp"

#include "actors/pipeline_actors.hpp"
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

Status PipelineConfig::validate() const {
  if (kv_cache_bytes == 0) return Error{"kv cache size must be positive"};
  return scheduler.validate();
}

PipelineConfig PipelineConfig::from(const Settings& st) {
  PipelineConfig pc;
  pc.kv_cache_bytes = size_t(st.kv_cache_mb) << 20;
  pc.kv_cache_type = st.kv_cache_type == "f32" ? TensorType::F32 : TensorType::F16;
  pc.kv_block_tokens = st.kv_block_tokens;
  pc.prefix_cache = st.prefix_cache;
  pc.scheduler.max_sequences_per_step = st.max_batch;
  pc.scheduler.step_token_budget = st.step_token_budget;
  pc.scheduler.prefill_chunk = std::min(st.prefill_chunk, st.step_token_budget);
  pc.scheduler.max_waiting = st.max_waiting;
  pc.scheduler.max_running = st.max_running;
  pc.scheduler.pacing = st.pacing;
  pc.scheduler.client_window = st.client_window;
  AdmissionConfig& a = pc.scheduler.admission;
  a.enabled = st.admission;
  a.realtime_headroom = st.realtime_headroom;
  a.realtime_overload = st.realtime_overload == "queue" ? OverloadPolicy::Queue : OverloadPolicy::Refuse;
  a.realtime_queue_s = st.realtime_queue_ms / 1000.0;
  a.wait_target_s = {st.realtime_wait_ms / 1000.0, st.interactive_wait_ms / 1000.0, st.batch_wait_ms / 1000.0};
  pc.pacing.low_watermark_s = st.low_watermark_ms / 1000.0;
  pc.pacing.high_watermark_s = st.high_watermark_ms / 1000.0;
  return pc;
}

Expected<PipelineHandles> spawn_pipeline(caf::actor_system& system, Model& model,
                                         std::shared_ptr<const Tokenizer> tokenizer, const PipelineConfig& config) {
  if (Status s = config.validate(); !s) return s.error();
  auto kv = model.make_kv_cache(config.kv_cache_bytes, config.kv_cache_type, config.kv_block_tokens, config.prefix_cache);
  if (!kv) return kv.error();
  PipelineHandles h;
  h.metrics = std::make_shared<ServingMetrics>();
  h.admission = std::make_shared<AdmissionBoard>(config.scheduler.admission);
  auto engine = std::make_shared<Engine>(model, std::move(kv).value(), config.scheduler, tokenizer.get(), h.metrics, h.admission);
  if (config.step_fault_injection) engine->set_step_hook(config.step_fault_injection);
  if (auto health = config.health)
    engine->set_nonfinite_hook([health](Modality m) { health->flag(m, std::string("non-finite logits in a ") + modality_name(m) + " step"); });
  auto codecs = codecs::load_model_codecs(model.file());
  if (!codecs) return codecs.error();
  h.codecs = std::make_shared<const codecs::ModelCodecs>(std::move(codecs).value());
  h.decoder = spawn_decoder(system, tokenizer, h.codecs, config.fault_injection);
  ExecutorCanaries canaries{&model, config.health, config.canary_thresholds, config.canary_baselines, config.canary_interval_s,
                            config.keep_alive};
  h.executor = spawn_executor(system, std::move(engine), tokenizer, h.decoder, config.pacing, config.fault_injection, h.metrics, h.codecs,
                              std::move(canaries));
  caf::anon_send(h.decoder, connect_atom::value, h.executor);
  h.encoder = spawn_encoder(system, tokenizer, h.executor, h.decoder, config.fault_injection);
  return h;
}

void stop_pipeline(const PipelineHandles& h) {
  caf::anon_send_exit(h.encoder, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(h.executor, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(h.decoder, caf::exit_reason::user_shutdown);
}

}  // namespace tutti::actors
