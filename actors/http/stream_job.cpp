#include "actors/http/stream_job.hpp"

#include <zmq.hpp>

#include <atomic>
#include <deque>
#include <thread>

#include "actors/http/conversation.hpp"
#include "actors/http/realtime_audio.hpp"
#include "actors/http/session_support.hpp"
#include "codecs/media_decoder.h"

namespace tutti::http {

using namespace detail;

namespace {

// "zmq:tcp://HOST:PORT" → "tcp://HOST:PORT"; empty if it is not one.
std::string zmq_endpoint(const std::string& url) {
  const std::string prefix = "zmq:tcp://";
  if (url.rfind(prefix, 0) != 0) return "";
  const std::string rest = url.substr(prefix.size());
  const size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == rest.size()) return "";
  for (size_t i = colon + 1; i < rest.size(); ++i)
    if (!isdigit(static_cast<unsigned char>(rest[i]))) return "";
  const long port = std::stol(rest.substr(colon + 1));
  if (port < 1 || port > 65535) return "";
  return "tcp://" + rest;
}

}  // namespace

std::variant<StreamJobRequest, ApiError> parse_stream_job(const std::string& body) {
  auto bad = [](const std::string& m, const std::string& p) { return ApiError{400, "invalid_request_error", "", m, p}; };
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return bad("the request body must be a JSON object", "");
  StreamJobRequest r;
  for (auto [key, out] : {std::pair{"input", &r.input}, std::pair{"output", &r.output}}) {
    if (!j.contains(key) || !j[key].is_string() || zmq_endpoint(j[key].get<std::string>()).empty())
      return bad(std::string("'") + key + "' must be a zmq:tcp://HOST:PORT URL", key);
    *out = j[key].get<std::string>();
  }
  if (j.contains("task")) {
    if (!j["task"].is_string() || j["task"] != "respond") return bad("'task' must be respond", "task");
  }
  if (j.contains("max_response_seconds")) {
    if (!j["max_response_seconds"].is_number() || j["max_response_seconds"].get<double>() < 0.2 || j["max_response_seconds"].get<double>() > 60)
      return bad("'max_response_seconds' must be from 0.2 to 60", "max_response_seconds");
    r.max_response_seconds = j["max_response_seconds"];
  }
  if (j.contains("modality")) {
    if (!j["modality"].is_string() || (j["modality"] != "audio" && j["modality"] != "video" && j["modality"] != "text"))
      return bad("'modality' must be audio, video or text", "modality");
    r.modality = j["modality"];
  }
  if (r.input == r.output) return bad("'input' and 'output' must differ", "output");
  return r;
}

class StreamJob : public std::enable_shared_from_this<StreamJob> {
 public:
  StreamJob(std::string id, StreamJobRequest req, HttpServer::Impl& srv, std::string key)
      : id_(std::move(id)), req_(std::move(req)), srv_(srv), key_(std::move(key)), pub_(ctx_, zmq::socket_type::pub), created_(unix_now()) {}
  ~StreamJob() { stop(); }

  // On the I/O thread: binds the output, starts the receiver and decoder threads.
  Status start() {
    try {
      pub_.set(zmq::sockopt::linger, 0);
      pub_.bind(zmq_endpoint(req_.output));
    } catch (const zmq::error_t& e) {
      return Error{"cannot publish on " + req_.output + ": " + e.what()};
    }
    auto self = shared_from_this();
    rx_ = std::thread([self] { self->receive_loop(); });
    dec_ = std::thread([self] { self->decode_loop(); });
    event("started", {});
    return Status::Ok();
  }

  // Stops the threads and any answer in flight; idempotent. Called on the I/O thread.
  void stop() {
    if (stopping_.exchange(true)) return;
    queue_.abort();
    if (rx_.joinable()) rx_.join();
    if (dec_.joinable()) dec_.join();
    if (generating_) {
      caf::anon_send<caf::message_priority::high>(srv_.pipe.executor, cancel_atom::value, request_id_);
      account("cancelled", "the job was stopped", 0, 0);
    }
    generating_ = false;
    if (status_ == "running") status_ = "stopped";
    try {
      pub_.close();
    } catch (...) {
    }
  }

