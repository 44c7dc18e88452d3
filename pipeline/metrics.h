// Serving metrics in the Prometheus text format: counters, gauges and fixed-bucket
// histograms, labelled by request class where it matters. Written by the executor's thread,
// read by the HTTP thread (each metric guards itself), rendered by render().
#pragma once

#include <array>
#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "pipeline/admission.h"
#include "pipeline/scheduler.h"

namespace tutti {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v);
  // Appends the _bucket/_sum/_count lines for `name` with extra labels (e.g. class="x").
  void render(std::string& out, const std::string& name, const std::string& labels) const;
  uint64_t count() const;
  double sum() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t total_ = 0;
};

struct ServingMetrics {
  static constexpr int kClasses = 3;  // RequestClass values
  ServingMetrics();

  std::array<std::atomic<uint64_t>, kClasses> requests_finished{}, requests_refused{}, generated_tokens{}, prompt_tokens{};
  std::array<Histogram, kClasses> ttft, itl;
  Histogram step_seconds, step_batch, realtime_lead;
  std::atomic<uint64_t> realtime_underruns{0}, steps{0};
  std::atomic<uint64_t> executor_wakeups{0};  // step-loop turns, empty ones included
  std::atomic<uint64_t> step_failures{0};     // steps that threw (their sequences ended)
  std::atomic<uint64_t> canaries_run{0}, canary_micros{0};  // canary checks on the executor's thread, and their time
  std::atomic<uint64_t> prefill_tokens{0}, prefix_cache_hit_tokens{0};  // prompt tokens computed / found cached
  std::atomic<int64_t> queue_depth{0}, running{0}, held_for_client{0}, kv_blocks_used{0}, kv_blocks_total{0},
      kv_blocks_cached{0};
  // Admission, by class and outcome: decided by the engine (its totals, copied after each
  // submit and step) and refused at the front door (counted there, before the executor).
  std::array<std::array<std::atomic<uint64_t>, kAdmissionOutcomes>, kClasses> admission_engine{}, refused_front{};
  std::atomic<uint64_t> deferred_tokens{0}, batch_yields{0};  // see Scheduler
  std::atomic<uint64_t> voice_sessions_refused{0};  // Realtime sessions refused at the upgrade: no capacity for a stream
  // The step-cost model: its coefficients, its relative error, and predicted against
  // measured seconds over all steps; the admitted streams' share of the model's time and
  // the share admission lets them take.
  std::array<std::atomic<double>, 4> step_cost{};  // base, per_row, per_prefill_token, per_context_token
  std::atomic<double> step_cost_error{0}, step_predicted_total{0}, step_measured_total{0};
  std::atomic<double> realtime_load{0}, realtime_limit{1};

  std::string render() const;
};

}  // namespace tutti
