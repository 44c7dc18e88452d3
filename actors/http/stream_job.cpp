#include "actors/http/stream_job.hpp"

#include <zmq.hpp>

#include <atomic>
#include <deque>
#include <thread>

#include "actors/http/conversation.hpp"
#include "actors/http/generation.hpp"
#include "actors/http/handlers/handlers.hpp"
#include "codecs/media_decoder.h"
#include "codecs/voice_input.h"

namespace tutti::http {

namespace {

}  // namespace

std::variant<StreamJobRequest, ApiError> parse_stream_job(const std::string& body) {
  return parse_stream_job(body, *parse_host_ranges({"127.0.0.0/8", "::1"}));
}

std::variant<StreamJobRequest, ApiError> parse_stream_job(const std::string& body, const std::vector<HostRange>& allowed) {
  auto bad = [](const std::string& m, const std::string& p) { return invalid_request(m, p); };
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return bad("the request body must be a JSON object", "");
  StreamJobRequest r;
  for (auto [key, out, address] : {std::tuple{"input", &r.input, &r.input_address}, std::tuple{"output", &r.output, &r.output_address}}) {
    if (!j.contains(key) || !j[key].is_string()) return bad(std::string("'") + key + "' must be a zmq:tcp://HOST:PORT URL", key);
    *out = j[key].get<std::string>();
    auto resolved = resolve_stream_address(*out, allowed);
    if (!resolved) return bad(std::string("'") + key + "' " + resolved.error().message, key);
    *address = *resolved;
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
    const auto m = j["modality"].is_string() ? parse_modality(j["modality"].get<std::string>()) : std::nullopt;
    if (!m || (*m != Modality::Audio && *m != Modality::Video && *m != Modality::Text))
      return bad("'modality' must be audio, video or text", "modality");
    r.modality = *m;
  }
  if (r.input_address == r.output_address) return bad("'input' and 'output' must differ", "output");
  return r;
}

// One stream job: its threads (receiver, decoder), its conversation, and the answer in
// flight (a generation it owns). Its answers are recorded under the key that created it.
class StreamJob final : public GenerationOwner, public std::enable_shared_from_this<StreamJob> {
 public:
  StreamJob(std::string id, StreamJobRequest req, ServerState& srv, std::string key)
      : id_(std::move(id)), req_(std::move(req)), srv_(srv), key_(std::move(key)), pub_(ctx_, zmq::socket_type::pub) {
    pin_.set(id_);
    conversation_.placement = id_;
  }
  ~StreamJob() override { stop(); }

  // On the I/O thread: binds the output, starts the receiver and decoder threads.
  Status start() {
    try {
      pub_.set(zmq::sockopt::linger, 0);
      if (req_.output_address.v6) pub_.set(zmq::sockopt::ipv6, 1);
      pub_.bind(req_.output_address.endpoint);  // an allowed address only, never a wildcard
    } catch (const zmq::error_t& e) {
      return Error{"cannot publish on " + req_.output + ": " + e.what()};
    }
    auto self = shared_from_this();
    rx_ = std::thread([self] { self->receive_loop(); });
    dec_ = std::thread([self] { self->decode_loop(); });
    event("started", {});
    last_input_ = std::chrono::steady_clock::now().time_since_epoch().count();
    watch_idle();
    return Status::Ok();
  }

  // Stops the threads and any answer in flight (recorded as cancelled); idempotent. Called
  // on the I/O thread.
  void stop() {
    if (stopping_.exchange(true)) return;
    queue_.abort();
    if (rx_.joinable()) rx_.join();
    if (dec_.joinable()) dec_.join();
    idle_timer_.cancel();
    if (answer_) answer_->abandon("the job was stopped");
    answer_.reset();
    if (status_ == "running") status_ = "stopped";
    try {
      pub_.close();
    } catch (...) {
    }
  }

  nlohmann::json to_json() const {
    return {{"id", id_}, {"object", "stream"}, {"status", status_}, {"input", req_.input}, {"output", req_.output}, {"task", req_.task},
            {"modality", modality_name(req_.modality)},
            {"created_at", created_}, {"bytes_in", bytes_in_.load()}, {"bytes_out", bytes_out_}, {"gaps", gaps_.load()},
            {"turns", turns_}, {"turns_by_reason", turn_reasons_}, {"responses", responses_}, {"events", nlohmann::json(events_)}};
  }
  bool active() const { return status_ == "running"; }
  const std::string& owner() const { return key_; }

