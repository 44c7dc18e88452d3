// tutti bench voice: concurrent realtime voice sessions over /v1/realtime on the loopback
// server, each speaking turns in real time (100 ms appends) and listening to the answers,
// while text requests arrive at random. Reports end of speech (the server's commit) to the
// first audio delta, p50/p99, and underruns of the answers' playback, per session count,
// with text time-to-first-token beside them. Each session count runs once per mode (same
// binary, same load; --modes): `speaking` = the prefix cache and prefill while the user is
// still talking (the default server), `cache` = the prefix cache only (earlier turns reused,
// the new speech computed at its end), `off` = neither (every turn's whole prompt computed
// at the end of speech).
#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include "actors/http/realtime_audio.hpp"
#include "tools/loadtest/realtime_client.h"
#include "tools/tutti/commands.h"
#include "tools/tutti/model_loading.h"
#include "tools/tutti/loopback_server.h"

namespace tutti::cli {

namespace {

namespace beast = boost::beast;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::vector<float> turn_audio() {
  std::vector<float> s(size_t(24000 * 0.3), 0.f);
  for (int i = 0; i < int(24000 * 0.8); ++i) {
    double v = 0;
    for (int h = 1; h <= 6; ++h) v += std::sin(2 * 3.14159265358979 * 150 * h * i / 24000.0) / h;
    s.push_back(float(v / 2 * 0.3));
  }
  s.resize(s.size() + size_t(24000 * 0.6), 0.f);
  return s;
}

struct VoiceResult {
  std::vector<double> speech_to_audio;
  int underruns = 0, turns = 0, errors = 0;
  int sessions_refused = 0, answers_refused = 0;  // busy: the realtime capacity held no more
};

// One session: turns until `until`, each answered before the next starts.
VoiceResult voice_session(uint16_t port, Clock::time_point until, int answer_tokens) {
  VoiceResult r;
  // Events come on the connection's thread (the commit arrives while this thread is still
  // sending the turn's trailing silence); this thread speaks in real time.
  std::mutex mu;
  std::condition_variable cv;
  int answered = 0;
  bool failed = false;
  Clock::time_point committed{}, first{};
  bool have_commit = false, have_audio = false;
  double playback_end = 0;
  auto on_event = [&](const json& e, Clock::time_point now) {
    if (!e.is_object() || !e.contains("type") || !e["type"].is_string()) return;
    std::lock_guard<std::mutex> lock(mu);
    const std::string type = e["type"];
    if (type == "input_audio_buffer.committed") committed = now, have_commit = true;
    if (type == "response.output_audio.delta" && e.contains("delta") && e["delta"].is_string()) {
      const auto bytes = http::base64_decode(e["delta"].get<std::string>());
      const double samples = bytes ? double(bytes->size() / 2) : 0;
      if (!have_audio) {
        first = now;
        have_audio = true;
        if (have_commit) r.speech_to_audio.push_back(std::chrono::duration<double>(first - committed).count());
      } else if (std::chrono::duration<double>(now - first).count() > playback_end + 0.001) {
        ++r.underruns;  // playback ran dry before this delta came
        playback_end = std::chrono::duration<double>(now - first).count();
      }
      playback_end += samples / 24000;
    }
    if (type == "error") {
      const json& err = e.contains("error") && e["error"].is_object() ? e["error"] : json::object();
      if (err.value("code", "") == "server_busy") {
        ++r.answers_refused;  // refused before it started: no response comes; the next turn may fit
        ++answered;
        cv.notify_all();
      } else {
        ++r.errors;
      }
    }
    if (type == "response.done") {
      have_commit = have_audio = false;
      playback_end = 0;
      ++answered;
      cv.notify_all();
    }
  };
  auto on_closed = [&] {
    std::lock_guard<std::mutex> lock(mu);
    failed = true;
    cv.notify_all();
  };
  auto client = loadtest::RealtimeClient::connect("127.0.0.1", port, "", std::chrono::seconds(10), on_event, on_closed);
  if (!client) {
    if (client.error().code == ErrorCode::busy) ++r.sessions_refused;
    else ++r.errors;
    return r;
  }
  (*client)->send({{"type", "session.update"},
                   {"session", {{"modalities", {"audio"}}, {"max_response_output_tokens", answer_tokens},
                                {"turn_detection", {{"type", "server_vad"}, {"silence_duration_ms", 300}}}}}});
  const auto audio = turn_audio();
  while (Clock::now() < until) {
    const auto start = Clock::now();
    for (size_t at = 0, k = 0; at < audio.size(); at += 2400, ++k) {
      std::this_thread::sleep_until(start + std::chrono::milliseconds(100 * k));
      (*client)->send({{"type", "input_audio_buffer.append"},
                       {"audio", http::encode_wire_audio(std::span<const float>(audio.data() + at, std::min<size_t>(2400, audio.size() - at)),
                                                         http::AudioWire::Pcm16)}});
    }
    std::unique_lock<std::mutex> lock(mu);  // the answer plays out before the next turn
    ++r.turns;
    if (!cv.wait_for(lock, std::chrono::seconds(30), [&] { return answered >= r.turns || failed; }) || failed) break;
  }
  (*client)->close();
  std::lock_guard<std::mutex> lock(mu);
  return r;
}

double ttft_once(uint16_t port, uint64_t seed) {
  net::io_context ioc;
  tcp::socket s(ioc);
  s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
  // A different prompt each time: text requests find nothing in the prefix cache, so the
  // modes compare the voice turns' prefill and not a cached text prompt.
  std::mt19937_64 rng(seed);
  static const char* words[] = {"river", "stone", "light", "winter", "quiet", "market", "signal", "orange", "paper", "engine"};
  std::string prompt;
  for (int i = 0; i < 60; ++i) prompt += std::string(words[rng() % 10]) + " ";
  const std::string body = json{{"prompt", prompt}, {"max_tokens", 8}, {"stream", true}}.dump();
  const auto t0 = Clock::now();
  net::write(s, net::buffer("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body));
  std::string got;
  char buf[4096];
  boost::system::error_code ec;
  double first = -1;
  for (;;) {
    const size_t n = s.read_some(net::buffer(buf), ec);
    got.append(buf, n);
    if (first < 0 && got.find("data: ") != std::string::npos) first = since(t0);
    if (ec) break;
  }
  return first;
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size())))];
}

}  // namespace

