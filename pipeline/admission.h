// Admission: whether the engine takes a new request, decided from a picture of its load and
// the learned step cost (pipeline/step_cost.h). Plain functions over plain data, so the
// scheduler (authoritative, on the executor's thread) and the front door (the HTTP thread,
// which must answer "no" in milliseconds while a step runs) decide the same way.
//
// Two questions:
//   - realtime capacity: a realtime stream needs its token rate for as long as it plays. The
//     streams' share of the executor's time is
//         load = max_rate * base + sum(rate_i * (per_row + per_context_token * context_i))
//     (steps that carry the streams run at the fastest stream's rate; each token of each
//     stream adds its row). A new stream is admitted only while the load with it stays at or
//     below 1 - headroom; the rest of the time is what text and batch work get.
//   - expected wait: the time to a new request's first token, from the sequences ahead of it
//     for the step's slots, the prompt tokens ahead of it, and the realtime share. A request
//     predicted to wait past its class's target is refused at once; queueing it would only
//     make it, and everyone behind it, late.
// Before the cost model has seen a few steps nothing is known, and nothing is refused for it.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pipeline/expected.h"
#include "pipeline/request_kinds.h"
#include "pipeline/step_cost.h"

namespace tutti {

// What a realtime request the capacity cannot hold now does (see AdmissionConfig).
enum class OverloadPolicy : uint8_t { Refuse, Queue };

// Why a request was refused at admission (None: admitted), for metrics and messages.
enum class AdmissionOutcome : uint8_t { Admitted, Capacity, Wait, QueueFull, QueueTimeout };
constexpr int kAdmissionOutcomes = 5;
const char* admission_outcome_name(AdmissionOutcome o);

struct AdmissionConfig {
  bool enabled = true;
  // Share of the executor's time realtime streams must leave free (text, batch, noise).
  double realtime_headroom = 0.25;
  // A realtime answer the capacity cannot hold: refused at once, or queued until a stream
  // ends, for at most realtime_queue_s (then refused as busy).
  OverloadPolicy realtime_overload = OverloadPolicy::Refuse;
  double realtime_queue_s = 2;
  // Predicted wait to the first token beyond which a request is refused at arrival, by class.
  std::array<double, 3> wait_target_s = {0.5, 0.4, 30};
  Status validate() const;
};

// The load as admission sees it. Built by the scheduler from its live state.
struct LoadPicture {
  struct Stream {     // a realtime sequence admitted and not finished
    double tokens_per_second = 0;
    int64_t context = 0;       // its average context over the rest of its answer
    double seconds_left = 0;   // of generation at its rate
  };
  struct Running {    // a sequence holding a slot
    RequestClass cls = RequestClass::Interactive;
    int expected_left = 1;     // tokens it is expected to still generate
    int64_t context = 0;
    int prompt_left = 0;       // prompt tokens still to compute
  };
  struct Waiting {    // admitted, not started, in the order it starts
    RequestClass cls = RequestClass::Interactive;
    int prompt_left = 0;
    int expected_tokens = 1;
  };
  StepCostModel::Coefficients cost;
  bool cost_ready = false;
  std::vector<Stream> streams;
  std::vector<Running> running;
  std::vector<Waiting> waiting;
  int slots = 32;               // sequences per step
  int step_token_budget = 512;
  int max_waiting = 64;
  // Expected share of max_new_tokens a request generates, by class (learned from finished
  // ones; stop tokens end most answers early).
  std::array<double, 3> length_fraction = {1, 1, 1};
};

struct AdmissionRequest {
  RequestClass cls = RequestClass::Interactive;
  int prompt_tokens = 0;
  int max_new_tokens = 1;
  double tokens_per_second = 0;  // realtime
};

struct AdmissionDecision {
  AdmissionOutcome outcome = AdmissionOutcome::Admitted;
  double predicted_wait_s = 0;
  double realtime_load = 0;   // the streams' share of the executor's time, with this one if realtime
  double retry_after_s = 0;
  std::string message;        // for people: the prediction and the limit it broke
  bool admitted() const { return outcome == AdmissionOutcome::Admitted; }
};

// A stream at `tokens_per_second` whose context is `context_now` and which has `tokens_left`
// to generate: its average context over the rest of its answer, and the seconds that takes.
LoadPicture::Stream stream_for(double tokens_per_second, int64_t context_now, int tokens_left);
double realtime_load(const StepCostModel::Coefficients& c, const std::vector<LoadPicture::Stream>& streams);
// Seconds until a new request of this shape gets its first token.
double predicted_wait(const LoadPicture& load, const AdmissionRequest& request);
AdmissionDecision decide(const AdmissionConfig& config, const LoadPicture& load, const AdmissionRequest& request);

// The front door's view of the engine: the executor publishes its picture after each step;
// a transport asks admit() before it sends a request on, so a refusal costs no trip through
// a busy executor. What the front door admitted but the executor has not seen yet is added
// to the picture (so a burst does not all pass on one stale picture) until arrived(id).
// Thread-safe.
class AdmissionBoard {
 public:
  explicit AdmissionBoard(AdmissionConfig config) : config_(config) {}
  const AdmissionConfig& config() const { return config_; }
  void publish(std::shared_ptr<const LoadPicture> picture);
  // Admitted (and remembered as pending under `id`), or refused with the decision.
  AdmissionDecision admit(int64_t id, const AdmissionRequest& request, double now);
  // The decision admit() would make now, remembering nothing (a voice session asks whether
  // one more stream would fit before it opens).
  AdmissionDecision probe(const AdmissionRequest& request, double now);
  void arrived(int64_t id);
  // The picture last published (null before the first).
  std::shared_ptr<const LoadPicture> picture();

 private:
  struct Pending {
    AdmissionRequest request;
    double at = 0;
  };
  AdmissionDecision decide_locked(const AdmissionRequest& request, double now);
  AdmissionConfig config_;
  std::mutex mu_;
  std::shared_ptr<const LoadPicture> picture_;
  std::map<int64_t, Pending> pending_;
};

}  // namespace tutti
