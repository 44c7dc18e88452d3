// tutti bench: prompt processing, batch-1 and batched decode throughput, and this machine's
// memory read bandwidth, so decode can be reported as a fraction of what the memory allows.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>

#include <ctime>

#include "tools/tutti/commands.h"
#include "tools/tutti/model_loading.h"

namespace tutti::cli {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
// CPU time of this thread: with a GPU backend (which sleeps while it waits for the device)
// the host's own work per step.
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

int32_t argmax(const float* x, int n) { return int32_t(std::max_element(x, x + n) - x); }

struct DecodeResult {
  double tokens_per_s = 0;    // over the whole run: sequences * steps / time
  double step_seconds = 0;    // mean
  double median_step = 0;     // robust to other tenants' bursts on a shared machine
  double host_cpu_per_step = 0;  // seconds of the driving thread's CPU time per step
};

}  // namespace

int cmd_bench(const std::vector<std::string>& argv) {
  auto opts = engine_options();
  for (auto o : {"prompt-tokens", "context", "min-seconds", "batches"}) opts.insert(o);
  Args args(argv, opts, {"json", "no-bandwidth"});
  if (!args.ok()) return fail(args.error());
  const int prompt_tokens = int(args.get_int("prompt-tokens", 128));
  const int context = int(args.get_int("context", 16));  // tokens each decoding sequence already holds
  const double min_seconds = args.get_double("min-seconds", 2.0);
  if (!args.ok()) return fail(args.error());
  auto engine = open_engine(args, false);
  if (!engine) return 1;
  if (prompt_tokens < 1 || context < 1) return fail("--prompt-tokens and --context must be positive");
  Model& model = *engine->model;
  PagedKvCache& kv = *engine->kv;
  const int n_vocab = int(model.hparams().n_vocab);
  const bool json = args.has("json");
  auto note = [&](const char* fmt, auto... a) {
    if (!json) std::fprintf(stderr, fmt, a...);
  };

  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> any_token(0, n_vocab - 1);
  auto random_tokens = [&](int n) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = any_token(rng);
    return t;
  };
  StepLogits logits;
  auto run = [&](const Batch& b) {
    if (Status s = model.forward(b, kv, logits); !s) {
      fail(s.message());
      std::exit(1);
    }
  };

  double bandwidth = 0;
  if (!args.has("no-bandwidth")) bandwidth = engine->backend->measure_bandwidth();

  // Prompt processing: one chunk of prompt_tokens, best of several runs after a warm-up.
  double prefill_tps = 0;
  {
    Batch b;
    b.chunks.push_back({1, 0, random_tokens(prompt_tokens), false});
    run(b);  // warm-up (page-in of the weights)
    kv.release(1);
    const auto t_all = Clock::now();
    for (int rep = 0; rep < 10 && (rep < 3 || seconds_since(t_all) < min_seconds); ++rep) {
      const auto t = Clock::now();
      run(b);
      prefill_tps = std::max(prefill_tps, prompt_tokens / seconds_since(t));
      kv.release(1);
    }
    note("prefill   %4d tokens: %9.1f tokens/s\n", prompt_tokens, prefill_tps);
  }

  // Decode: B sequences with `context` cached tokens each, all decoding in the same steps.
  std::vector<int> batch_sizes;
  for (const std::string& part : split_list(args.get("batches", "1,4,16,32"))) batch_sizes.push_back(std::max(1, std::atoi(part.c_str())));
  if (std::find(batch_sizes.begin(), batch_sizes.end(), 1) == batch_sizes.end()) batch_sizes.insert(batch_sizes.begin(), 1);
  std::map<int, DecodeResult> decode;
  for (int B : batch_sizes) {
    Batch prefill;
    for (int s = 0; s < B; ++s) prefill.chunks.push_back({100 + s, 0, random_tokens(context), false});
    run(prefill);
    std::vector<int32_t> next(static_cast<size_t>(B));
    for (int s = 0; s < B; ++s) next[size_t(s)] = argmax(logits.row(s), n_vocab);
    Batch step;
    for (int s = 0; s < B; ++s) step.chunks.push_back({100 + s, context, {next[size_t(s)]}, false});
    int steps = 0;
    std::vector<double> step_times;
    const double cpu0 = thread_cpu_seconds();
    const auto t0 = Clock::now();
    while (steps < 4 || (seconds_since(t0) < min_seconds && steps < 512)) {
      const auto t = Clock::now();
      run(step);
      step_times.push_back(seconds_since(t));
      for (int s = 0; s < B; ++s) {
        step.chunks[size_t(s)].tokens[0] = argmax(logits.row(s), n_vocab);
        step.chunks[size_t(s)].start_pos++;
      }
      ++steps;
    }
    const double total = seconds_since(t0);
    const double cpu = thread_cpu_seconds() - cpu0;
    std::sort(step_times.begin(), step_times.end());
    decode[B] = {B * steps / total, total / steps, step_times[step_times.size() / 2], cpu / steps};
    note("decode    batch %3d: %9.1f tokens/s  (%6.2f ms/step mean, %6.2f median, %6.2f best; host thread CPU %.3f ms/step)\n", B,
         decode[B].tokens_per_s, decode[B].step_seconds * 1e3, decode[B].median_step * 1e3, step_times[0] * 1e3,
         decode[B].host_cpu_per_step * 1e3);
    for (int s = 0; s < B; ++s) kv.release(100 + s);
  }

  // Bandwidth: the better of a measurement before the decode runs and one after, with the
  // same threads the kernels use, so a burst from another tenant does not flatter decode.
  if (!args.has("no-bandwidth")) bandwidth = std::max(bandwidth, engine->backend->measure_bandwidth());
  const double step_bytes = double(model.weight_bytes_per_step());
  // Decode against bandwidth: weight bytes per step over the median batch-1 step time.
  const double fraction = bandwidth > 0 ? step_bytes / decode[1].median_step / bandwidth : 0;
  note("%s bandwidth: %.2f GB/s (%s)\n", engine->backend->device() == Device::Cuda ? "device copy" : "memory read",
       bandwidth / 1e9, engine->backend->describe().c_str());
  note("batch-1 decode reads %.1f MB of weights per step: %.2f GB/s = %.1f%% of bandwidth\n", step_bytes / 1e6,
       step_bytes / decode[1].median_step / 1e9, fraction * 100);
  if (decode.count(32)) note("batch-32 / batch-1 aggregate decode: %.2fx\n", decode[32].tokens_per_s / decode[1].tokens_per_s);

  if (json) {
    std::printf("{\"model\": \"%s\", \"backend\": \"%s\", \"threads\": %d, \"model_bytes\": %zu, "
                "\"weight_bytes_per_step\": %.0f, \"prompt_tokens\": %d, \"prefill_tokens_per_s\": %.2f, "
                "\"decode_tokens_per_s\": {",
                engine->settings.model_path.c_str(), engine->backend->describe().c_str(), engine->backend->threads(),
                model.total_weight_bytes(), step_bytes, prompt_tokens, prefill_tps);
    bool first = true;
    for (auto& [B, r] : decode) {
      std::printf("%s\"%d\": %.2f", first ? "" : ", ", B, r.tokens_per_s);
      first = false;
    }
    std::printf("}, \"decode_step_ms_median\": {");
    first = true;
    for (auto& [B, r] : decode) {
      std::printf("%s\"%d\": %.3f", first ? "" : ", ", B, r.median_step * 1e3);
      first = false;
    }
    std::printf("}, \"host_cpu_ms_per_step\": {");
    first = true;
    for (auto& [B, r] : decode) {
      std::printf("%s\"%d\": %.4f", first ? "" : ", ", B, r.host_cpu_per_step * 1e3);
      first = false;
    }
    std::printf("}, \"memory_read_gb_per_s\": %.3f, \"decode_bandwidth_fraction\": %.4f}\n", bandwidth / 1e9, fraction);
  }
  return 0;
}

}  // namespace tutti::cli
