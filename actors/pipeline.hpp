// Spawning the serving pipeline's actors (see actors.hpp for the message flow): one encoder,
// one executor (detached: it owns a compute thread), one decoder. Each actor's state and
// behaviour live in its own file (actors/encoder.cpp, executor.cpp, decoder.cpp); the logic
// they run is in pipeline/ (Tokenizer, Engine, StreamingDetokenizer), tested without actors.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "actors/actors.hpp"
#include "codecs/model_canary.h"
#include "codecs/model_codecs.h"
#include "config/settings.h"
#include "pipeline/admission.h"
#include "pipeline/metrics.h"
#include "pipeline/model.h"
#include "pipeline/scheduler.h"
#include "pipeline/tokenizer.h"

namespace tutti::actors {

struct PipelineConfig {
  size_t kv_cache_bytes = size_t(256) << 20;
  TensorType kv_cache_type = TensorType::F16;
  int kv_block_tokens = 16;
  bool prefix_cache = true;  // see PagedKvCache
  SchedulerConfig scheduler;
  RealtimePacing pacing;  // watermarks for realtime requests (their rate comes with each request)
  // Fault injection for tests: called as each stage handles a request ("encode", "decode"
  // with its id) and before each executor step ("step", -1); what it throws is handled as a
  // real failure of that stage would be. Empty in the server.
  std::function<void(const std::string& stage, int64_t request)> fault_injection;
  // Also for tests: called with each step's plan inside the step (Engine::set_step_hook), so
  // a test can give steps a cost that depends on what is in them.
  std::function<void(const StepPlan&)> step_fault_injection;
  // The model's canaries, run by its executor (actors.hpp): null health means none. The
  // runtime guard (non-finite logits) reports there too.
  std::shared_ptr<codecs::ModalityHealth> health;
  codecs::CanaryThresholds canary_thresholds;
  codecs::CanaryBaselines canary_baselines;  // recorded at load; the executor's canaries compare against them
  double canary_interval_s = 0;              // 0: no periodic round
  // What the executor keeps alive until it has quit: the weights it borrows and the backend
  // they live on, when the pipeline owns them (a model the registry loaded). Null: the caller
  // keeps the model alive for as long as the actors run.
  std::shared_ptr<const void> keep_alive;
  Status validate() const;
  // The [kv_cache], [scheduler], [admission] and [realtime] settings.
  static PipelineConfig from(const Settings& settings);
};

struct PipelineHandles {
  encoder_actor encoder;
  executor_actor executor;
  decoder_actor decoder;
  std::shared_ptr<ServingMetrics> metrics;  // updated by the executor, rendered on /metrics
  // The engine's load as the executor last published it: transports ask it before sending a
  // request on, so a refusal never waits for a step (pipeline/admission.h).
  std::shared_ptr<AdmissionBoard> admission;
  std::shared_ptr<const codecs::ModelCodecs> codecs;  // the model's codebooks (read-only, shared)
  // A cluster ingress's view of an executor node (actors/cluster/ingress.hpp): the encoder and
  // executor are that node's, reached through CAF's middleman, and never stopped from here
  // (there is no decoder here, nor metrics or an admission board: the node has them). The
  // guard is a local actor that quits when the node is lost (its connection dropped, its
  // beats stopped, it left): every sink talking to the node watches it, so each of its
  // in-flight requests ends with executor_lost.
  bool remote = false;
  caf::actor node_guard;
};

// Asks every actor of the pipeline to quit (the executor finishes its step first).
void stop_pipeline(const PipelineHandles& handles);

// The prompt's token ids: its text tokenized (BOS as the vocabulary asks, before the first
// piece only), with media_parts spliced in where the prompt's "\x1e" k "\x1f" markers name
// them. A marker naming no part is an Error.
Expected<std::vector<int32_t>> encode_prompt(const Tokenizer& tokenizer, const text_request& r);

// CAF settings for a machine whose cores belong to the model: `workers` scheduler threads
// that sleep as soon as they run out of work (CAF's default work stealing polls
// aggressively, which takes cycles from the forward pass on a 2-core machine), and a bounded
// throughput per actor so no session's backlog holds a worker.
void configure_for_compute(caf::actor_system_config& cfg, int workers);

// `model` and `tokenizer` must outlive the actors (the executor borrows the model). The
// model's codecs (its codebooks) are loaded here for the decoder; a text-only model has none
// and refuses media requests.
Expected<PipelineHandles> spawn_pipeline(caf::actor_system& system, Model& model,
                                         std::shared_ptr<const Tokenizer> tokenizer, const PipelineConfig& config);

}  // namespace tutti::actors
