#include "pipeline/metrics.h"

#include <cstdio>

namespace tutti {

void Histogram::observe(double v) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  counts_[i]++;
  sum_ += v;
  total_++;
}

double Histogram::sum() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sum_;
}

uint64_t Histogram::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_;
}

namespace {
std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
std::string with(const std::string& labels, const std::string& more) {
  if (labels.empty()) return "{" + more + "}";
  return "{" + labels + "," + more + "}";
}
}  // namespace

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += name + "_bucket" + with(labels, "le=\"" + num(bounds_[i]) + "\"") + " " + std::to_string(cumulative) + "\n";
  }
  out += name + "_bucket" + with(labels, "le=\"+Inf\"") + " " + std::to_string(total_) + "\n";
  const std::string l = labels.empty() ? "" : "{" + labels + "}";
  out += name + "_sum" + l + " " + num(sum_) + "\n";
  out += name + "_count" + l + " " + std::to_string(total_) + "\n";
}

namespace {
const std::vector<double> kLatency = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

ServingMetrics::ServingMetrics()
    : ttft{Histogram(kLatency), Histogram(kLatency), Histogram(kLatency)},
      itl{Histogram(kLatency), Histogram(kLatency), Histogram(kLatency)},
      step_seconds({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}),
      step_batch({1, 2, 4, 8, 16, 32, 64, 128}),
      realtime_lead({0, 0.05, 0.1, 0.2, 0.4, 0.6, 1, 2}) {}

std::string ServingMetrics::render() const {
  std::string out;
  auto header = [&](const char* name, const char* type, const char* help) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  auto per_class = [&](const char* name, const char* help, const std::array<std::atomic<uint64_t>, kClasses>& v) {
    header(name, "counter", help);
    for (int c = 0; c < kClasses; ++c)
      out += std::string(name) + "{class=\"" + request_class_name(RequestClass(c)) + "\"} " + std::to_string(v[size_t(c)].load()) + "\n";
  };
  per_class("tutti_requests_finished_total", "Generations that ended (any reason), by class.", requests_finished);
  per_class("tutti_requests_refused_total", "Generations refused (busy, too long, invalid), by class.", requests_refused);
  per_class("tutti_generated_tokens_total", "Tokens generated, by class.", generated_tokens);
  per_class("tutti_prompt_tokens_total", "Prompt tokens admitted, by class.", prompt_tokens);
  header("tutti_time_to_first_token_seconds", "histogram", "From admission to the first generated token.");
  for (int c = 0; c < kClasses; ++c)
    ttft[size_t(c)].render(out, "tutti_time_to_first_token_seconds", std::string("class=\"") + request_class_name(RequestClass(c)) + "\"");
  header("tutti_inter_token_latency_seconds", "histogram", "Between consecutive generated tokens of a sequence.");
  for (int c = 0; c < kClasses; ++c)
    itl[size_t(c)].render(out, "tutti_inter_token_latency_seconds", std::string("class=\"") + request_class_name(RequestClass(c)) + "\"");
  header("tutti_step_seconds", "histogram", "Time of one forward step.");
  step_seconds.render(out, "tutti_step_seconds", "");
  header("tutti_step_batch_size", "histogram", "Sequences in one forward step.");
  step_batch.render(out, "tutti_step_batch_size", "");
  header("tutti_realtime_lead_seconds", "histogram", "Lead of a realtime stream over its playback clock when a token comes out.");
  realtime_lead.render(out, "tutti_realtime_lead_seconds", "");
  header("tutti_realtime_underruns_total", "counter", "Times a realtime stream's playback caught up with generation.");
  out += "tutti_realtime_underruns_total " + std::to_string(realtime_underruns.load()) + "\n";
  header("tutti_executor_steps_total", "counter", "Forward steps run.");
  out += "tutti_executor_steps_total " + std::to_string(steps.load()) + "\n";
  header("tutti_executor_wakeups_total", "counter", "Turns of the executor's step loop, including those that found nothing due.");
  out += "tutti_executor_wakeups_total " + std::to_string(executor_wakeups.load()) + "\n";
  header("tutti_executor_step_failures_total", "counter", "Steps that failed with an exception (their sequences ended with the error).");
  out += "tutti_executor_step_failures_total " + std::to_string(step_failures.load()) + "\n";
  header("tutti_canary_checks_total", "counter", "Canary checks the executor ran between steps (one modality each).");
  out += "tutti_canary_checks_total " + std::to_string(canaries_run.load()) + "\n";
  header("tutti_canary_seconds_total", "counter", "Executor time spent in canary checks.");
  out += "tutti_canary_seconds_total " + std::to_string(canary_micros.load() / 1e6) + "\n";
  header("tutti_prefill_tokens_total", "counter", "Prompt tokens computed by prefill.");
  out += "tutti_prefill_tokens_total " + std::to_string(prefill_tokens.load()) + "\n";
  header("tutti_prefix_cache_hit_tokens_total", "counter", "Prompt tokens found in the prefix cache instead of computed.");
  out += "tutti_prefix_cache_hit_tokens_total " + std::to_string(prefix_cache_hit_tokens.load()) + "\n";
  auto gauge = [&](const char* name, const char* help, int64_t v) {
    header(name, "gauge", help);
    out += std::string(name) + " " + std::to_string(v) + "\n";
  };
  gauge("tutti_queue_depth", "Admitted requests waiting to start.", queue_depth);
  gauge("tutti_running_sequences", "Sequences holding KV cache blocks.", running);
  gauge("tutti_sequences_held_for_client", "Sequences paused until their client reads (flow control).", held_for_client);
  gauge("tutti_kv_blocks_in_use", "KV cache blocks held by sequences.", kv_blocks_used);
  gauge("tutti_kv_blocks_cached", "KV cache blocks of the prefix cache held by no sequence (reusable, evicted when room is needed).", kv_blocks_cached);
  gauge("tutti_kv_blocks_total", "KV cache blocks in the pool.", kv_blocks_total);
  // What an inference gateway reads to pick a replica (the Gateway API Inference Extension's
  // model server protocol: queued requests, running requests, KV cache utilization 0..1),
  // under tutti's names and under vLLM's, which a stock endpoint picker reads by default.
  const double kv_use = kv_blocks_total > 0 ? double(kv_blocks_used) / double(kv_blocks_total) : 0;
  auto real_gauge = [&](const char* name, const char* help, double v) {
    header(name, "gauge", help);
    char buf[64];
    std::snprintf(buf, sizeof buf, " %.6f\n", v);
    out += name + std::string(buf);
  };
  gauge("tutti_requests_waiting", "Requests queued for the model (a gateway's TotalQueuedRequests).", queue_depth);
  gauge("tutti_requests_running", "Requests running on the model (a gateway's TotalRunningRequests).", running);
  real_gauge("tutti_kv_cache_utilization", "Share of the KV cache's blocks held by sequences, 0..1 (a gateway's KVCacheUtilization).", kv_use);
  gauge("vllm:num_requests_waiting", "tutti_requests_waiting, under the name gateways read by default.", queue_depth);
  gauge("vllm:num_requests_running", "tutti_requests_running, under the name gateways read by default.", running);
  real_gauge("vllm:kv_cache_usage_perc", "tutti_kv_cache_utilization, under the name gateways read by default.", kv_use);
  real_gauge("vllm:gpu_cache_usage_perc", "tutti_kv_cache_utilization, under the older name.", kv_use);

  header("tutti_admission_total", "counter",
         "Admission decisions by class and outcome (admitted; refused for realtime capacity, predicted wait, a full queue, "
         "or a queue wait for capacity that ran out).");
  for (int c = 0; c < kClasses; ++c)
    for (int o = 0; o < kAdmissionOutcomes; ++o) {
      const uint64_t n = admission_engine[size_t(c)][size_t(o)].load() + refused_front[size_t(c)][size_t(o)].load();
      out += std::string("tutti_admission_total{class=\"") + request_class_name(RequestClass(c)) + "\",outcome=\"" +
             admission_outcome_name(AdmissionOutcome(o)) + "\"} " + std::to_string(n) + "\n";
    }
  header("tutti_admission_refused_at_front_total", "counter", "Of those refusals, the ones decided at the front door (before the executor).");
  for (int c = 0; c < kClasses; ++c) {
    uint64_t n = 0;
    for (const auto& v : refused_front[size_t(c)]) n += v.load();
    out += std::string("tutti_admission_refused_at_front_total{class=\"") + request_class_name(RequestClass(c)) + "\"} " + std::to_string(n) + "\n";
  }
  // One unlabelled sample: its header and its value.
  auto sample = [&](const char* name, const char* type, const char* help, const std::string& value) {
    header(name, type, help);
    out += std::string(name) + " " + value + "\n";
  };
  const double load = realtime_load.load();
  sample("tutti_realtime_load_ratio", "gauge", "Predicted share of the model's time the admitted realtime streams take.", num(load));
  sample("tutti_realtime_headroom_ratio", "gauge", "Predicted share left before admission refuses a stream (its limit less the load).",
         num(realtime_limit.load() - load));
  sample("tutti_batch_tokens_deferred_total", "counter", "Tokens of non-realtime work left out of a step to keep realtime streams on time.",
         std::to_string(deferred_tokens.load()));
  sample("tutti_voice_sessions_refused_total", "counter", "Realtime sessions refused before the upgrade: the capacity held no further stream.",
         std::to_string(voice_sessions_refused.load()));
  sample("tutti_batch_yields_total", "counter", "Times a batch sequence sat out steps (its KV kept) while a realtime stream was urgent.",
         std::to_string(batch_yields.load()));
  header("tutti_step_cost_seconds", "gauge", "The learned step-cost model: seconds per step, per row, per prefill token, per cached position read.");
  const char* terms[] = {"base", "per_row", "per_prefill_token", "per_context_token"};
  for (size_t i = 0; i < 4; ++i) out += std::string("tutti_step_cost_seconds{term=\"") + terms[i] + "\"} " + num(step_cost[i].load()) + "\n";
  sample("tutti_step_predicted_seconds_total", "counter", "Sum of the step-cost model's predictions, made before each step ran.",
         num(step_predicted_total.load()));
  sample("tutti_step_measured_seconds_total", "counter", "Sum of the measured times of the same steps.", num(step_measured_total.load()));
  sample("tutti_step_cost_relative_error", "gauge", "Recent mean of |predicted - measured| / measured step time.", num(step_cost_error.load()));
  return out;
}

}  // namespace tutti
