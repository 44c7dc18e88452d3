#include "tools/loadtest/clients.h"

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <zmq.hpp>

#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "actors/http/media.hpp"
#include "actors/http/realtime_audio.hpp"
#include "codecs/media_decoder.h"
#include "codecs/media_encoder.h"
#include "tools/loadtest/realtime_client.h"

namespace tutti::loadtest {

namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Fields of a server's JSON, whatever it sent: a missing or mistyped field is the fallback,
// never an exception (the harness measures servers, it must not die on one's mistakes).
std::string str(const json& j, const char* key, const std::string& fallback = "") {
  if (!j.is_object()) return fallback;
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}
int64_t integer(const json& j, const char* key, int64_t fallback) {
  if (!j.is_object()) return fallback;
  auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : fallback;
}
const json& field(const json& j, const char* key) {
  static const json null;
  if (!j.is_object()) return null;
  auto it = j.find(key);
  return it != j.end() ? *it : null;
}

// One HTTP exchange; body bytes go to on_data as they arrive (chunked or not). Returns the
// status, or 0 with `error` set to what went wrong (connect, timeout, protocol).
int exchange(const Target& t, bhttp::verb verb, const std::string& path, const std::string& body,
             const std::function<void(const char*, size_t)>& on_data, std::string& error) {
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.expires_at(t.deadline);
  beast::error_code ec;
  stream.connect(tcp::endpoint(net::ip::make_address(t.host, ec), t.port), ec);
  if (ec) {
    error = ec == beast::error::timeout ? "timeout" : "connect";
    return 0;
  }
  bhttp::request<bhttp::string_body> req{verb, path, 11};
  req.set(bhttp::field::host, t.host);
  if (verb == bhttp::verb::post) req.set(bhttp::field::content_type, "application/json");
  if (!t.api_key.empty()) req.set(bhttp::field::authorization, "Bearer " + t.api_key);
  req.body() = body;
  if (verb == bhttp::verb::post) req.prepare_payload();
  bhttp::write(stream, req, ec);
  if (ec) {
    error = "connect";
    return 0;
  }
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::buffer_body> parser;
  parser.body_limit(boost::none);
  bhttp::read_header(stream, buffer, parser, ec);
  if (ec) {
    error = ec == beast::error::timeout ? "timeout" : "protocol";
    return 0;
  }
  char chunk[16384];
  while (!parser.is_done()) {
    parser.get().body().data = chunk;
    parser.get().body().size = sizeof chunk;
    bhttp::read_some(stream, buffer, parser, ec);  // whatever has arrived: SSE events as they come
    if (ec == bhttp::error::need_buffer) ec = {};
    const size_t got = sizeof chunk - parser.get().body().size;
    if (got > 0) on_data(chunk, got);
    if (ec == bhttp::error::end_of_stream || ec == net::error::eof) break;  // body delimited by close
    if (ec) {
      error = ec == beast::error::timeout ? "timeout" : "protocol";
      return 0;
    }
  }
  return int(parser.get().result_int());
}

void count_error(Recorder& rec, const std::string& kind, int stage, int status, const std::string& error) {
  rec.count("errors." + kind + "." + (status ? "http_" + std::to_string(status) : error), stage);
}

// A request answered with an HTTP error: counted by kind, and a refusal (429) also by how
// long it took to come ("<kind>.refused_s": shedding is only useful when it is quick).
void count_http_error(const Target& t, Recorder& rec, const std::string& kind, int stage, int status, const std::string& error,
                      Clock::time_point sent) {
  if (status == 429) rec.add(kind + ".refused_s", stage, t.since_start(), seconds(Clock::now() - sent));
  count_error(rec, kind, stage, status, error);
}

// After a 429: a pause before the runner starts the session or job anew (up to a second, never
// past the run's deadline), as a client honouring Retry-After would.
void back_off(const Target& t) {
  std::this_thread::sleep_for(std::min<Clock::duration>(std::chrono::seconds(1), std::max(Clock::duration(0), t.deadline - Clock::now())));
}

// A JSON exchange: the status and the parsed body (null when it is not JSON).
std::pair<int, json> json_exchange(const Target& t, bhttp::verb verb, const std::string& path, const std::string& body,
                                   std::string& error) {
  std::string got;
  const int status = exchange(t, verb, path, body, [&](const char* d, size_t n) { got.append(d, n); }, error);
  json j = json::parse(got, nullptr, false);
  return {status, j.is_discarded() ? json() : std::move(j)};
}

// A free TCP port on loopback, for a ZeroMQ socket to bind (the kernel's pick; released
// before use, so another process could take it first: the bind then fails and is counted).
uint16_t free_port() {
  net::io_context ioc;
  tcp::acceptor a(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

// Speech and music: audio streamed as it is made (kind "speech" or "music"); time to first
// byte, end to end, and the real-time factor.
void run_audio_request(const Target& t, Recorder& rec, int stage, const std::string& kind, const std::string& path, const json& body,
                       const std::string& format) {
  rec.count(kind + ".requests", stage);
  const Clock::time_point sent = Clock::now();
  double ttfb = -1;
  size_t bytes = 0;
  std::string error;
  const int status = exchange(t, bhttp::verb::post, path, body.dump(), [&](const char*, size_t n) {
    if (ttfb < 0) ttfb = seconds(Clock::now() - sent);
    bytes += n;
  }, error);
  if (status != 200) return count_http_error(t, rec, kind, stage, status, error, sent);
  if (ttfb >= 0) rec.add(kind + ".ttfb_s", stage, t.since_start(), ttfb);
  const double e2e = seconds(Clock::now() - sent);
  rec.add(kind + ".e2e_s", stage, t.since_start(), e2e);
  // Real-time factor for 16-bit 24 kHz WAV/PCM (other formats: bytes are not seconds).
  if (format == "wav" || format == "pcm") {
    const double audio_s = double(bytes) / (2 * 24000);
    if (audio_s > 0) rec.add(kind + ".rtf", stage, t.since_start(), e2e / audio_s);
  }
  rec.count(kind + ".completed", stage);
}

}  // namespace

Expected<std::string> served_model(const Target& t) {
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.expires_after(std::chrono::seconds(10));
  beast::error_code ec;
  stream.connect(tcp::endpoint(net::ip::make_address(t.host, ec), t.port), ec);
  if (ec) return Error{"cannot connect to " + t.host + ":" + std::to_string(t.port) + ": " + ec.message()};
  bhttp::request<bhttp::empty_body> req{bhttp::verb::get, "/v1/models", 11};
  req.set(bhttp::field::host, t.host);
  if (!t.api_key.empty()) req.set(bhttp::field::authorization, "Bearer " + t.api_key);
  bhttp::write(stream, req, ec);
  beast::flat_buffer buf;
  bhttp::response<bhttp::string_body> res;
  if (!ec) bhttp::read(stream, buf, res, ec);
  if (ec) return Error{"GET /v1/models: " + ec.message()};
  if (res.result_int() != 200) return Error{"GET /v1/models answered " + std::to_string(res.result_int()) + ": " + res.body()};
  const json j = json::parse(res.body(), nullptr, false);
  const json& data = field(j, "data");
  if (!data.is_array() || data.empty() || str(data[0], "id").empty()) return Error{"GET /v1/models: no model in the answer"};
  return str(data[0], "id");
}

std::map<std::string, double> scrape_metrics(const Target& t) {
  std::map<std::string, double> out;
  std::string got, error;
  if (exchange(t, bhttp::verb::get, "/metrics", "", [&](const char* d, size_t n) { got.append(d, n); }, error) != 200) return out;
  std::istringstream lines(got);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == std::string::npos) continue;
    char* end = nullptr;
    const double v = std::strtod(line.c_str() + space + 1, &end);
    if (end != line.c_str() + space + 1) out[line.substr(0, space)] = v;
  }
  return out;
}

