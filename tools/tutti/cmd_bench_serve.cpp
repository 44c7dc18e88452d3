// tutti bench serve: the real server on loopback under a mixed load — realtime streams
// consumed at a fixed rate plus text requests arriving at random — run twice, with pacing
// and without, so the effect of playback-deadline pacing shows as numbers side by side.
#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include "actors/http/server.hpp"
#include "actors/pipeline.hpp"
#include "pipeline/engine.h"
#include "tools/tutti/commands.h"
#include "tools/tutti/model_loading.h"
#include "tools/tutti/loopback_server.h"

namespace tutti::cli {

namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct StreamResult {
  bool realtime = false;
  double ttft = -1;
  std::vector<double> token_times;  // seconds since the request was sent, one per token
  int underruns = 0;
  bool ok = false;
};

// Sends one streaming completion and records when each content chunk arrives. A client
// still reading at `hang_up` closes its connection there (the server cancels the rest).
StreamResult run_stream(uint16_t port, const std::string& body, bool realtime, double rate,
                        Clock::time_point hang_up = Clock::time_point::max()) {
  StreamResult r;
  r.realtime = realtime;
  try {
    net::io_context ioc;
    tcp::socket s(ioc);
    s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
    const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
                            std::to_string(body.size()) + "\r\n\r\n" + body;
    const auto t0 = Clock::now();
    net::write(s, net::buffer(req));
    std::string buf;
    char chunk[4096];
    beast::error_code ec;
    size_t scanned = 0;
    for (;;) {
      const size_t n = s.read_some(net::buffer(chunk), ec);
      if (n) buf.append(chunk, n);
      const double now = std::chrono::duration<double>(Clock::now() - t0).count();
      size_t pos;
      while ((pos = buf.find("\n\n", scanned)) != std::string::npos) {
        const size_t start = buf.rfind("data: ", pos);
        if (start != std::string::npos && start >= scanned) {
          const std::string data = buf.substr(start + 6, pos - start - 6);
          if (data == "[DONE]") {
            r.ok = true;
          } else {
            json c = json::parse(data, nullptr, false);
            if (!c.is_discarded() && c.contains("choices") && !c["choices"].empty()) {
              // Paced streams carry the running token count; text requests a chunk per text.
              if (c.contains("tutti")) {
                const size_t count = c["tutti"].value("completion_tokens", 0);
                while (r.token_times.size() < count) r.token_times.push_back(now);
              } else if (!c["choices"][0].value("text", "").empty()) {
                r.token_times.push_back(now);
              }
            }
          }
        }
        scanned = pos + 2;
      }
      if (ec) break;
      if (Clock::now() >= hang_up) {
        r.ok = true;
        break;
      }
    }
  } catch (const std::exception&) {
  }
  if (!r.token_times.empty()) r.ttft = r.token_times.front();
  if (realtime && rate > 0 && !r.token_times.empty()) {
    // Playback starts with the first token; token i is due i / rate later. A late token is an
    // underrun, and playback waits for it.
    double clock = r.token_times.front();
    for (size_t i = 1; i < r.token_times.size(); ++i) {
      clock += 1.0 / rate;
      if (r.token_times[i] > clock + 1e-3) {
        ++r.underruns;
        clock = r.token_times[i];
      }
    }
  }
  return r;
}

// The lightest possible client: sends a request and reads until the server closes, parsing
// nothing, so the overhead measurement charges the server, not its clients, for the cores.
void drain_stream(uint16_t port, const std::string& body) {
  try {
    net::io_context ioc;
    tcp::socket s(ioc);
    s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
    net::write(s, net::buffer("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body));
    char chunk[16384];
    beast::error_code ec;
    while (!ec) s.read_some(net::buffer(chunk), ec);
  } catch (const std::exception&) {
  }
}


std::string fixed(double v, int decimals) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", decimals, v);
  return b;
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size())))];
}

}  // namespace

