#include "tools/loadtest/clients.h"

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "actors/http/media.hpp"
#include "actors/http/realtime_audio.hpp"
#include "codecs/media_decoder.h"
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
int exchange(const Target& t, const std::string& path, const std::string& body, const std::function<void(const char*, size_t)>& on_data,
             std::string& error) {
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.expires_at(t.deadline);
  beast::error_code ec;
  stream.connect(tcp::endpoint(net::ip::make_address(t.host, ec), t.port), ec);
  if (ec) {
    error = ec == beast::error::timeout ? "timeout" : "connect";
    return 0;
  }
  bhttp::request<bhttp::string_body> req{bhttp::verb::post, path, 11};
  req.set(bhttp::field::host, t.host);
  req.set(bhttp::field::content_type, "application/json");
  if (!t.api_key.empty()) req.set(bhttp::field::authorization, "Bearer " + t.api_key);
  req.body() = body;
  req.prepare_payload();
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
  const int status = exchange(t, "/v1/chat/completions", body.dump(), on_data, error);
  if (status != 200 || stream_error) return count_error(rec, "text", stage, status == 200 ? 0 : status, stream_error ? "stream_error" : error);
  rec.add("text.e2e_s", stage, t.since_start(), seconds(Clock::now() - sent));
  rec.count("text.tokens", stage, usage_tokens >= 0 ? usage_tokens : events);
  rec.count("text.completed", stage);
}

void run_speech_request(const Target& t, Recorder& rec, int stage, const std::string& input, const std::string& format) {
  rec.count("speech.requests", stage);
  const json body = {{"model", t.model}, {"input", input}, {"response_format", format}, {"voice", "alloy"}};
  const Clock::time_point sent = Clock::now();
  double ttfb = -1;
  size_t bytes = 0;
  std::string error;
  const int status = exchange(t, "/v1/audio/speech", body.dump(), [&](const char*, size_t n) {
    if (ttfb < 0) ttfb = seconds(Clock::now() - sent);
    bytes += n;
  }, error);
  if (status != 200) return count_error(rec, "speech", stage, status, error);
  if (ttfb >= 0) rec.add("speech.ttfb_s", stage, t.since_start(), ttfb);
  const double e2e = seconds(Clock::now() - sent);
  rec.add("speech.e2e_s", stage, t.since_start(), e2e);
  // Real-time factor for 16-bit 24 kHz WAV/PCM (other formats: bytes are not seconds).
  if (format == "wav" || format == "pcm") {
    const double audio_s = double(bytes) / (2 * 24000);
    if (audio_s > 0) rec.add("speech.rtf", stage, t.since_start(), e2e / audio_s);
  }
  rec.count("speech.completed", stage);
}

void run_image_request(const Target& t, Recorder& rec, int stage, const std::string& prompt, const std::string& size) {
  rec.count("image.requests", stage);
  const json body = {{"model", t.model}, {"prompt", prompt}, {"size", size}, {"n", 1}, {"response_format", "b64_json"}};
  const Clock::time_point sent = Clock::now();
  std::string got, error;
  const int status = exchange(t, "/v1/images/generations", body.dump(), [&](const char* d, size_t n) { got.append(d, n); }, error);
  if (status != 200) return count_error(rec, "image", stage, status, error);
  const json j = json::parse(got, nullptr, false);
  if (!field(j, "data").is_array() || field(j, "data").empty()) return count_error(rec, "image", stage, 0, "protocol");
  rec.add("image.latency_s", stage, t.since_start(), seconds(Clock::now() - sent));
  rec.count("image.completed", stage);
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
