// A forward step's cost, learned online from the steps the executor measures: plain logic,
// no clocks (the engine reports each step's shape and measured seconds; tests report fake
// ones). What the scheduler and admission ask it: how long a step of a given composition
// will take.
//
// The model is linear in the step's composition,
//
//   seconds = base + per_row * rows + per_prefill_token * prefill_tokens
//                  + per_context_token * context_tokens
//
// where rows are the sequences in the step (decodes and prefill chunks alike: each one is a
// row of logits, a sampler, a block table), prefill_tokens the prompt tokens computed beyond
// one per row, and context_tokens the cached positions attention reads. On a GPU `base` is
// the weight read that bounds a decode step; on a CPU the products cost per token as well.
// Nothing here is tuned to a machine: the coefficients are a weighted least-squares fit over
// recent steps (exponential forgetting, so a machine that slows down is followed), kept
// non-negative, with a small ridge that pulls the per-prefill-token cost towards the
// per-row cost until prefills have been seen.
#pragma once

#include <array>
#include <cstdint>

namespace tutti {

// What a step is made of, as the cost model reads it.
struct StepShape {
  int rows = 0;                 // sequences in the step
  int prefill_tokens = 0;       // tokens beyond one per row (prompt chunks)
  int64_t context_tokens = 0;   // cached positions read by attention, over all rows
  bool empty() const { return rows == 0; }
  StepShape& operator+=(const StepShape& o) {
    rows += o.rows, prefill_tokens += o.prefill_tokens, context_tokens += o.context_tokens;
    return *this;
  }
};

// The shape a chunk of `n` tokens at positions [start, start + n) adds to a step.
StepShape chunk_shape(int start, int n);

class StepCostModel {
 public:
  struct Coefficients {
    double base = 0, per_row = 0, per_prefill_token = 0, per_context_token = 0;
  };
  // `forgetting`: weight kept by the past at each new step (0.99: about the last 100 steps).
  explicit StepCostModel(double forgetting = 0.99);

  void observe(const StepShape& shape, double seconds);
  // Starts from what another model of the same machine learned (a reload of the same
  // weights): steps of a spread of shapes priced by `prior` are observed, so the model is
  // ready at once and real steps take over as the forgetting wears the prior away.
  void seed(const Coefficients& prior);
  // Predicted seconds of a step of this shape; 0 for an empty step, and 0 before any step
  // was seen (nothing is known yet, so nothing is refused for it).
  double predict(const StepShape& shape) const;
  bool ready() const { return steps_ >= kReadySteps; }
  uint64_t steps_observed() const { return steps_; }
  const Coefficients& coefficients() const { return coef_; }
  // Mean relative error of the prediction made before each step was observed (exponential
  // average over recent steps), and the sums of predicted and measured seconds since start.
  double relative_error() const { return rel_error_; }
  double predicted_seconds_total() const { return predicted_total_; }
  double measured_seconds_total() const { return measured_total_; }

  static constexpr uint64_t kReadySteps = 8;

 private:
  static constexpr int kFeatures = 4;
  using Vec = std::array<double, kFeatures>;
  static Vec features(const StepShape& s);
  void refit();

  double forgetting_;
  std::array<Vec, kFeatures> xtx_{};  // weighted sums of x x^T
  Vec xty_{};                          // weighted sums of x * seconds
  double weight_ = 0;                  // weighted count of steps
  uint64_t steps_ = 0;
  Coefficients coef_;
  double rel_error_ = 0, predicted_total_ = 0, measured_total_ = 0;
};

}  // namespace tutti
