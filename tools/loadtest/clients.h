// The load test's clients, one request or session each, on the caller's thread: a streamed
// chat completion (SSE, chunked or not), speech, music, image and video requests, a realtime
// voice session that speaks real audio at real-time pace and listens to the answers, and an
// FFmpeg-over-ZeroMQ stream job fed a live MPEG-TS stream. Each
// records what it measured in the Recorder under its stage; failures are counted by kind
// ("errors.text.http_429", "errors.voice.connect", ...), never thrown.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "tools/loadtest/report.h"

namespace tutti::loadtest {

using Clock = std::chrono::steady_clock;

struct Target {
  std::string host;
  uint16_t port = 0;
  std::string api_key;
  std::string model;
  Clock::time_point start;  // the run's start: samples are stamped relative to it
  Clock::time_point deadline;  // no request or session outlives it
  double since_start() const { return std::chrono::duration<double>(Clock::now() - start).count(); }
};

// The first model the server lists (GET /v1/models): what requests name when the scenario
// names none. Also checks that the server answers and accepts the key.
Expected<std::string> served_model(const Target& t);

// The server's /metrics as name (with its labels, as written) -> value; empty when the
// server has none (another server, or no answer).
std::map<std::string, double> scrape_metrics(const Target& t);

// A hot swap: POST /v1/admin/models/{model}/reload with `admin_key`. Records reload.seconds
// (request to answer), the server's reload.load_s and reload.peak_rss_mb, then, from /health
// once requests reach the new weights, reload.first_request_after_s; failures as
// errors.reload.*.
void run_reload(const Target& t, Recorder& rec, int stage, const std::string& admin_key, const std::string& model, const std::string& file);
void run_text_request(const Target& t, Recorder& rec, int stage, int prompt_words, int max_tokens, uint64_t seed);
void run_speech_request(const Target& t, Recorder& rec, int stage, const std::string& input, const std::string& format);
void run_image_request(const Target& t, Recorder& rec, int stage, const std::string& prompt, const std::string& size);
void run_music_request(const Target& t, Recorder& rec, int stage, const std::string& prompt, double seconds, const std::string& format);
// A video job (POST /v1/videos), polled until it completes, then its content downloaded.
void run_video_request(const Target& t, Recorder& rec, int stage, const std::string& prompt, double seconds, const std::string& size);

struct VoiceOptions {
  const std::vector<float>* speech = nullptr;  // 24 kHz mono, one turn (silence around it is added)
  double barge_in = 0;                         // fraction of answers the speaker talks over
  int answer_tokens = 200;
  uint64_t seed = 1;
  std::string label;
};
// Turns until keep_going() says no (checked between turns) or the deadline.
void run_voice_session(const Target& t, Recorder& rec, const VoiceOptions& o, const std::function<int()>& stage,
                       const std::function<bool()>& keep_going);

// An FFmpeg-over-ZeroMQ stream job, as a media service runs one: the client publishes a
// live MPEG-TS feed (AAC; the speech turns with silence between them, at real-time pace) on
// a ZeroMQ PUB socket, creates the job (POST /v1/streams) reading it, subscribes to the job's
// output, and measures each turn's end of speech to the answer's first MPEG-TS bytes and the
// answer's length; at the end the job's gaps and turns (GET), then DELETE.
struct StreamJobOptions {
  const std::vector<float>* speech = nullptr;  // 24 kHz mono, one turn
  double max_response_seconds = 2;
  std::string label;
};
void run_stream_job(const Target& t, Recorder& rec, const StreamJobOptions& o, const std::function<int()>& stage,
                    const std::function<bool()>& keep_going);

// Speech for the voice sessions: the WAV file decoded to 24 kHz mono, or, with no file, a
// sentence spoken by espeak-ng.
Expected<std::vector<float>> load_voice(const std::string& wav_path);

}  // namespace tutti::loadtest