void run_reload(const Target& t, Recorder& rec, int stage, const std::string& admin_key, const std::string& model, const std::string& file) {
  Target admin = t;
  if (!admin_key.empty()) admin.api_key = admin_key;
  rec.count("reload.requests", stage);
  const Clock::time_point sent = Clock::now();
  std::string error;
  const json body = file.empty() ? json::object() : json{{"file", file}};
  auto [status, answer] = json_exchange(admin, bhttp::verb::post, "/v1/admin/models/" + model + "/reload", body.dump(), error);
  if (status != 200) return count_error(rec, "reload", stage, status, error);
  rec.count("reload.ok", stage);
  rec.add("reload.seconds", stage, t.since_start(), seconds(Clock::now() - sent));
  if (answer.is_object()) {
    rec.add("reload.load_s", stage, t.since_start(), answer.value("load_seconds", 0.0));
    rec.add("reload.peak_rss_mb", stage, t.since_start(), double(answer.value("peak_rss_bytes", uint64_t(0))) / (1 << 20));
    rec.add("reload.rss_before_mb", stage, t.since_start(), double(answer.value("rss_before_bytes", uint64_t(0))) / (1 << 20));
  }
  // The first request the new weights served, as the server saw it (the admin view of the
  // models, polled for a while).
  for (int i = 0; i < 100 && Clock::now() < t.deadline; ++i) {
    auto [hs, health] = json_exchange(admin, bhttp::verb::get, "/v1/admin/models", "", error);
    if (hs == 200 && health.is_object()) {
      const json& r = health["models"][model]["last_reload"];
      if (r.is_object() && r.contains("first_request_after_s")) {
        rec.add("reload.first_request_after_s", stage, t.since_start(), r["first_request_after_s"].get<double>());
        return;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void run_text_request(const Target& t, Recorder& rec, int stage, int prompt_words, int max_tokens, uint64_t seed) {
  static const char* words[] = {"river", "stone", "light", "winter", "quiet", "market", "signal", "orange", "paper", "engine",
                                "garden", "silver", "window", "thunder", "copper", "meadow"};
  std::mt19937_64 rng(seed);
  std::string prompt;
  for (int i = 0; i < prompt_words; ++i) prompt += std::string(words[rng() % 16]) + " ";
  const json body = {{"model", t.model}, {"messages", {{{"role", "user"}, {"content", prompt}}}}, {"max_tokens", max_tokens},
                     {"stream", true}, {"stream_options", {{"include_usage", true}}}};
  rec.count("text.requests", stage);
  const Clock::time_point sent = Clock::now();
  Clock::time_point last{};
  bool first = true, stream_error = false;
  int64_t events = 0, usage_tokens = -1;
  std::string pending;
  auto on_data = [&](const char* d, size_t n) {
    pending.append(d, n);
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.rfind("data: ", 0) != 0 || line == "data: [DONE]") continue;
      const json j = json::parse(line.substr(6), nullptr, false);
      if (j.is_discarded()) continue;
      if (!j.is_object()) continue;
      if (j.contains("error")) stream_error = true;
      if (field(j, "usage").is_object()) usage_tokens = integer(field(j, "usage"), "completion_tokens", -1);
      const json& choices = field(j, "choices");
      if (!choices.is_array() || choices.empty()) continue;
      const json& c = choices[0];
      std::string text = str(field(c, "delta"), "content", str(c, "text"));
      if (text.empty()) continue;
      const Clock::time_point now = Clock::now();
      if (first) rec.add("text.ttft_s", stage, t.since_start(), seconds(now - sent));
      else rec.add("text.itl_s", stage, t.since_start(), seconds(now - last));
      first = false;
      last = now;
      ++events;
    }
  };
  std::string error;
  const int status = exchange(t, bhttp::verb::post, "/v1/chat/completions", body.dump(), on_data, error);
  if (status != 200) return count_http_error(t, rec, "text", stage, status, error, sent);
  if (stream_error) return count_error(rec, "text", stage, 0, "stream_error");
  rec.add("text.e2e_s", stage, t.since_start(), seconds(Clock::now() - sent));
  rec.count("text.tokens", stage, usage_tokens >= 0 ? usage_tokens : events);
  rec.count("text.completed", stage);
}

void run_speech_request(const Target& t, Recorder& rec, int stage, const std::string& input, const std::string& format) {
  run_audio_request(t, rec, stage, "speech", "/v1/audio/speech",
                    {{"model", t.model}, {"input", input}, {"response_format", format}, {"voice", "alloy"}}, format);
}

void run_music_request(const Target& t, Recorder& rec, int stage, const std::string& prompt, double seconds_long, const std::string& format) {
  run_audio_request(t, rec, stage, "music", "/v1/music/generations",
                    {{"model", t.model}, {"prompt", prompt}, {"duration", seconds_long}, {"response_format", format}}, format);
}

void run_image_request(const Target& t, Recorder& rec, int stage, const std::string& prompt, const std::string& size) {
  rec.count("image.requests", stage);
  const json body = {{"model", t.model}, {"prompt", prompt}, {"size", size}, {"n", 1}, {"response_format", "b64_json"}};
  const Clock::time_point sent = Clock::now();
  std::string got, error;
  const int status = exchange(t, bhttp::verb::post, "/v1/images/generations", body.dump(), [&](const char* d, size_t n) { got.append(d, n); }, error);
  if (status != 200) return count_http_error(t, rec, "image", stage, status, error, sent);
  const json j = json::parse(got, nullptr, false);
  if (!field(j, "data").is_array() || field(j, "data").empty()) return count_error(rec, "image", stage, 0, "protocol");
  rec.add("image.latency_s", stage, t.since_start(), seconds(Clock::now() - sent));
  rec.count("image.completed", stage);
}

void run_video_request(const Target& t, Recorder& rec, int stage, const std::string& prompt, double seconds_long, const std::string& size) {
  rec.count("video.requests", stage);
  json body = {{"model", t.model}, {"prompt", prompt}, {"seconds", seconds_long}};
  if (!size.empty()) body["size"] = size;
  const Clock::time_point sent = Clock::now();
  std::string error;
  auto [status, job] = json_exchange(t, bhttp::verb::post, "/v1/videos", body.dump(), error);
  if (status != 200) return count_error(rec, "video", stage, status, error);
  const std::string id = str(job, "id");
  if (id.empty()) return count_error(rec, "video", stage, 0, "protocol");
  // The job runs on the server; its status is polled as a client would.
  std::string state = str(job, "status");
  while (state != "completed" && state != "failed" && Clock::now() < t.deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto [s2, j2] = json_exchange(t, bhttp::verb::get, "/v1/videos/" + id, "", error);
    if (s2 != 200) return count_error(rec, "video", stage, s2, error);
    state = str(j2, "status");
  }
  if (state != "completed") return count_error(rec, "video", stage, 0, state == "failed" ? "job_failed" : "timeout");
  rec.add("video.latency_s", stage, t.since_start(), seconds(Clock::now() - sent));
  size_t bytes = 0;
  status = exchange(t, bhttp::verb::get, "/v1/videos/" + id + "/content", "", [&](const char*, size_t n) { bytes += n; }, error);
  if (status != 200 || bytes == 0) return count_error(rec, "video", stage, status, status ? "empty" : error);
  rec.add("video.e2e_s", stage, t.since_start(), seconds(Clock::now() - sent));
  rec.count("video.bytes", stage, int64_t(bytes));
  rec.count("video.completed", stage);
  (void)json_exchange(t, bhttp::verb::delete_, "/v1/videos/" + id, "", error);  // the server keeps finished jobs until then
}

void run_stream_job(const Target& t, Recorder& rec, const StreamJobOptions& o, const std::function<int()>& stage,
                    const std::function<bool()>& keep_going) {
  // The feed: XPUB, so that the job's subscription is seen before anything is published
  // (PUB/SUB drops what is sent before a subscriber joins).
  zmq::context_t ctx;
  zmq::socket_t feed(ctx, zmq::socket_type::xpub), answers(ctx, zmq::socket_type::sub);
  uint16_t in_port = 0, out_port = 0;
  try {
    in_port = free_port();
    feed.set(zmq::sockopt::linger, 0);
    feed.bind("tcp://127.0.0.1:" + std::to_string(in_port));
    out_port = free_port();
    answers.set(zmq::sockopt::linger, 0);
    answers.set(zmq::sockopt::subscribe, "");
    answers.connect("tcp://127.0.0.1:" + std::to_string(out_port));
  } catch (const zmq::error_t&) {
    return count_error(rec, "stream", stage(), 0, "zmq_bind");
  }
  std::string error;
  const json request = {{"input", "zmq:tcp://127.0.0.1:" + std::to_string(in_port)},
                        {"output", "zmq:tcp://127.0.0.1:" + std::to_string(out_port)},
                        {"task", "respond"},
                        {"modality", "audio"},
                        {"max_response_seconds", o.max_response_seconds}};
  auto [status, job] = json_exchange(t, bhttp::verb::post, "/v1/streams", request.dump(), error);
  if (status == 429) {
    // Refused (the key's jobs, or no capacity): counted, then a pause (back_off).
    count_error(rec, "stream", stage(), status, error);
    back_off(t);
    return;
  }
  if (status != 200) return count_error(rec, "stream", stage(), status, error);
  const std::string id = str(job, "id");
  if (id.empty()) return count_error(rec, "stream", stage(), 0, "protocol");
  rec.count("stream.jobs", stage());
  auto end_job = [&] { (void)json_exchange(t, bhttp::verb::delete_, "/v1/streams/" + id, "", error); };
  feed.set(zmq::sockopt::rcvtimeo, 5000);
  zmq::message_t subscription;
  if (!feed.recv(subscription)) {
    end_job();
    return count_error(rec, "stream", stage(), 0, "not_subscribed");
  }

  // MPEG-TS (AAC) of the live feed, as the muxer produces it; each 100 ms step's bytes are
  // one ZeroMQ message, as ffmpeg's zmq: output sends them.
  std::string pending;
  auto encoder = codecs::make_audio_encoder(codecs::AudioFormat::MpegTs, 24000,
                                            [&](std::span<const uint8_t> b) { pending.append(reinterpret_cast<const char*>(b.data()), b.size()); });
  if (!encoder) {
    end_job();
    return count_error(rec, "stream", stage(), 0, "encoder");
  }
  const std::vector<float> silence(2400, 0.f);
  const Clock::time_point start = Clock::now();
  int64_t step = 0;
  size_t answer_bytes = 0;
  Clock::time_point first_byte{}, last_byte{};
  bool publish_ok = true;
  // One 100 ms step of the feed, at real-time pace; what the job published meanwhile is read.
  auto play = [&](std::span<const float> samples) {
    std::this_thread::sleep_until(start + std::chrono::milliseconds(100 * step++));
    if (!(*encoder)->push(samples)) publish_ok = false;
    if (!pending.empty()) {
      feed.send(zmq::buffer(pending), zmq::send_flags::dontwait);
      pending.clear();
    }
    zmq::message_t m;
    while (answers.recv(m, zmq::recv_flags::dontwait)) {
      const Clock::time_point now = Clock::now();
      if (answer_bytes == 0) first_byte = now;
      last_byte = now;
      answer_bytes += m.size();
    }
  };
  const std::vector<float>& speech = *o.speech;
  while (publish_ok && keep_going() && Clock::now() < t.deadline) {
    // A turn: 0.3 s of silence, the speech (its end marked), then silence while the answer
    // comes: until 1 s passes without answer bytes after some came, or 15 s without any.
    for (int i = 0; i < 3; ++i) play(silence);
    for (size_t at = 0; at < speech.size(); at += 2400)
      play(std::span<const float>(speech.data() + at, std::min<size_t>(2400, speech.size() - at)));
    const Clock::time_point speech_end = Clock::now();
    const int s = stage();
    rec.count("stream.turns", s);
    answer_bytes = 0;
    while (publish_ok && Clock::now() < t.deadline) {
      play(silence);
      const Clock::time_point now = Clock::now();
      if (answer_bytes == 0 && now - speech_end > std::chrono::seconds(15)) break;
      if (answer_bytes > 0 && now - last_byte > std::chrono::seconds(1)) break;
    }
    if (answer_bytes == 0) {
      count_error(rec, "stream", s, 0, "no_answer");
      continue;
    }
    rec.add("stream.speech_end_to_first_byte_s", s, t.since_start(), seconds(first_byte - speech_end));
    rec.add("stream.answer_delivery_s", s, t.since_start(), seconds(last_byte - first_byte));
    rec.count("stream.answers", s);
    rec.count("stream.answer_bytes", s, int64_t(answer_bytes));
  }
  auto [gs, state] = json_exchange(t, bhttp::verb::get, "/v1/streams/" + id, "", error);
  if (gs == 200) {
    rec.count("stream.gaps", stage(), integer(state, "gaps", 0));
    rec.count("stream.responses", stage(), integer(state, "responses", 0));  // as the server counted them
    if (str(state, "status") != "running") count_error(rec, "stream", stage(), 0, "job_" + str(state, "status", "unknown"));
  }
  end_job();
}

Expected<std::vector<float>> load_voice(const std::string& wav_path) {
  std::string path = wav_path;
  if (path.empty()) {
    path = "/tmp/tutti-loadtest-voice-" + std::to_string(::getpid()) + ".wav";
    const std::string cmd = "espeak-ng -w '" + path + "' 'Hello, could you tell me what the weather will be like tomorrow?' 2>/dev/null";
    if (std::system(cmd.c_str()) != 0) return Error{"espeak-ng could not make speech for the voice sessions: set [voice] wav"};
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) return Error{"cannot read " + path};
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), {});
  if (wav_path.empty()) std::remove(path.c_str());
  auto pcm = codecs::decode_audio_bytes(bytes, 24000);
  if (!pcm) return Error{path + ": " + pcm.error().message};
  if (pcm->size() < 2400) return Error{path + ": under 100 ms of audio"};
  return std::move(pcm).value();
}

