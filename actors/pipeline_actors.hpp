// The three actors of the serving pipeline, one file each (encoder.cpp, executor.cpp,
// decoder.cpp), spawned by spawn_pipeline (pipeline.cpp). Internal to actors/: the typed
// interfaces they implement are in actors.hpp; what they run is in pipeline/ and codecs/.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "actors/pipeline.hpp"

namespace tutti {
class Engine;
}

namespace tutti::actors {

using FaultInjection = std::function<void(const std::string& stage, int64_t request)>;

decoder_actor spawn_decoder(caf::actor_system& system, std::shared_ptr<const Tokenizer> tokenizer,
                            std::shared_ptr<const codecs::ModelCodecs> codecs, FaultInjection fault_injection);
// The executor's canaries: the model to probe (the engine's, on the executor's thread), the
// verdicts' board, and what they compare against.
struct ExecutorCanaries {
  Model* model = nullptr;
  std::shared_ptr<codecs::ModalityHealth> health;  // null: none
  codecs::CanaryThresholds thresholds;
  codecs::CanaryBaselines baselines;
  double interval_s = 0;
  std::shared_ptr<const void> keep_alive;  // PipelineConfig::keep_alive
};
executor_actor spawn_executor(caf::actor_system& system, std::shared_ptr<Engine> engine, std::shared_ptr<const Tokenizer> tokenizer,
                              decoder_actor decoder, RealtimePacing pacing, FaultInjection fault_injection,
                              std::shared_ptr<ServingMetrics> metrics, std::shared_ptr<const codecs::ModelCodecs> codecs,
                              ExecutorCanaries canaries);
encoder_actor spawn_encoder(caf::actor_system& system, std::shared_ptr<const Tokenizer> tokenizer, executor_actor executor,
                            decoder_actor decoder, FaultInjection fault_injection);

// Steady-clock seconds: the engine's time base.
double seconds_now();

}  // namespace tutti::actors