int cmd_bench_serve(const std::vector<std::string>& argv) {
  auto opts = engine_options();
  for (auto o : {"streams", "rate", "stream-tokens", "text-rate", "text-tokens", "text-prompt-words", "seconds", "step-budget", "max-batch", "overhead-tokens"})
    opts.insert(o);
  Args args(argv, opts, {});
  if (!args.ok()) return fail(args.error());
  const int streams = int(args.get_int("streams", 8));
  const double rate = args.get_double("rate", 25);
  // Streams outlast the run by default (listeners hang up at its end), so both runs carry the
  // same stream load for the whole time: an unpaced stream that raced to its end early
  // would leave text alone on the machine and flatter the baseline.
  const int stream_tokens = int(args.get_int("stream-tokens", 1024));
  const double text_rate = args.get_double("text-rate", 4);  // requests per second, Poisson
  const int text_tokens = int(args.get_int("text-tokens", 16));
  const int prompt_words = int(args.get_int("text-prompt-words", 120));
  const double seconds = args.get_double("seconds", 6);
  const int step_budget = int(args.get_int("step-budget", 128));
  const int max_batch = int(args.get_int("max-batch", 32));
  auto settings = read_settings(args);
  if (!settings) return 1;
  if (!args.ok()) return fail(args.error());

  std::unique_ptr<Backend> backend;
  try {
    backend = make_backend(*settings);
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  auto model = Model::load(settings->model_path, *backend);
  if (!model) return fail(model.error().message);
  auto tok = Tokenizer::from_gguf((*model)->file());
  if (!tok) return fail(tok.error().message);
  std::shared_ptr<const Tokenizer> tokenizer(std::move(tok).value());
  std::string prompt;
  for (int i = 0; i < prompt_words; ++i) prompt += "word ";

  std::printf("load: %d realtime streams at %.1f tokens/s (up to %d tokens each, starting over the first half, listeners hang up at the end), text requests at %.1f/s (%d-word prompts, %d tokens), %.0f s; step budget %d\n",
              streams, rate, stream_tokens, text_rate, prompt_words, text_tokens, seconds, step_budget);
  std::vector<std::string> steps_line;
  std::printf("%-10s %10s %10s %10s %10s %10s %12s %8s\n", "pacing", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "underruns", "tokens/s", "failed");
  for (bool pacing : {true, false}) {
    actors::PipelineConfig pc;
    pc.kv_cache_bytes = size_t(settings->kv_cache_mb) << 20;
    pc.scheduler.step_token_budget = step_budget;
    pc.scheduler.prefill_chunk = step_budget;
    pc.scheduler.max_sequences_per_step = max_batch;
    pc.scheduler.max_waiting = 1024;
    pc.scheduler.max_running = 1024;
    pc.scheduler.pacing = pacing;
    auto running = start_loopback_server(**model, tokenizer, pc, settings->caf_workers);
    if (!running) return fail(running.error().message);
    const uint16_t port_value = (*running)->port();
    const uint16_t* port = &port_value;

    std::mutex mu;
    std::vector<StreamResult> results;
    std::vector<std::thread> clients;
    const auto start = Clock::now();
    // Streams start spread over the first half of the run, as calls arrive; text arrives
    // throughout.
    for (int i = 0; i < streams; ++i)
      clients.emplace_back([&, i] {
        std::this_thread::sleep_until(start + std::chrono::duration<double>(seconds * 0.5 * i / std::max(1, streams)));
        json b = {{"prompt", "stream " + std::to_string(i)}, {"max_tokens", stream_tokens}, {"stream", true},
                  {"tutti", {{"class", "realtime"}, {"rate", rate}, {"ignore_eos", true}}}};
        auto r = run_stream(*port, b.dump(), true, rate, start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)));
        std::lock_guard<std::mutex> lock(mu);
        results.push_back(std::move(r));
      });
    std::mt19937 rng(11);
    std::exponential_distribution<double> gap(text_rate);
    double t = 0.3;
    while (t < seconds) {
      std::this_thread::sleep_until(start + std::chrono::duration<double>(t));
      clients.emplace_back([&] {
        json b = {{"prompt", prompt}, {"max_tokens", text_tokens}, {"stream", true}, {"tutti", {{"ignore_eos", true}}}};
        auto r = run_stream(*port, b.dump(), false, 0);
        std::lock_guard<std::mutex> lock(mu);
        results.push_back(std::move(r));
      });
      t += gap(rng);
    }
    for (auto& c : clients) c.join();
    const double wall = std::chrono::duration<double>(Clock::now() - start).count();
    const ServingMetrics& m = *(*running)->pipeline().metrics;
    const size_t interactive = size_t(RequestClass::Interactive);
    steps_line.push_back(std::string(pacing ? "on " : "off") + ": " + std::to_string(m.steps.load()) + " steps, " +
                         fixed(m.step_batch.sum() / double(std::max<uint64_t>(1, m.step_batch.count())), 1) + " sequences and " +
                         fixed(m.step_seconds.sum() / double(std::max<uint64_t>(1, m.step_seconds.count())) * 1e3, 2) +
                         " ms each on average, busy " + fixed(m.step_seconds.sum() / wall * 100, 0) +
                         "% of the run; text TTFT inside the executor (submit to first token) " +
                         fixed(m.ttft[interactive].sum() / double(std::max<uint64_t>(1, m.ttft[interactive].count())) * 1e3, 1) +
                         " ms on average");
    std::vector<double> ttft, itl;
    int underruns = 0, failed = 0;
    size_t tokens = 0;
    for (auto& r : results) {
      tokens += r.token_times.size();
      failed += !r.ok || r.token_times.empty();
      if (r.realtime) {
        underruns += r.underruns;
        continue;
      }
      if (r.ttft >= 0) ttft.push_back(r.ttft);
      for (size_t k = 1; k < r.token_times.size(); ++k) itl.push_back(r.token_times[k] - r.token_times[k - 1]);
    }
    std::printf("%-10s %8.1fms %8.1fms %8.1fms %8.1fms %10d %12.1f %8d\n", pacing ? "on" : "off", pct(ttft, 0.5) * 1e3,
                pct(ttft, 0.99) * 1e3, pct(itl, 0.5) * 1e3, pct(itl, 0.99) * 1e3, underruns, double(tokens) / wall, failed);
  }

  for (const std::string& l : steps_line) std::printf("  %s\n", l.c_str());

  // Serving overhead: 32 sequences decoding together, through the whole server (HTTP, SSE,
  // actors) and straight through the engine in this process. The difference is what the
  // serving layers cost per step.
  const int n_seq = 32, n_tok = int(args.get_int("overhead-tokens", 64));
  auto engine_only = [&] {
    auto kv = (*model)->make_kv_cache(size_t(settings->kv_cache_mb) << 20, TensorType::F16);
    SchedulerConfig c;
    c.max_sequences_per_step = n_seq;
    c.step_token_budget = std::max(step_budget, n_seq);
    c.prefill_chunk = c.step_token_budget;
    Engine e(**model, std::move(kv).value(), c, tokenizer.get());
    for (int i = 0; i < n_seq; ++i) {
      EngineRequest r;
      r.seq.id = i + 1;
      r.seq.prompt = tokenizer->encode("sequence " + std::to_string(i));
      r.seq.max_new_tokens = n_tok;
      r.sampling.temperature = 1.0f;  // what the server's requests get by default
      r.stop_at_eog = false;
      (void)e.submit(std::move(r), 0);
    }
    const auto t0 = Clock::now();
    double step_time = 0;
    int steps = 0;
    while (!e.idle()) {
      EngineStepStats st;
      e.step(std::chrono::duration<double>(Clock::now() - t0).count(), &st);
      step_time += st.seconds;
      steps += st.sequences > 0;
    }
    return std::make_tuple(std::chrono::duration<double>(Clock::now() - t0).count(), step_time, steps);
  };
  const auto [engine_wall, engine_steps_s, engine_steps] = engine_only();
  double server_wall = 0, server_step_s = 0;
  uint64_t server_steps = 0;
  {
    actors::PipelineConfig pc;
    pc.kv_cache_bytes = size_t(settings->kv_cache_mb) << 20;
    pc.scheduler.max_sequences_per_step = n_seq;
    pc.scheduler.step_token_budget = std::max(step_budget, n_seq);
    pc.scheduler.prefill_chunk = pc.scheduler.step_token_budget;
    auto running = start_loopback_server(**model, tokenizer, pc, settings->caf_workers);
    if (!running) return fail(running.error().message);
    const uint16_t port_value = (*running)->port();
    const uint16_t* port = &port_value;
    std::vector<std::thread> clients;
    const auto t0 = Clock::now();
    for (int i = 0; i < n_seq; ++i)
      clients.emplace_back([&, i] {
        json b = {{"prompt", "sequence " + std::to_string(i)}, {"max_tokens", n_tok}, {"stream", true}, {"tutti", {{"ignore_eos", true}}}};
        drain_stream(*port, b.dump());
      });
    for (auto& c : clients) c.join();
    server_wall = std::chrono::duration<double>(Clock::now() - t0).count();
    server_steps = (*running)->pipeline().metrics->step_seconds.count();
    server_step_s = (*running)->pipeline().metrics->step_seconds.sum();
  }
  std::printf("serving, %d sequences x %d tokens: engine alone %.3f s (%d steps, %.2f ms/step); through the server %.3f s "
              "(%llu steps, %.2f ms/step; steps take %.1f%% of the wall time, the clients run on the same cores)\n",
              n_seq, n_tok, engine_wall, engine_steps, engine_steps_s / std::max(1, engine_steps) * 1e3, server_wall,
              (unsigned long long)server_steps, server_step_s / double(std::max<uint64_t>(1, server_steps)) * 1e3,
              server_step_s / server_wall * 100);
  return 0;
}

}  // namespace tutti::cli