  // A job whose input has been silent for stream_idle_timeout_s ends (its slot is freed),
  // and its event log says why; speech cut off by a shorter silence of the input itself
  // (stream_turn_idle_s: a feed that stopped mid-sentence) is committed as a turn. Checked
  // every 100 ms on the I/O thread.
  void watch_idle() {
    idle_timer_.expires_after(std::chrono::milliseconds(100));
    idle_timer_.async_wait([weak = weak_from_this()](beast::error_code ec) {
      auto self = weak.lock();
      if (ec || !self || self->stopping_) return;
      const auto last = std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(self->last_input_.load()));
      const double idle = std::chrono::duration<double>(std::chrono::steady_clock::now() - last).count();
      if (idle >= self->srv_.cfg.stream_turn_idle_s) {
        auto [ids, at] = self->commit_speech();
        if (!ids.empty()) self->on_turn(std::move(ids), at, "input_idle");
      }
      if (idle < self->srv_.cfg.stream_idle_timeout_s) return self->watch_idle();
      self->event("idle_timeout", {{"message", "no input for " + std::to_string(int(idle)) + " s: the job ended"}});
      self->stop();
      self->status_ = "ended";
    });
  }

  // ---- the answer's generation (I/O thread)
  // A text answer: its deltas are events on the job.
  void on_text(const actors::text_delta& d) override {
    answer_->delivered(d.completion_tokens);  // events are kept on the job: nothing waits on a client
    if (d.text.empty()) return;
    text_ += d.text;
    event("response.output_text.delta", {{"request", answer_->request_id()}, {"delta", d.text}});
  }
  void on_media(MediaChunk& c, int32_t tokens) override {
    answer_->delivered(tokens);  // the PUB socket never blocks: it drops for slow readers
    if (c.bytes.empty() || stopping_) return;
    try {
      pub_.send(zmq::buffer(c.bytes), zmq::send_flags::dontwait);
      bytes_out_ += c.bytes.size();
    } catch (const zmq::error_t&) {
    }
  }
  void on_end(const GenerationEnd& e) override {
    ++responses_;
    nlohmann::json fields = {{"output_tokens", e.output_tokens}, {"input_tokens", e.prompt_tokens},
                             {"error", e.ok() ? nlohmann::json(nullptr) : nlohmann::json(e.message.empty() ? error_code_name(e.code) : e.message)}};
    if (req_.modality == Modality::Text) fields["text"] = text_;
    event(e.ok() ? "response.done" : "response.failed", std::move(fields));
    text_.clear();
    answer_.reset();
  }

 private:
  void event(const std::string& type, nlohmann::json fields) {
    fields["type"] = type;
    fields["at"] = ServerState::unix_now();
    events_.push_back(std::move(fields));
    while (events_.size() > 100) events_.pop_front();  // a log of the recent ones
  }
  void receive_loop() {
    zmq::socket_t sub(ctx_, zmq::socket_type::sub);
    sub.set(zmq::sockopt::subscribe, "");
    sub.set(zmq::sockopt::rcvtimeo, 100);
    sub.set(zmq::sockopt::linger, 0);
    try {
      if (req_.input_address.v6) sub.set(zmq::sockopt::ipv6, 1);
      sub.connect(req_.input_address.endpoint);
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
      last_input_ = std::chrono::steady_clock::now().time_since_epoch().count();
      if (!queue_.push(std::span<const uint8_t>(static_cast<const uint8_t*>(m.data()), m.size()))) break;
    }
  }

