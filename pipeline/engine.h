// The executor's engine: one step loop over the model for many sequences at once. It owns
// the KV cache, the scheduler and each sequence's sampler; each step() asks the scheduler
// what to run, runs one forward pass, samples the sequences whose chunk completed, and
// returns what happened as events. No threads, sockets or clocks of its own: the executor
// actor calls step() and forwards the events; tests call it directly.
//
// Ownership: borrows the Model (which must outlive it); owns everything else. Used by one
// thread.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "pipeline/metrics.h"
#include "pipeline/model.h"
#include "pipeline/sampler.h"
#include "pipeline/scheduler.h"
#include "pipeline/tokenizer.h"

namespace tutti {

// Media generation: token i of the answer is a code of frame slot i % stages, so each step
// may sample only that slot's `size` codes (from slot_offsets[slot], or offset + slot * size
// when slot_offsets is empty); the modality's end token (when end_token >= 0) is allowed at
// frame boundaries (slot 0) and ends the sequence.
struct MediaLayout {
  int32_t offset = 0, size = 0, stages = 0;
  int32_t end_token = -1;
  std::vector<int32_t> slot_offsets;
  int32_t slot_offset(int slot) const { return slot_offsets.empty() ? offset + slot * size : slot_offsets[size_t(slot)]; }
};

struct EngineRequest {
  SequenceRequest seq;      // id, class, prompt ids, max_new_tokens, pacing
  SamplingParams sampling;  // stop tokens and masks included
  bool stop_at_eog = true;  // end at the tokenizer's end-of-generation tokens
  std::optional<MediaLayout> media;
  Modality modality = Modality::Text;  // what it generates (the runtime guard names it)
};


// One thing that happened to a sequence during a step.
struct EngineEvent {
  int64_t seq = 0;
  int32_t token = -1;        // a generated token, or -1
  int index = -1;            // its position among the generated tokens
  FinishReason finish = FinishReason::None;
  std::string error;         // for FinishReason::Error
  ErrorCode code = ErrorCode::none;  // for FinishReason::Error: what kind of failure
};

struct EngineStepStats {
  int sequences = 0, tokens = 0;
  double seconds = 0;        // forward + sampling
};

class Engine {
 public:
  // metrics (optional) is updated by every submit and step.
  // board (optional): the front door's admission, given the engine's load after every
  // submit and step.
  Engine(Model& model, std::unique_ptr<PagedKvCache> kv, SchedulerConfig config, const Tokenizer* tokenizer,
         std::shared_ptr<ServingMetrics> metrics = nullptr, std::shared_ptr<AdmissionBoard> board = nullptr);

  // Validates and queues a request; refused with a reason (busy, too long, bad sampling).
  Status submit(EngineRequest request, double now);
  // Returns false if the id is unknown (never submitted, or already finished).
  bool cancel(int64_t id) {
    if (!live_.count(id)) return false;
    scheduler_.cancel(id);
    return true;
  }
  // Credit from the sequence's client (flow control, SchedulerConfig::client_window).
  // Returns true when it released a held sequence.
  bool on_delivered(int64_t id, int delivered, double now) { return scheduler_.on_delivered(id, delivered, now); }
  // Runs at most one forward pass; returns the events of this step (empty: nothing to do).
  std::vector<EngineEvent> step(double now, EngineStepStats* stats = nullptr);
  // After a step failed in a way the engine could not contain (an exception): every live
  // sequence ends with `reason` (one Error event each), its KV released, so the engine is
  // empty and usable again.
  std::vector<EngineEvent> fail_all(const std::string& reason);
  bool idle() const { return scheduler_.idle(); }
  // Tests: called with each step's plan just before its forward pass, inside the step's
  // measured time (a test sleeps in it to give steps a cost of its choosing, which the cost
  // model then learns); what it throws fails the step as a model failure would.
  void set_step_hook(std::function<void(const StepPlan&)> hook) { step_hook_ = std::move(hook); }
  // The runtime guard: a sequence whose logits hold NaN or Inf ends at once with an error
  // (generation_failed, saying so) rather than sampling garbage, and `on_nonfinite` hears
  // its modality (the server marks that modality unhealthy).
  void set_nonfinite_hook(std::function<void(Modality)> hook) { nonfinite_hook_ = std::move(hook); }

  const Scheduler& scheduler() const { return scheduler_; }
  const PagedKvCache& kv_cache() const { return *kv_; }
  const Model& model() const { return model_; }

 private:
  struct Live {
    Sampler sampler;
    bool stop_at_eog;
    RequestClass cls;
    std::optional<MediaLayout> media;
    Modality modality = Modality::Text;
  };
  Model& model_;
  std::unique_ptr<PagedKvCache> kv_;
  KvCacheCapacity capacity_;
  Scheduler scheduler_;
  const Tokenizer* tokenizer_;
  std::map<int64_t, Live> live_;
  StepLogits logits_;
  std::shared_ptr<ServingMetrics> metrics_;
  std::shared_ptr<AdmissionBoard> board_;
  std::function<void(const StepPlan&)> step_hook_;
  std::function<void(Modality)> nonfinite_hook_;
  void publish_load(int64_t arrived = 0);
  void record_admission();
  void record(const std::vector<EngineEvent>& events, const EngineStepStats& stats, double now);
};

}  // namespace tutti