void run_voice_session(const Target& t, Recorder& rec, const VoiceOptions& o, const std::function<int()>& stage,
                       const std::function<bool()>& keep_going) {
  // A turn: 0.3 s of silence, the speech, 0.8 s of silence (the server's VAD ends the turn).
  std::vector<float> turn(size_t(24000 * 0.3), 0.f);
  turn.insert(turn.end(), o.speech->begin(), o.speech->end());
  turn.resize(turn.size() + size_t(24000 * 0.8), 0.f);
  // Where the speech ends (the last 20 ms frame with energy), as an offset into the turn.
  double speech_end = 0.3;
  for (size_t f = 0; f + 480 <= o.speech->size(); f += 480) {
    double e = 0;
    for (size_t i = f; i < f + 480; ++i) e += double((*o.speech)[i]) * (*o.speech)[i];
    if (std::sqrt(e / 480) > 0.01) speech_end = 0.3 + double(f + 480) / 24000;
  }

  std::mutex mu;
  std::condition_variable cv;
  struct {
    Clock::time_point speech_end_at{}, commit_at{}, first_audio{}, barge_started{};
    bool have_commit = false, have_audio = false, barging = false, closed = false;
    double received = 0, played_origin = 0;  // seconds of audio received; playback clock origin
    int responses = 0, underruns = 0;
  } st;
  std::atomic<int> trace{-1};  // this stream's margin trace, once connected
  // Events, on the connection's thread.
  auto on_event = [&](const json& e, Clock::time_point now) {
    if (!e.is_object()) return;
    const std::string type = str(e, "type");
    {
      std::lock_guard<std::mutex> lock(mu);
      const int s = stage();
      if (type == "input_audio_buffer.committed") st.commit_at = now, st.have_commit = true;
      if (type == "response.output_audio.delta" && field(e, "delta").is_string()) {
        const auto bytes = http::base64_decode(str(e, "delta"));
        const double dur = bytes ? double(bytes->size()) / (2 * 24000) : 0;
        if (!st.have_audio) {
          st.have_audio = true;
          st.first_audio = now;
          st.received = 0;
          rec.add("voice.speech_end_to_audio_s", s, t.since_start(), seconds(now - st.speech_end_at));
          if (st.have_commit) rec.add("voice.commit_to_audio_s", s, t.since_start(), seconds(now - st.commit_at));
        } else {
          // Playback started at the first delta and runs in real time; it waits (a gap the
          // listener hears) when the audio received so far is used up.
          const double margin = st.received - (seconds(now - st.first_audio) - st.played_origin);
          if (trace >= 0) rec.trace(trace, t.since_start(), margin);
          if (margin < 0) {
            ++st.underruns;
            rec.count("voice.underruns", s);
            st.played_origin += -margin;
          }
        }
        st.received += dur;
      }
      if (type == "error") {
        const json& err = field(e, "error");
        count_error(rec, "voice", s, 0, "event_" + str(err, "code", str(err, "type", "error")));
      }
      if (type == "response.done") {
        rec.count("voice.responses", s);
        const std::string status = str(field(e, "response"), "status");
        if (status == "cancelled" && st.barging) {
          rec.add("voice.barge_in_to_cancel_s", s, t.since_start(), seconds(now - st.barge_started));
          rec.count("voice.barge_ins", s);
        }
        if (status == "failed") count_error(rec, "voice", s, 0, "response_failed");
        if (st.have_audio && st.received > 0 && status == "completed")
          rec.add("voice.rtf", s, t.since_start(), seconds(now - st.first_audio) / st.received);
        st.barging = false;
        st.have_audio = st.have_commit = false;
        st.played_origin = 0;
        ++st.responses;
        cv.notify_all();
      }
    }
  };
  auto on_closed = [&] {
    std::lock_guard<std::mutex> lock(mu);
    st.closed = true;
    cv.notify_all();
  };
  auto client = RealtimeClient::connect(t.host, t.port, t.api_key,
                                        std::chrono::duration_cast<std::chrono::milliseconds>(t.deadline - Clock::now()), on_event, on_closed);
  if (!client && client.error().code == ErrorCode::busy) {
    // Refused for capacity: counted, then a pause (back_off).
    rec.count("voice.sessions_refused", stage());
    count_error(rec, "voice", stage(), 429, "");
    back_off(t);
    return;
  }
  if (!client) return count_error(rec, "voice", stage(), 0, "connect");
  auto send = [&](const json& j) { return (*client)->send(j); };
  rec.count("voice.sessions", stage());
  trace = rec.new_trace(o.label);
  std::mt19937_64 rng(o.seed);
  std::uniform_real_distribution<double> coin(0, 1);
  bool ok = send({{"type", "session.update"},
                  {"session", {{"modalities", {"audio"}}, {"max_response_output_tokens", o.answer_tokens},
                               {"turn_detection", {{"type", "server_vad"}, {"silence_duration_ms", 500}}}}}});
  bool barge_next = false;
  while (ok && keep_going() && Clock::now() < t.deadline) {
    int responses_before;
    {
      std::lock_guard<std::mutex> lock(mu);
      responses_before = st.responses;
      if (barge_next) st.barging = true, st.barge_started = Clock::now() + std::chrono::milliseconds(300);
      st.speech_end_at = Clock::now() + std::chrono::microseconds(int64_t(speech_end * 1e6));
    }
    const Clock::time_point start = Clock::now();
    for (size_t at = 0, k = 0; ok && at < turn.size(); at += 2400, ++k) {
      std::this_thread::sleep_until(start + std::chrono::milliseconds(100 * k));
      ok = send({{"type", "input_audio_buffer.append"},
                 {"audio", http::encode_wire_audio(std::span<const float>(turn.data() + at, std::min<size_t>(2400, turn.size() - at)),
                                                   http::AudioWire::Pcm16)}});
    }
    rec.count("voice.turns", stage());
    // Listen: the answer plays out, or (barge-in) the speaker talks over it: the next turn
    // starts 0.2 s into the answer (its speech 0.3 s later).
    barge_next = coin(rng) < o.barge_in;
    std::unique_lock<std::mutex> lock(mu);
    const auto until = std::min(t.deadline, Clock::now() + std::chrono::seconds(60));
    if (barge_next) {
      cv.wait_until(lock, until, [&] { return st.have_audio || st.closed || st.responses > responses_before; });
      if (st.have_audio) {
        cv.wait_until(lock, std::min(until, st.first_audio + std::chrono::milliseconds(200)), [&] { return st.closed; });
        rec.count("voice.barge_in_attempts", stage());
      } else {
        barge_next = false;  // nothing to talk over
      }
    } else if (!cv.wait_until(lock, until, [&] { return st.closed || st.responses > responses_before; })) {
      count_error(rec, "voice", stage(), 0, "no_answer");
      break;
    }
    if (st.closed) {
      count_error(rec, "voice", stage(), 0, "closed");
      break;
    }
  }
  {
    // Wait briefly for the last answer, then leave.
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::seconds(5), [&] { return !st.have_audio || st.closed; });
  }
  (*client)->close();
}

}  // namespace tutti::loadtest