  nlohmann::json to_json() const {
    return {{"id", id_}, {"object", "stream"}, {"status", status_}, {"input", req_.input}, {"output", req_.output}, {"task", req_.task},
            {"modality", req_.modality},
            {"created_at", created_}, {"bytes_in", bytes_in_.load()}, {"bytes_out", bytes_out_}, {"gaps", gaps_.load()},
            {"turns", turns_}, {"responses", responses_}, {"events", nlohmann::json(events_)}};
  }
  bool active() const { return status_ == "running"; }

  // ---- the answer's sink (I/O thread)
  void on_prompt_tokens(int32_t) {}
  void on_refused(const std::string& message) {
    generating_ = false;
    account("failed", message, 0, 0);
    event("error", {{"message", message}});
  }
  // A text answer: its deltas are events on the job.
  void on_delta(const actors::text_delta& d) {
    credit_.delivered(srv_.pipe.executor, d.completion_tokens);
    if (!d.text.empty()) {
      text_ += d.text;
      event("response.output_text.delta", {{"request", request_id_}, {"delta", d.text}});
    }
    if (d.finish_reason.empty()) return;
    generating_ = false;
    ++responses_;
    const bool failed = d.finish_reason == "error" || d.finish_reason == "cancelled";
    account(d.finish_reason == "cancelled" ? "cancelled" : failed ? "failed" : "completed", d.error, d.prompt_tokens, d.completion_tokens);
    event(failed ? "response.failed" : "response.done",
          {{"output_tokens", d.completion_tokens}, {"input_tokens", d.prompt_tokens}, {"text", text_},
           {"error", failed ? nlohmann::json(d.error.empty() ? d.finish_reason : d.error) : nlohmann::json(nullptr)}});
    text_.clear();
  }
  void on_media(MediaChunk c, int32_t tokens, int32_t prompt_tokens) {
    credit_.delivered(srv_.pipe.executor, tokens);  // the PUB socket never blocks: it drops for slow readers
    if (!c.bytes.empty() && !stopping_) {
      try {
        pub_.send(zmq::buffer(c.bytes), zmq::send_flags::dontwait);
        bytes_out_ += c.bytes.size();
      } catch (const zmq::error_t&) {
      }
    }
    if (!c.done) return;
    generating_ = false;
    ++responses_;
    account(c.error.empty() ? "completed" : c.error == "cancelled" ? "cancelled" : "failed", c.error, prompt_tokens, tokens);
    event(c.error.empty() ? "response.done" : "response.failed",
          {{"output_tokens", tokens}, {"input_tokens", prompt_tokens}, {"error", c.error.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.error)}});
  }

 private:
  // One record per answer, under the key that created the job.
  void account(const std::string& outcome, const std::string& error, int32_t prompt_tokens, int32_t output_tokens) {
    UsageRecord r;
    r.request_id = id_ + "-" + std::to_string(request_id_);
    r.key = key_;
    r.endpoint = "/v1/streams";
    r.request_class = req_.modality == "text" ? "interactive" : "realtime";
    r.started_at = response_started_;
    r.tokens_in["audio"] = int64_t(audio_tokens_in_);
    r.tokens_in["text"] = std::max<int64_t>(0, int64_t(prompt_tokens) - int64_t(audio_tokens_in_));
    r.tokens_out[req_.modality] = output_tokens;
    r.outcome = outcome, r.error = error;
    srv_.account(std::move(r));
  }
  void event(const std::string& type, nlohmann::json fields) {
    fields["type"] = type;
    fields["at"] = unix_now();
    events_.push_back(std::move(fields));
    while (events_.size() > 100) events_.pop_front();  // a log of the recent ones
  }

  void receive_loop() {
    zmq::socket_t sub(ctx_, zmq::socket_type::sub);
    sub.set(zmq::sockopt::subscribe, "");
    sub.set(zmq::sockopt::rcvtimeo, 100);
    sub.set(zmq::sockopt::linger, 0);
    try {
      sub.connect(zmq_endpoint(req_.input));
    } catch (const zmq::error_t& e) {
      post_event("error", {{"message", std::string("cannot subscribe to ") + req_.input + ": " + e.what()}});
      queue_.close();
      return;
    }
    while (!stopping_) {
      zmq::message_t m;
      auto got = sub.recv(m, zmq::recv_flags::none);
      if (!got) continue;  // the 100 ms timeout: look at stopping_ again
      bytes_in_ += m.size();
      if (!queue_.push(std::span<const uint8_t>(static_cast<const uint8_t*>(m.data()), m.size()))) break;
    }
  }

  void decode_loop() {
    const ModalityInfo* audio = srv_.pipe.codecs ? srv_.pipe.codecs->info(Modality::Audio) : nullptr;
    if (!audio) {
      post_event("error", {{"message", "this model has no audio modality"}});
      return;
    }
    VoiceInput voice(*audio, srv_.pipe.codecs->audio(Modality::Audio), VadConfig{});
    codecs::DecodeLimits limits;
    limits.max_seconds = 1e9;
    limits.live = true;
    int64_t start_ms = 0;
    while (!stopping_) {
      const Status s = codecs::decode_audio(queue_, voice.sample_rate(), [&](std::span<const float> pcm) {
        for (const auto& e : voice.push(pcm)) {
          if (e.started) {
            start_ms = e.at_ms;
            post_event("speech_started", {{"audio_start_ms", e.at_ms}});
            continue;
          }
          auto ids = voice.take(std::max<int64_t>(0, start_ms - 300), e.at_ms);
          auto self = shared_from_this();
          net::post(srv_.ioc, [self, ids = std::move(ids), at = e.at_ms]() mutable { self->on_turn(std::move(ids), at); });
        }
      }, limits);
      if (stopping_ || queue_.aborted()) break;
      // The stream broke (a lost packet, garbage, a publisher that restarted): FFmpeg opens
      // it again on what comes next and resynchronises on the container.
      gaps_++;
      post_event("gap", {{"message", s.ok() ? std::string("end of stream") : s.message()}});
      if (s.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  void post_event(const std::string& type, nlohmann::json fields) {
    auto self = shared_from_this();
    net::post(srv_.ioc, [self, type, fields = std::move(fields)]() mutable { self->event(type, std::move(fields)); });
  }

  // A finished turn (I/O thread): the user's audio joins the conversation; answer it.
  void on_turn(std::vector<int32_t> ids, int64_t at_ms) {
    if (stopping_) return;
    event("speech_stopped", {{"audio_end_ms", at_ms}, {"audio_tokens", ids.size()}});
    if (ids.empty()) return;
    ++turns_;
    conversation_.push_back(std::move(ids));
    std::vector<int64_t> costs;  // bounded as realtime conversations are
    for (const auto& item : conversation_) costs.push_back(int64_t(item.size()));
    const size_t drop = oldest_items_to_drop(costs, 0, srv_.cfg.max_conversation_tokens);
    conversation_.erase(conversation_.begin(), conversation_.begin() + std::ptrdiff_t(drop));
    srv_.metrics.conversation_items_dropped += drop;
    if (generating_) return;  // answered with the next turn
    actors::text_request r;
    request_id_ = srv_.next_id++;
    r.id = request_id_;
    std::string prompt;
    for (size_t k = 0; k < conversation_.size(); ++k) {
      prompt += "user: \x1e" + std::to_string(k) + "\x1f\n";
      r.media_parts.push_back(conversation_[k]);
    }
    r.prompt = prompt + "assistant:";
    r.temperature = 0.8f;
    response_started_ = HttpServer::Impl::unix_seconds();
    audio_tokens_in_ = 0;
    for (const auto& part : r.media_parts) audio_tokens_in_ += part.size();
    std::shared_ptr<MediaOutput> out;
    if (req_.modality == "text") {
      r.max_tokens = std::min(srv_.cfg.max_tokens, 256);
      r.request_class = "interactive";
    } else {
      // A media answer, paced as a realtime stream at its modality's token rate.
      const Modality m = req_.modality == "video" ? Modality::Video : Modality::Audio;
      const ModalityInfo& info = *srv_.pipe.codecs->info(m);
      r.modality = req_.modality;
      r.request_class = "realtime";
      r.tokens_per_second = info.tokens_per_second();
      if (m == Modality::Video) {  // whole frames
        const int per_frame = int(std::lround(info.tokens_per_second() / std::max(1.0, double(info.frame_rate))));
        r.max_tokens = per_frame * std::max(1, int(std::lround(req_.max_response_seconds * info.frame_rate)));
        out = make_video_output(int(info.width), int(info.height), info.frame_rate, "mpegts");
      } else {
        r.max_tokens = int32_t(req_.max_response_seconds * info.tokens_per_second());
        out = make_audio_output(codecs::AudioFormat::MpegTs, srv_.pipe.codecs->audio(Modality::Audio)->sample_rate());
      }
    }
    generating_ = true;
    credit_.start(request_id_);
    event("response.started", {{"request", request_id_}});
    sink_ = spawn_generation(srv_.system, srv_.ioc, srv_.pipe.encoder, r, std::weak_ptr<StreamJob>(shared_from_this()), out);
  }

  std::string id_;
  StreamJobRequest req_;
  HttpServer::Impl& srv_;
  std::string key_;  // of the client that created the job: its answers are recorded under it
  zmq::context_t ctx_;
  zmq::socket_t pub_;  // I/O thread only
  codecs::ByteQueue queue_{size_t(1) << 20};
  std::thread rx_, dec_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> bytes_in_{0}, gaps_{0};
  // I/O thread state.
  long created_;
  std::string status_ = "running";
  uint64_t bytes_out_ = 0;
  int turns_ = 0, responses_ = 0;
  std::deque<nlohmann::json> events_;
  std::deque<std::vector<int32_t>> conversation_;
  std::string text_;  // of the text answer in progress
  double response_started_ = 0;
  size_t audio_tokens_in_ = 0;
  bool generating_ = false;
  int64_t request_id_ = 0;
  DeliveryCredit credit_;
  sink_actor sink_;
};

std::pair<int, std::string> stream_jobs_create(HttpServer::Impl& srv, const std::string& body, const std::string& key) {
  auto parsed = parse_stream_job(body);
  if (std::holds_alternative<ApiError>(parsed)) return {400, std::get<ApiError>(parsed).body()};
  int active = 0;
  for (auto& [id, job] : srv.streams) active += job->active();
  if (active >= 4) return {429, ApiError{429, "rate_limit_error", "too_many_streams", "4 stream jobs are already running", ""}.body()};
  if (!srv.pipe.codecs || !srv.pipe.codecs->info(Modality::Audio))
    return {400, ApiError{400, "invalid_request_error", "unsupported_modality", "this model has no audio modality", ""}.body()};
  if (std::get<StreamJobRequest>(parsed).modality == "video" && !srv.pipe.codecs->info(Modality::Video))
    return {400, ApiError{400, "invalid_request_error", "unsupported_modality", "this model has no video modality", "modality"}.body()};
  const std::string id = "stream_" + std::to_string(srv.next_id++);
  if (auto refusal = srv.admit(key, "audio", false)) return {refusal_error(*refusal).status, refusal_error(*refusal).body()};
  auto job = std::make_shared<StreamJob>(id, std::get<StreamJobRequest>(std::move(parsed)), srv, key);
  if (Status s = job->start(); !s) return {400, ApiError{400, "invalid_request_error", "", s.message(), "output"}.body()};
  srv.streams[id] = job;
  return {200, job->to_json().dump()};
}

std::pair<int, std::string> stream_jobs_get(HttpServer::Impl& srv, const std::string& id) {
  auto it = srv.streams.find(id);
  if (it == srv.streams.end()) return {404, ApiError{404, "invalid_request_error", "stream_not_found", "no stream job '" + id + "'", ""}.body()};
  return {200, it->second->to_json().dump()};
}

std::pair<int, std::string> stream_jobs_delete(HttpServer::Impl& srv, const std::string& id) {
  auto it = srv.streams.find(id);
  if (it == srv.streams.end()) return {404, ApiError{404, "invalid_request_error", "stream_not_found", "no stream job '" + id + "'", ""}.body()};
  it->second->stop();
  auto j = it->second->to_json();
  j["deleted"] = true;
  srv.streams.erase(it);
  return {200, j.dump()};
}

void stream_jobs_stop_all(HttpServer::Impl& srv) {
  for (auto& [id, job] : srv.streams) job->stop();
  srv.streams.clear();
}

}  // namespace tutti::http