int cmd_bench_voice(const std::vector<std::string>& argv) {
  auto opts = engine_options();
  for (auto o : {"sessions", "seconds", "text-rate", "answer-seconds", "modes", "compare-model", "admission"}) opts.insert(o);
  Args args(argv, opts, {});
  if (!args.ok()) return fail(args.error());
  const double seconds = args.get_double("seconds", 12);
  const double text_rate = args.get_double("text-rate", 2);
  const double answer_seconds = args.get_double("answer-seconds", 2);
  std::vector<int> counts;
  for (const std::string& c : split_list(args.get("sessions", "1,4,8,16"))) counts.push_back(std::max(1, std::atoi(c.c_str())));
  const std::vector<std::string> modes = split_list(args.get("modes", "speaking,off"));
  // Admission (realtime capacity, wait targets, step allowances) on, off, or both in turn.
  std::vector<bool> admissions;
  for (const std::string& a : split_list(args.get("admission", "on"))) {
    if (a != "on" && a != "off") return fail("--admission takes on and off");
    admissions.push_back(a == "on");
  }
  for (const std::string& m : modes)
    if (m != "speaking" && m != "cache" && m != "off") return fail("--modes takes speaking, cache and off");
  // The model, and with --compare-model a second one (another audio codec, say) under the
  // same load in the same run.
  std::vector<std::unique_ptr<LoadedModel>> engines;
  engines.push_back(open_engine(args, true));
  if (!engines.back()) return 1;
  if (args.has("compare-model")) {
    std::vector<std::string> other;
    for (size_t i = 0; i < argv.size(); ++i) {
      if (argv[i] == "--model" || argv[i] == "--compare-model") { ++i; continue; }
      other.push_back(argv[i]);
    }
    other.push_back("--model");
    other.push_back(args.get("compare-model"));
    Args args2(other, opts, {});
    engines.push_back(open_engine(args2, true));
    if (!engines.back()) return 1;
  }
  std::printf("voice turns: 0.3 s silence + 0.8 s voiced + 0.6 s silence streamed in real time, answers of %.1f s of audio, "
              "text requests at %.1f/s, %.0f s per run\n", answer_seconds, text_rate, seconds);
  std::printf("%-6s %9s %-9s %-9s %8s %18s %18s %10s %16s %9s %9s %7s\n", "codec", "sessions", "mode", "admission", "turns",
              "speech->audio p50", "speech->audio p99", "underruns", "text TTFT p50/p99", "sessions", "answers", "errors");
  std::printf("%-6s %9s %-9s %-9s %8s %18s %18s %10s %16s %9s %9s %7s\n", "", "", "", "", "", "", "", "", "", "refused", "refused", "");
  for (auto& engine : engines) {
  const ModalityInfo* audio = engine->model->config().modalities.find(Modality::Audio);
  if (!audio) return fail(engine->settings.model_path + " has no audio modality");
  const int answer_tokens = int(std::lround(answer_seconds * audio->tokens_per_second()));
  const std::string codec = audio->transform;
  std::shared_ptr<const Tokenizer> tokenizer(std::move(engine->tokenizer));
  for (int n : counts)
    for (const std::string& mode : modes)
    for (bool admission : admissions) {
      actors::PipelineConfig pc;
      pc.scheduler.admission.enabled = admission;
      pc.prefix_cache = mode != "off";
      pc.kv_cache_bytes = size_t(engine->settings.kv_cache_mb) << 20;
      pc.scheduler.max_waiting = 1024;
      pc.scheduler.max_running = 1024;
      auto running = start_loopback_server(*engine->model, tokenizer, pc, engine->settings.caf_workers,
                                          mode == "speaking" ? engine->settings.prefill_while_speaking_ms : 0);
      if (!running) return fail(running.error().message);
      const uint16_t port = (*running)->port();
      const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
      std::mutex mu;
      VoiceResult all;
      std::vector<double> ttft;
      std::vector<std::thread> threads;
      for (int i = 0; i < n; ++i)
        threads.emplace_back([&, i] {
          std::this_thread::sleep_for(std::chrono::milliseconds(137 * i % 1700));  // sessions start out of step
          VoiceResult r = voice_session(port, until, answer_tokens);
          std::lock_guard<std::mutex> lock(mu);
          all.speech_to_audio.insert(all.speech_to_audio.end(), r.speech_to_audio.begin(), r.speech_to_audio.end());
          all.underruns += r.underruns, all.turns += r.turns, all.errors += r.errors;
          all.sessions_refused += r.sessions_refused, all.answers_refused += r.answers_refused;
        });
      std::mt19937 rng(5);
      std::exponential_distribution<double> gap(text_rate);
      const auto t0 = Clock::now();
      double t = gap(rng);
      while (Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(0)) < until) {
        std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t)));
        if (Clock::now() >= until) break;
        threads.emplace_back([&, seed = rng()] {
          const double v = ttft_once(port, seed);
          std::lock_guard<std::mutex> lock(mu);
          if (v >= 0) ttft.push_back(v);
        });
        t += gap(rng);
      }
      for (auto& th : threads) th.join();
      std::printf("%-6s %9d %-9s %-9s %8d %15.0f ms %15.0f ms %10d %8.0f/%.0f ms %9d %9d %7d\n", codec.c_str(), n, mode.c_str(),
                  admission ? "on" : "off", all.turns, pct(all.speech_to_audio, 0.5) * 1e3, pct(all.speech_to_audio, 0.99) * 1e3,
                  all.underruns, pct(ttft, 0.5) * 1e3, pct(ttft, 0.99) * 1e3, all.sessions_refused, all.answers_refused, all.errors);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace tutti::cli
