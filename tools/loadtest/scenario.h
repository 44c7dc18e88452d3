// A load-test scenario (TOML): where to send load, in which stages, and what each kind of
// client does. See config/loadtest-default.toml for every field with its default.
//
//   [run]     target = "127.0.0.1:8080", api_key, model, max_requests, drain_s, seed
//   [[stage]] duration_s, voice_sessions, stream_jobs, text_rate, speech_rate, music_rate,
//             image_rate, video_rate   (ramps: one table per stage; the counts and rates
//             hold for that stage)
//   [text]    chat SSE requests: prompt_words / max_tokens as {mean, sd, min, max}
//   [voice]   realtime sessions: wav (a file; empty: speech made with espeak-ng), barge_in
//             (fraction of answers interrupted), answer_tokens
//   [stream]  FFmpeg-over-ZeroMQ stream jobs: max_response_seconds (each speaks the voice
//             turns as AAC in MPEG-TS over ZeroMQ and listens to the job's output)
//   [speech]  input, response_format      [music]  prompt, duration_s, response_format
//   [image]   prompt, size                [video]  prompt, seconds, size
//
// Load goes only to loopback addresses (127.0.0.0/8, ::1, localhost): the harness measures
// servers of the project's own, never someone else's.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pipeline/expected.h"

namespace tutti::loadtest {

struct Distribution {
  double mean = 0, sd = 0, min = 0, max = 0;  // normal, clamped to [min, max]
};

struct Stage {
  double duration_s = 10;
  int voice_sessions = 0;  // concurrent realtime voice sessions
  double text_rate = 0;    // chat requests per second (Poisson arrivals)
  double speech_rate = 0;  // /v1/audio/speech requests per second
  double image_rate = 0;   // /v1/images/generations requests per second
  int stream_jobs = 0;     // concurrent FFmpeg-over-ZeroMQ stream jobs (POST /v1/streams)
  double music_rate = 0;   // /v1/music/generations requests per second
  double video_rate = 0;   // /v1/videos jobs per second
  // A hot swap as the stage starts: POST /v1/admin/models/{reload}/reload (with run.admin_key),
  // loading reload_file ("" : the model's own file) beside the running weights.
  std::string reload;
  std::string reload_file;
};

struct Scenario {
  std::string name = "scenario";
  std::string host = "127.0.0.1";
  uint16_t port = 8080;
  std::string api_key;
  std::string admin_key;  // for the stages' reloads (empty: api_key)
  std::string model;  // empty: the first model the server lists
  int64_t max_requests = 0;  // all kinds together; 0: no cap
  double drain_s = 30;       // after the last stage, how long in-flight work may finish
  uint64_t seed = 1;
  std::vector<Stage> stages;
  Distribution prompt_words{40, 20, 1, 400}, max_tokens{32, 16, 1, 512};
  std::string voice_wav;
  double barge_in = 0.25;
  int answer_tokens = 400;
  std::string speech_input = "The quick brown fox jumps over the lazy dog.";
  std::string speech_format = "wav";
  std::string image_prompt = "a red circle on a blue square";
  std::string image_size = "256x256";
  std::string music_prompt = "a calm piano melody";
  double music_seconds = 2;
  std::string music_format = "wav";
  std::string video_prompt = "a ball rolling across a table";
  double video_seconds = 1;
  std::string video_size;  // empty: the server's default
  double stream_response_seconds = 2;

  double total_seconds() const;
};

Expected<Scenario> parse_scenario(const std::string& toml_text, const std::string& source_name);
Expected<Scenario> load_scenario(const std::string& path);
// "host:port" → host, port; refuses what is not a loopback address.
Status set_target(Scenario& s, const std::string& target);

}  // namespace tutti::loadtest
