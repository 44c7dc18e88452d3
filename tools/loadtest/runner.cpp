#include "tools/loadtest/runner.h"

#include <set>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <list>
#include <map>
#include <cmath>
#include <mutex>
#include <random>
#include <thread>

#include "tools/loadtest/clients.h"

namespace tutti::loadtest {

namespace {

constexpr int kMaxInFlight = 512;  // requests at once; beyond, arrivals are counted as dropped

// The long-lived clients of one kind (voice sessions, stream jobs): client i runs on its own
// thread while the current stage asks for more than i; one that ends early (its connection
// failed, say) is started again while it is still wanted. Used from the runner's thread.
class ClientPool {
 public:
  explicit ClientPool(int max) : max_(max), running_(size_t(std::max(1, max))), threads_(size_t(std::max(0, max))) {}
  ~ClientPool() { join(); }
  // Starts run(i) for each i below `wanted` (and the pool's size) that is not running.
  void fill(int wanted, const std::function<void(int)>& run) {
    for (int i = 0; i < wanted && i < max_; ++i) {
      if (running_[size_t(i)]) continue;
      running_[size_t(i)] = true;
      if (threads_[size_t(i)].joinable()) threads_[size_t(i)].join();
      threads_[size_t(i)] = std::thread([this, i, run] {
        run(i);
        running_[size_t(i)] = false;
      });
    }
  }
  int running() const {
    int n = 0;
    for (int i = 0; i < max_; ++i) n += running_[size_t(i)];
    return n;
  }
  void join() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  int max_;
  std::vector<std::atomic<bool>> running_;
  std::vector<std::thread> threads_;
};

int sample(const Distribution& d, std::mt19937_64& rng) {
  std::normal_distribution<double> n(d.mean, d.sd);
  return int(std::lround(std::clamp(d.sd > 0 ? n(rng) : d.mean, d.min, d.max)));
}

// The report's name for a counter of tutti's /metrics that the load test follows ("" for
// the rest): admission decisions by class and outcome, batch work held back for realtime
// streams, underruns, voice sessions refused.
std::string server_counter(const std::string& metric) {
  static const std::map<std::string, std::string> plain = {
      {"tutti_batch_tokens_deferred_total", "server.batch_tokens_deferred"},
      {"tutti_batch_yields_total", "server.batch_yields"},
      {"tutti_realtime_underruns_total", "server.realtime_underruns"},
      {"tutti_voice_sessions_refused_total", "server.voice_sessions_refused"}};
  if (auto it = plain.find(metric); it != plain.end()) return it->second;
  const std::string prefix = "tutti_admission_total{class=\"";
  if (metric.rfind(prefix, 0) != 0) return "";
  const size_t cls_end = metric.find('"', prefix.size());
  const size_t outcome = metric.find("outcome=\"", cls_end);
  if (cls_end == std::string::npos || outcome == std::string::npos) return "";
  const size_t outcome_end = metric.find('"', outcome + 9);
  return "server.admission." + metric.substr(prefix.size(), cls_end - prefix.size()) + "." +
         metric.substr(outcome + 9, outcome_end - outcome - 9);
}

}  // namespace

Expected<nlohmann::json> run_scenario(const Scenario& sc, const std::function<void(const std::string&)>& progress) {
  std::vector<float> voice;
  int max_sessions = 0, max_jobs = 0;
  for (const Stage& s : sc.stages) max_sessions = std::max(max_sessions, s.voice_sessions), max_jobs = std::max(max_jobs, s.stream_jobs);
  if (max_sessions > 0 || max_jobs > 0) {
    auto v = load_voice(sc.voice_wav);
    if (!v) return v.error();
    voice = std::move(v).value();
  }
  Recorder rec;
  Target target;
  target.host = sc.host, target.port = sc.port, target.api_key = sc.api_key, target.model = sc.model;
  if (target.model.empty()) {
    auto m = served_model(target);
    if (!m) return m.error();
    target.model = *m;
  }
  target.start = Clock::now();
  const double total = sc.total_seconds();
  const Clock::time_point end = target.start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(total));
  target.deadline = end + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(sc.drain_s));
  auto stage_at = [&](double t) {
    double acc = 0;
    for (size_t i = 0; i < sc.stages.size(); ++i) {
      acc += sc.stages[i].duration_s;
      if (t < acc) return int(i);
    }
    return int(sc.stages.size()) - 1;
  };
  auto stage_now = [&] { return stage_at(target.since_start()); };
  std::atomic<bool> ended{false};
  std::atomic<int64_t> started{0};
  std::atomic<int> in_flight{0};
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::list<Worker> workers;  // this thread only; finished ones are joined as the run goes
  // The server's own counters, per stage as they move (scraped once a second), and its
  // predicted realtime headroom over time.
  std::map<std::string, double> scraped = scrape_metrics(target);
  auto record_server = [&](int stage) {
    std::map<std::string, double> now = scrape_metrics(target);
    if (now.empty()) return;
    for (const auto& [metric, value] : now) {
      const std::string name = server_counter(metric);
      if (name.empty()) continue;
      const double delta = value - scraped[metric];
      if (delta > 0) rec.count(name, stage, int64_t(std::llround(delta)));
    }
    if (auto h = now.find("tutti_realtime_headroom_ratio"); h != now.end())
      rec.add("server.realtime_headroom", stage, target.since_start(), h->second);
    scraped = std::move(now);
  };
  Clock::time_point next_scrape = Clock::now() + std::chrono::seconds(1);

  // Voice sessions and stream jobs: client i runs while the current stage asks for more than i.
  auto wanted = [&](int Stage::*count, int i) { return !ended && sc.stages[size_t(stage_now())].*count > i; };
  ClientPool voices(max_sessions), jobs(max_jobs);  // after what their clients use: joined first

  std::mt19937_64 rng(sc.seed);
  std::exponential_distribution<double> unit(1.0);
  // Each kind's next arrival, in units of rate * time, and its clock.
  double next_text = unit(rng), next_speech = unit(rng), next_image = unit(rng), next_music = unit(rng), next_video = unit(rng);
  double text_clock = 0, speech_clock = 0, image_clock = 0, music_clock = 0, video_clock = 0;
  double last_t = 0;
  auto launch = [&](auto&& fn) {
    if (sc.max_requests > 0 && started >= sc.max_requests) return;
    if (in_flight >= kMaxInFlight) {
      rec.count("harness.dropped", stage_now());
      return;
    }
    ++started;
    ++in_flight;
    auto done = std::make_shared<std::atomic<bool>>(false);
    workers.push_back({std::thread([&, fn, done] {
                         fn();
                         --in_flight;
                         *done = true;
                       }),
                       done});
  };
  Clock::time_point next_progress = Clock::now();
  std::set<int> reloads_started;  // stages whose reload has been sent
  while (Clock::now() < end && !(sc.max_requests > 0 && started >= sc.max_requests)) {
    const double t = target.since_start();
    const int stage = stage_at(t);
    const Stage& s = sc.stages[size_t(stage)];
    // Poisson arrivals: each kind's clock advances by rate * dt; an arrival each time it
    // passes the next exponential mark.
    const double dt = t - last_t;
    last_t = t;
    auto arrivals = [&](double rate, double& mark, double& clock_acc, auto&& fn) {
      clock_acc += rate * dt;
      while (rate > 0 && clock_acc >= mark) {
        mark += unit(rng);
        fn();
      }
    };
    if (!s.reload.empty() && !reloads_started.count(stage)) {
      reloads_started.insert(stage);
      launch([&, stage] {
        const Stage& at = sc.stages[size_t(stage)];
        run_reload(target, rec, stage, sc.admin_key, at.reload, at.reload_file);
      });
    }
    arrivals(s.text_rate, next_text, text_clock, [&] {
      const int words = sample(sc.prompt_words, rng), max_tokens = sample(sc.max_tokens, rng);
      const uint64_t seed = rng();
      launch([&, stage, words, max_tokens, seed] { run_text_request(target, rec, stage, words, max_tokens, seed); });
    });
    arrivals(s.speech_rate, next_speech, speech_clock,
             [&] { launch([&, stage] { run_speech_request(target, rec, stage, sc.speech_input, sc.speech_format); }); });
    arrivals(s.image_rate, next_image, image_clock,
             [&] { launch([&, stage] { run_image_request(target, rec, stage, sc.image_prompt, sc.image_size); }); });
    arrivals(s.music_rate, next_music, music_clock, [&] {
      launch([&, stage] { run_music_request(target, rec, stage, sc.music_prompt, sc.music_seconds, sc.music_format); });
    });
    arrivals(s.video_rate, next_video, video_clock, [&] {
      launch([&, stage] { run_video_request(target, rec, stage, sc.video_prompt, sc.video_seconds, sc.video_size); });
    });
    voices.fill(s.voice_sessions, [&](int i) {
      VoiceOptions vo;
      vo.speech = &voice, vo.barge_in = sc.barge_in, vo.answer_tokens = sc.answer_tokens, vo.seed = sc.seed * 1000 + uint64_t(i);
      vo.label = "voice " + std::to_string(i + 1);
      run_voice_session(target, rec, vo, stage_now, [&, i] { return wanted(&Stage::voice_sessions, i); });
    });
    jobs.fill(s.stream_jobs, [&](int i) {
      StreamJobOptions jo;
      jo.speech = &voice, jo.max_response_seconds = sc.stream_response_seconds, jo.label = "stream job " + std::to_string(i + 1);
      run_stream_job(target, rec, jo, stage_now, [&, i] { return wanted(&Stage::stream_jobs, i); });
    });
    if (Clock::now() >= next_scrape) {
      next_scrape = Clock::now() + std::chrono::seconds(1);
      record_server(stage);
    }
    if (progress && Clock::now() >= next_progress) {
      next_progress = Clock::now() + std::chrono::seconds(1);
      char line[400];
      std::snprintf(line, sizeof line,
                    "[stage %d/%zu %5.1f/%.0f s] text %lld (%lld done)  voice %d sessions, %lld turns  streams %d, %lld turns  "
                    "speech %lld  music %lld  image %lld  video %lld  in flight %d",
                    stage + 1, sc.stages.size(), t, total, (long long)rec.total("text.requests"), (long long)rec.total("text.completed"),
                    voices.running(), (long long)rec.total("voice.turns"), jobs.running(), (long long)rec.total("stream.turns"),
                    (long long)rec.total("speech.requests"), (long long)rec.total("music.requests"), (long long)rec.total("image.requests"),
                    (long long)rec.total("video.requests"), int(in_flight));
      progress(line);
    }
    for (auto it = workers.begin(); it != workers.end();) {
      if (*it->done) {
        it->thread.join();
        it = workers.erase(it);
      } else {
        ++it;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // The run is over: no new work; what runs gets until the deadline (sockets expire then).
  ended = true;
  voices.join();
  jobs.join();
  for (auto& w : workers) w.thread.join();
  record_server(int(sc.stages.size()) - 1);
  return rec.to_json(sc, target.since_start());
}

}  // namespace tutti::loadtest