  void decode_loop() {
    const ModalityInfo* audio = srv_.codecs_for(Modality::Audio) ? srv_.codecs_for(Modality::Audio)->info(Modality::Audio) : nullptr;
    if (!audio) {
      post_event("error", {{"message", "this model has no audio modality"}});
      return;
    }
    {
      std::lock_guard<std::mutex> lock(voice_mu_);
      voice_.emplace(*audio, srv_.codecs_for(Modality::Audio)->audio(Modality::Audio), codecs::VadConfig{});
    }
    const int rate = srv_.codecs_for(Modality::Audio)->audio(Modality::Audio)->sample_rate();
    const int64_t max_turn_ms = int64_t(srv_.cfg.stream_max_turn_s * 1000);
    codecs::DecodeLimits limits;
    limits.max_seconds = 1e9;
    limits.live = true;
    auto turn = [this](std::vector<int32_t> ids, int64_t at, const char* why) {
      if (ids.empty()) return;
      net::post(srv_.ioc, [self = shared_from_this(), ids = std::move(ids), at, why]() mutable { self->on_turn(std::move(ids), at, why); });
    };
    while (!stopping_) {
      const Status s = codecs::decode_audio(queue_, rate, [&](std::span<const float> pcm) {
        std::lock_guard<std::mutex> lock(voice_mu_);
        for (const auto& e : voice_->push(pcm)) {
          if (e.started) {
            speech_from_ms_ = std::max<int64_t>(voice_->buffer_start_ms(), e.at_ms - 300);
            post_event("speech_started", {{"audio_start_ms", e.at_ms}});
          } else if (speech_from_ms_ >= 0) {  // (speech already committed by an idle input ends here)
            turn(voice_->take(speech_from_ms_, e.at_ms), e.at_ms, "speech_stopped");
            speech_from_ms_ = -1;
          }
        }
        // Talk without a pause: every max_turn of it is a turn of its own.
        if (speech_from_ms_ >= 0 && max_turn_ms > 0 && voice_->buffer_end_ms() - speech_from_ms_ >= max_turn_ms) {
          const int64_t end = voice_->buffer_end_ms();
          turn(voice_->take(speech_from_ms_, end), end, "max_turn");
          speech_from_ms_ = end;
        }
      }, limits);
      if (stopping_ || queue_.aborted()) break;
      // The end of the input commits the speech so far.
      if (auto [ids, at] = commit_speech(); !ids.empty()) turn(std::move(ids), at, "input_ended");
      // The stream broke (a lost packet, garbage, a publisher that restarted): FFmpeg opens
      // it again on what comes next and resynchronises on the container.
      gaps_++;
      post_event("gap", {{"message", s.ok() ? std::string("end of stream") : s.message()}});
      if (s.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  // The speech in progress (from its start to what has arrived), taken as a turn: at the end
  // of the input, or when the input went quiet mid-speech. Empty when none is in progress.
  std::pair<std::vector<int32_t>, int64_t> commit_speech() {
    std::lock_guard<std::mutex> lock(voice_mu_);
    if (!voice_ || speech_from_ms_ < 0) return {};
    const int64_t end = voice_->buffer_end_ms();
    auto ids = voice_->take(speech_from_ms_, end);
    speech_from_ms_ = -1;
    return {std::move(ids), end};
  }

  void post_event(const std::string& type, nlohmann::json fields) {
    auto self = shared_from_this();
    net::post(srv_.ioc, [self, type, fields = std::move(fields)]() mutable { self->event(type, std::move(fields)); });
  }

  // A finished turn (I/O thread): the user's audio joins the conversation; answer it.
  // `why`: speech_stopped (the VAD), max_turn, input_ended or input_idle.
  void on_turn(std::vector<int32_t> ids, int64_t at_ms, const char* why) {
    if (stopping_) return;
    event("speech_stopped", {{"audio_end_ms", at_ms}, {"audio_tokens", ids.size()}, {"reason", why}});
    if (ids.empty()) return;
    ++turns_;
    ++turn_reasons_[why];
    conversation_.items.push_back({"user", "", std::move(ids), Modality::Audio});
    srv_.metrics.conversation_items_dropped += conversation_.trim(srv_.cfg.max_conversation_tokens);
    if (answer_) return;  // answered with the next turn
    AnswerShape shape;
    shape.modality = req_.modality;
    shape.max_tokens = req_.modality == Modality::Text ? std::min(srv_.cfg.max_tokens, 256) : 0;
    shape.media_seconds = req_.max_response_seconds;
    auto built = answer_request(conversation_.request(srv_.cfg.chat_template), shape, srv_.cfg.modalities);
    if (const ApiError* e = std::get_if<ApiError>(&built)) return event("error", {{"message", e->message}});
    GenerationSpec spec;
    spec.key = key_;
    spec.endpoint = "/v1/streams";
    spec.request = std::get<actors::text_request>(std::move(built));
    spec.request.id = srv_.next_id++;
    spec.record_id = id_ + "-" + std::to_string(spec.request.id);
    spec.sticky = conversation_.placement;
    spec.media_in = conversation_.media_tokens();
    spec.check_limits = false;  // the job was admitted when it was created
    if (req_.modality == Modality::Video) {
      const ModalityInfo& v = *srv_.cfg.modalities.find(Modality::Video);
      spec.output = [w = int(v.width), h = int(v.height), fps = v.frame_rate] {
        return std::shared_ptr<MediaOutput>(make_video_output(w, h, fps, "mpegts"));
      };
    } else if (req_.modality == Modality::Audio) {
      spec.output = [rate = srv_.codecs_for(Modality::Audio)->audio(Modality::Audio)->sample_rate()] {
        return std::shared_ptr<MediaOutput>(make_audio_output(codecs::AudioFormat::MpegTs, rate));
      };
    }
    const int64_t request = spec.request.id;
    auto started = Generation::start(srv_, std::move(spec), weak_from_this());
    if (const ApiError* e = std::get_if<ApiError>(&started)) return event("error", {{"message", e->message}});
    answer_ = std::get<std::shared_ptr<Generation>>(std::move(started));
    event("response.started", {{"request", request}});
  }

  std::string id_;
  StreamJobRequest req_;
  ServerState& srv_;
  std::string key_;  // of the client that created the job: its answers are recorded under it
  zmq::context_t ctx_;
  zmq::socket_t pub_;  // I/O thread only
  codecs::ByteQueue queue_{size_t(1) << 20};
  // The input's voice: pushed by the decoder thread, taken by it or by the I/O thread (a turn
  // cut off by an idle input). speech_from_ms_: where the speech in progress starts; -1: none.
  std::mutex voice_mu_;
  std::optional<codecs::VoiceInput> voice_;
  int64_t speech_from_ms_ = -1;
  std::thread rx_, dec_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> bytes_in_{0}, gaps_{0};
  std::atomic<int64_t> last_input_{0};  // steady-clock ticks of the last message received
  net::steady_timer idle_timer_{srv_.ioc};
  // I/O thread state.
  long created_ = ServerState::unix_now();
  std::string status_ = "running";
  uint64_t bytes_out_ = 0;
  int turns_ = 0, responses_ = 0;
  std::map<std::string, int> turn_reasons_;  // turns by what ended them (on_turn's `why`)
  std::deque<nlohmann::json> events_;
  StickyPin pin_{srv_};
  Conversation conversation_;
  std::string text_;  // of the text answer in progress
  std::shared_ptr<Generation> answer_;
};

std::variant<nlohmann::json, ApiError> stream_jobs_create(ServerState& srv, const std::string& body, const std::string& key) {
  auto allowed = parse_host_ranges(srv.cfg.stream_allowed_hosts);
  if (!allowed) return ApiError{ErrorCode::generation_failed, "[streams] allowed_hosts: " + allowed.error().message};
  auto parsed = parse_stream_job(body, *allowed);
  if (const ApiError* e = std::get_if<ApiError>(&parsed)) return *e;
  int active = 0;
  for (auto& [id, job] : srv.streams) active += job->active();
  if (auto refusal = key_job_limit(srv, key)) return *refusal;
  if (active >= 4) return ApiError{ErrorCode::too_many_jobs, "4 stream jobs are already running", "", 5, "too_many_streams"};
  if (!srv.codecs_for(Modality::Audio) || !srv.codecs_for(Modality::Audio)->info(Modality::Audio))
    return ApiError{ErrorCode::unsupported_modality, "this model has no audio modality"};
  if (std::get<StreamJobRequest>(parsed).modality == Modality::Video && !srv.codecs_for(Modality::Video)->info(Modality::Video))
    return ApiError{ErrorCode::unsupported_modality, "this model has no video modality", "modality"};
  const std::string id = ServerState::unguessable_id("stream_");
  if (auto refusal = srv.admit(key, Modality::Audio, false)) return ApiError{refusal->code, refusal->message, "", refusal->retry_after_s};
  auto job = std::make_shared<StreamJob>(id, std::get<StreamJobRequest>(std::move(parsed)), srv, key);
  if (Status s = job->start(); !s) return invalid_request(s.message(), "output");
  srv.streams[id] = job;
  return job->to_json();
}

std::variant<nlohmann::json, ApiError> stream_jobs_list(ServerState& srv, const std::string& key, bool admin) {
  nlohmann::json data = nlohmann::json::array();
  for (const auto& [id, job] : srv.streams)
    if (admin || job->owner() == key) data.push_back(job->to_json());
  return nlohmann::json{{"object", "list"}, {"data", data}};
}

namespace {
// The job `id` names if this client may see it; another key's is answered as missing.
std::map<std::string, std::shared_ptr<StreamJob>>::iterator visible_job(ServerState& srv, const std::string& id, const std::string& key,
                                                                        bool admin) {
  auto it = srv.streams.find(id);
  if (it != srv.streams.end() && !admin && it->second->owner() != key) return srv.streams.end();
  return it;
}
ApiError no_stream(const std::string& id) { return ApiError{ErrorCode::not_found, "no stream job '" + id + "'", "", 0, "stream_not_found"}; }
}  // namespace

std::variant<nlohmann::json, ApiError> stream_jobs_get(ServerState& srv, const std::string& id, const std::string& key, bool admin) {
  auto it = visible_job(srv, id, key, admin);
  if (it == srv.streams.end()) return no_stream(id);
  return it->second->to_json();
}

std::variant<nlohmann::json, ApiError> stream_jobs_delete(ServerState& srv, const std::string& id, const std::string& key, bool admin) {
  auto it = visible_job(srv, id, key, admin);
  if (it == srv.streams.end()) return no_stream(id);
  it->second->stop();
  auto j = it->second->to_json();
  j["deleted"] = true;
  srv.streams.erase(it);
  return j;
}

int active_stream_jobs(ServerState& srv, const std::string& key) {
  int n = 0;
  for (const auto& [id, job] : srv.streams) n += job->active() && job->owner() == key;
  return n;
}

void stream_jobs_stop_all(ServerState& srv) {
  for (auto& [id, job] : srv.streams) job->stop();
  srv.streams.clear();
}

}  // namespace tutti::http
