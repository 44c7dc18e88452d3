#include "tools/loadtest/runner.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <list>
#include <mutex>
#include <random>
#include <thread>

#include "tools/loadtest/clients.h"

namespace tutti::loadtest {

namespace {

constexpr int kMaxInFlight = 512;  // requests at once; beyond, arrivals are counted as dropped

int sample(const Distribution& d, std::mt19937_64& rng) {
  std::normal_distribution<double> n(d.mean, d.sd);
  return int(std::lround(std::clamp(d.sd > 0 ? n(rng) : d.mean, d.min, d.max)));
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

  // Voice sessions: session i runs while the current stage asks for more than i.
  std::vector<std::thread> voices;
  std::vector<VoiceOptions> voice_opts(static_cast<size_t>(max_sessions));
  std::vector<std::atomic<bool>> voice_running(size_t(std::max(1, max_sessions)));
  auto want_voice = [&](int i) { return !ended && sc.stages[size_t(stage_now())].voice_sessions > i; };
  // Stream jobs alike: job i runs while the current stage asks for more than i.
  std::vector<std::thread> jobs;
  std::vector<StreamJobOptions> job_opts(static_cast<size_t>(max_jobs));
  std::vector<std::atomic<bool>> job_running(size_t(std::max(1, max_jobs)));
  auto want_job = [&](int i) { return !ended && sc.stages[size_t(stage_now())].stream_jobs > i; };

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
    for (int i = 0; i < s.voice_sessions && i < max_sessions; ++i) {
      if (voice_running[size_t(i)]) continue;
      voice_running[size_t(i)] = true;
      VoiceOptions& vo = voice_opts[size_t(i)];
      vo.speech = &voice, vo.barge_in = sc.barge_in, vo.answer_tokens = sc.answer_tokens, vo.seed = sc.seed * 1000 + uint64_t(i);
      vo.label = "voice " + std::to_string(i + 1);
      if (voices.size() <= size_t(i)) voices.resize(size_t(i) + 1);
      if (voices[size_t(i)].joinable()) voices[size_t(i)].join();
      voices[size_t(i)] = std::thread([&, i] {
        run_voice_session(target, rec, voice_opts[size_t(i)], stage_now, [&, i] { return want_voice(i); });
        voice_running[size_t(i)] = false;
      });
    }
    for (int i = 0; i < s.stream_jobs && i < max_jobs; ++i) {
      if (job_running[size_t(i)]) continue;
      job_running[size_t(i)] = true;
      StreamJobOptions& jo = job_opts[size_t(i)];
      jo.speech = &voice, jo.max_response_seconds = sc.stream_response_seconds, jo.label = "stream job " + std::to_string(i + 1);
      if (jobs.size() <= size_t(i)) jobs.resize(size_t(i) + 1);
      if (jobs[size_t(i)].joinable()) jobs[size_t(i)].join();
      jobs[size_t(i)] = std::thread([&, i] {
        run_stream_job(target, rec, job_opts[size_t(i)], stage_now, [&, i] { return want_job(i); });
        job_running[size_t(i)] = false;
      });
    }
    if (progress && Clock::now() >= next_progress) {
      next_progress = Clock::now() + std::chrono::seconds(1);
      char line[400];
      int voices_now = 0, jobs_now = 0;
      for (int i = 0; i < max_sessions; ++i) voices_now += voice_running[size_t(i)];
      for (int i = 0; i < max_jobs; ++i) jobs_now += job_running[size_t(i)];
      std::snprintf(line, sizeof line,
                    "[stage %d/%zu %5.1f/%.0f s] text %lld (%lld done)  voice %d sessions, %lld turns  streams %d, %lld turns  "
                    "speech %lld  music %lld  image %lld  video %lld  in flight %d",
                    stage + 1, sc.stages.size(), t, total, (long long)rec.total("text.requests"), (long long)rec.total("text.completed"),
                    voices_now, (long long)rec.total("voice.turns"), jobs_now, (long long)rec.total("stream.turns"),
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
  for (auto& v : voices)
    if (v.joinable()) v.join();
  for (auto& j : jobs)
    if (j.joinable()) j.join();
  for (auto& w : workers) w.thread.join();
  return rec.to_json(sc, target.since_start());
}

}  // namespace tutti::loadtest
