#include "actors/http/server.hpp"
#include "actors/http/media.hpp"
#include "actors/http/realtime_audio.hpp"
#include "codecs/audio_tokenizer.h"

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <chrono>
#include <deque>
#include <map>
#include <optional>

namespace tutti::http {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using namespace tutti::actors;

class Session;

class VideoJob;

struct HttpServer::Impl {
  caf::actor_system& system;
  PipelineHandles pipe;
  ServerConfig cfg;
  ServerMetrics& metrics;
  net::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  std::thread thread;
  std::atomic<int64_t> next_id{1};
  std::atomic<bool> stopped{false};
  // Video jobs by id; touched only on the I/O thread (one thread runs ioc).
  std::map<std::string, std::shared_ptr<VideoJob>> jobs;

  Impl(caf::actor_system& s, PipelineHandles p, ServerConfig c, ServerMetrics& m)
      : system(s), pipe(std::move(p)), cfg(std::move(c)), metrics(m) {}
  void accept();
};

namespace {

std::chrono::milliseconds millis(double seconds) { return std::chrono::milliseconds(int64_t(seconds * 1000)); }

void apply_socket_options(tcp::socket& socket, const ServerConfig& cfg) {
  beast::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);  // deltas are small and latency matters
  if (cfg.send_buffer_bytes > 0) socket.set_option(net::socket_base::send_buffer_size(cfg.send_buffer_bytes), ignored);
}

// Credit for flow control (see executor_actor): how many generated tokens of one request the
// client's socket has taken. Sent when a write completes; never more than one message per
// write, and at once when nothing is queued.
class DeliveryCredit {
 public:
  void start(int64_t request) { *this = DeliveryCredit(); request_ = request; }
  void delivered(const executor_actor& executor, int32_t tokens) {
    if (tokens <= sent_) return;
    sent_ = tokens;
    caf::anon_send(executor, credit_atom::value, request_, tokens);
  }

 private:
  int64_t request_ = 0;
  int32_t sent_ = 0;
};

// Outgoing data of a session, each piece tagged with the token count its client has once the
// piece is written (-1: carries no tokens).
struct Outgoing {
  std::string data;
  int32_t tokens_through = -1;
};

long unix_now() { return long(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()); }

// The per-generation sink: asks the encoder to start the request, then hands every delta to
// the session on the I/O thread. Quits after the final delta.
struct sink_state {
  std::weak_ptr<Session> session;
  net::io_context* ioc = nullptr;
};

// Spawns the sink of one generation for an owner of type S (an HTTP or WebSocket session, a
// video job), which must provide on_prompt_tokens(int32_t), on_refused(std::string) and
// on_delta(text_delta), and for media answers on_media(MediaChunk, tokens, prompt tokens);
// they run on the I/O thread. The owner may be gone by then (weak pointer): the post is a
// no-op. A media answer's sink also turns its deltas into the response's bytes (`media`, on
// this CAF worker, so encoding MP3 or H.264 never holds the I/O thread).
template <class S>
sink_actor spawn_generation(caf::actor_system& system, net::io_context& io, encoder_actor encoder, text_request request,
                            std::weak_ptr<S> weak, std::shared_ptr<MediaOutput> media = nullptr) {
  net::io_context* ioc = &io;
  return system.spawn([weak, ioc, encoder, request, media](sink_actor::stateful_pointer<sink_state> self) -> sink_actor::behavior_type {
    self->request(encoder, caf::infinite, encode_atom::value, request, caf::actor_cast<sink_actor>(self))
        .then([=](int32_t n) { net::post(*ioc, [weak, n] { if (auto s = weak.lock()) s->on_prompt_tokens(n); }); },
              [=](caf::error& e) {
                std::string msg = self->system().render(e);
                // CAF renders "error(<code>, <context>)": keep the message part.
                if (auto q = msg.find('"'); q != std::string::npos) msg = msg.substr(q + 1, msg.rfind('"') - q - 1);
                net::post(*ioc, [weak, msg] { if (auto s = weak.lock()) s->on_refused(msg); });
                self->quit();
              });
    return {[=](delta_atom, text_delta d) {
              const bool last = !d.finish_reason.empty();
              net::post(*ioc, [weak, d = std::move(d)] { if (auto s = weak.lock()) s->on_delta(d); });
              if (last) self->quit();
            },
            [=](media_atom, const media_delta& d) {
              if (!media) return;  // a text request never gets media deltas
              MediaChunk chunk = media->on_delta(d);
              const bool last = chunk.done;
              net::post(*ioc, [weak, chunk = std::move(chunk), t = d.completion_tokens, p = d.prompt_tokens]() mutable {
                if (auto s = weak.lock()) s->on_media(std::move(chunk), t, p);
              });
              if (last) self->quit();
            }};
  });
}

}  // namespace

class RealtimeSession;
void start_realtime(tcp::socket socket, bhttp::request<bhttp::string_body> req, HttpServer::Impl& srv);

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpServer::Impl& srv) : stream_(std::move(socket)), srv_(srv) {
    ++srv_.metrics.active_connections;
    apply_socket_options(stream_.socket(), srv_.cfg);
  }
  ~Session() {
    --srv_.metrics.active_connections;
    if (generating_) {  // the client went away mid-generation: free its sequence
      caf::anon_send<caf::message_priority::high>(srv_.pipe.executor, cancel_atom::value, request_id_);
    }
    if (sink_) caf::anon_send_exit(sink_, caf::exit_reason::user_shutdown);
  }

  void start() {
    if (int(srv_.metrics.active_connections) > srv_.cfg.max_connections) {
      respond_error(ApiError{503, "server_error", "too_many_connections", "too many connections; try again later", ""}, false);
      return;
    }
    read();
  }

  // ---- called on the I/O thread by the sink actor's posts
  void on_prompt_tokens(int32_t n) { prompt_tokens_ = n; }
  void on_refused(const std::string& message) {
    generating_ = false;
    srv_.metrics.errors++;
    respond_error(ApiError{400, "invalid_request_error", "", message, ""}, keep_alive_);
  }
  void on_delta(const text_delta& d) {
    if (!generating_) return;
    completion_tokens_ = d.completion_tokens;
    const bool final_delta = !d.finish_reason.empty();
    if (final_delta) {
      generating_ = false;
      srv_.metrics.completion_tokens += uint64_t(d.completion_tokens);
      srv_.metrics.prompt_tokens += uint64_t(d.prompt_tokens);
    }
    if (d.finish_reason == "error" && !sse_started_) {
      srv_.metrics.errors++;
      const bool busy = d.error.rfind("busy", 0) == 0;
      respond_error(ApiError{busy ? 429 : 400, busy ? "rate_limit_error" : "invalid_request_error", busy ? "server_busy" : "",
                             d.error, ""}, keep_alive_);
      return;
    }
    if (!parsed_.stream) {
      text_ += d.text;  // bounded by max_tokens; the client gets it whole at the end
      if (!final_delta) credit_.delivered(srv_.pipe.executor, d.completion_tokens);
      if (final_delta) {
        bhttp::response<bhttp::string_body> res{bhttp::status::ok, 11};
        res.set(bhttp::field::content_type, "application/json");
        res.body() = completion_json(id_, parsed_.model, created_, parsed_.chat, text_, d.finish_reason, d.prompt_tokens,
                                     d.completion_tokens);
        send(std::move(res), keep_alive_);
      }
      return;
    }
    if (!sse_started_) {
      sse_started_ = true;
      queue("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n");
    }
    // Realtime streams get a chunk per token (text may be empty) carrying the token count;
    // others only chunks with text.
    const bool paced = parsed_.request.request_class == "realtime";
    if (!d.text.empty() || first_chunk_ || (paced && !final_delta)) {
      queue("data: " + chunk_json(id_, parsed_.model, created_, parsed_.chat, d.text, "", first_chunk_,
                                  paced ? d.completion_tokens : -1) + "\n\n", d.completion_tokens);
      first_chunk_ = false;
    } else if (!final_delta) {
      // A token with no text of its own: the client has it once what is queued is written.
      if (out_.empty()) credit_.delivered(srv_.pipe.executor, d.completion_tokens);
      else out_.back().tokens_through = d.completion_tokens;
    }
    if (final_delta) {
      if (d.finish_reason == "error") {
        queue("data: " + ApiError{500, "server_error", "", d.error, ""}.body() + "\n\n");
      } else {
        queue("data: " + chunk_json(id_, parsed_.model, created_, parsed_.chat, "", d.finish_reason, false) + "\n\n");
        if (parsed_.include_usage)
          queue("data: " + usage_chunk_json(id_, parsed_.model, created_, parsed_.chat, d.prompt_tokens, d.completion_tokens) + "\n\n");
      }
      queue("data: [DONE]\n\n");
      close_after_writes_ = true;
      flush();
    }
  }

 private:
  void read() {
    parser_.emplace();
    parser_->body_limit(srv_.cfg.max_body_bytes);
    stream_.expires_after(millis(srv_.cfg.read_timeout_s));  // slow or half-open clients are dropped
    bhttp::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec == bhttp::error::end_of_stream || ec == net::error::eof || ec == beast::error::timeout) return close();
    if (ec == bhttp::error::body_limit)
      return respond_error(ApiError{413, "invalid_request_error", "request_too_large",
                                    "the request body exceeds " + std::to_string(srv_.cfg.max_body_bytes) + " bytes", ""}, false);
    if (ec) return respond_error(ApiError{400, "invalid_request_error", "", "malformed HTTP request: " + ec.message(), ""}, false);
    handle(parser_->release());
  }

  void handle(bhttp::request<bhttp::string_body> req) {
    srv_.metrics.requests++;
    keep_alive_ = req.keep_alive();
    const std::string target(req.target());
    const std::string path = target.substr(0, target.find('?'));
    const bool get = req.method() == bhttp::verb::get, post = req.method() == bhttp::verb::post;
    if (path == "/v1/realtime") {
      if (!beast::websocket::is_upgrade(req))
        return respond_error(ApiError{400, "invalid_request_error", "", "/v1/realtime expects a WebSocket upgrade", ""}, false);
      return start_realtime(stream_.release_socket(), std::move(req), srv_);
    }
    if (path == "/health" && get) return respond_json(200, R"({"status":"ok"})");
    if (path == "/v1/models" && get) {
      json m = {{"object", "list"}, {"data", json::array({{{"id", srv_.cfg.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "tutti"}}})}};
      return respond_json(200, m.dump());
    }
    if (path == "/metrics" && get) return respond_metrics();
    if (path == "/v1/chat/completions" || path == "/v1/completions") {
      if (!post) return respond_error(ApiError{405, "invalid_request_error", "", "use POST for " + path, ""}, keep_alive_);
      return start_generation(req.body(), path == "/v1/chat/completions");
    }
    const std::pair<const char*, MediaKind> media_routes[] = {
        {"/v1/audio/speech", MediaKind::Speech}, {"/v1/music/generations", MediaKind::Music}, {"/v1/images/generations", MediaKind::Image}};
    for (const auto& [route, kind] : media_routes)
      if (path == route) {
        if (!post) return respond_error(ApiError{405, "invalid_request_error", "", "use POST for " + path, ""}, keep_alive_);
        return start_media(kind, req.body());
      }
    if (path == "/v1/videos" && post) return create_video_job(req.body());
    if (path.rfind("/v1/videos/", 0) == 0 && (get || req.method() == bhttp::verb::delete_)) return video_job_request(path, get);
    respond_error(ApiError{404, "invalid_request_error", "not_found", "no route for " + std::string(req.method_string()) + " " + path, ""}, keep_alive_);
  }

  // While a generation runs, watch the socket: a client that closes it (EOF or error) is
  // gone, and its sequence is cancelled at once. This pending wait also keeps the session
  // alive while no read or write is in flight.
  void watch_client() {
    stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this()](beast::error_code ec) {
      if (!self->generating_) return;
      char probe;
      beast::error_code peek_ec;
      const size_t n = self->stream_.socket().receive(net::buffer(&probe, 1), tcp::socket::message_peek, peek_ec);
      if (ec || peek_ec || n == 0) {
        caf::anon_send<caf::message_priority::high>(self->srv_.pipe.executor, cancel_atom::value, self->request_id_);
        self->generating_ = false;
        self->close();
      }
      // Data instead of EOF: a pipelined request, read once this generation is done.
    });
  }

  void start_generation(const std::string& body, bool chat) {
    auto parsed = parse_request(body, chat, srv_.cfg.chat_template, srv_.cfg.model_name, srv_.cfg.max_tokens);
    if (std::holds_alternative<ApiError>(parsed)) {
      srv_.metrics.errors++;
      return respond_error(std::get<ApiError>(parsed), keep_alive_);
    }
    parsed_ = std::get<ParsedRequest>(std::move(parsed));
    request_id_ = srv_.next_id++;
    parsed_.request.id = request_id_;
    id_ = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(request_id_);
    created_ = unix_now();
    text_.clear();
    first_chunk_ = true;
    sse_started_ = false;
    generating_ = true;
    credit_.start(request_id_);
    watch_client();
    sink_ = spawn_generation(srv_.system, srv_.ioc, srv_.pipe.encoder, parsed_.request, std::weak_ptr<Session>(shared_from_this()));
  }

  // ---- media answers: speech and music streamed in their format, images as JSON
 public:
  void on_media(MediaChunk c, int32_t tokens, int32_t prompt_tokens);

 private:
  void start_media(MediaKind kind, const std::string& body) {
    auto parsed = parse_media_request(kind, body, srv_.cfg.modalities, srv_.cfg.model_name, srv_.cfg.max_media_seconds);
    if (std::holds_alternative<ApiError>(parsed)) {
      srv_.metrics.errors++;
      return respond_error(std::get<ApiError>(parsed), keep_alive_);
    }
    media_ = std::get<MediaRequest>(std::move(parsed));
    images_.clear();
    media_prompt_tokens_ = media_output_tokens_ = 0;
    begin_media_generation();
  }

  void begin_media_generation() {
    request_id_ = srv_.next_id++;
    media_.request.id = request_id_;
    media_.request.seed = uint64_t(request_id_);  // n images differ from each other
    created_ = unix_now();
    sse_started_ = false;
    close_after_writes_ = false;
    generating_ = true;
    credit_.start(request_id_);
    watch_client();
    const ModalityInfo* m = srv_.cfg.modalities.find(*parse_modality(media_.request.modality));
    std::shared_ptr<MediaOutput> out = media_.kind == MediaKind::Image
                                           ? std::shared_ptr<MediaOutput>(make_image_output(media_.out_width, media_.out_height))
                                           : std::shared_ptr<MediaOutput>(make_audio_output(media_.audio_format, int(m->sample_rate)));
    sink_ = spawn_generation(srv_.system, srv_.ioc, srv_.pipe.encoder, media_.request, std::weak_ptr<Session>(shared_from_this()), out);
  }

  json media_usage() const {
    const std::string out_key = std::string(media_.request.modality) + "_tokens";
    return {{"input_tokens", media_prompt_tokens_}, {"output_tokens", media_output_tokens_},
            {"total_tokens", media_prompt_tokens_ + media_output_tokens_},
            {"input_tokens_details", {{"text_tokens", media_prompt_tokens_}}},
            {"output_tokens_details", {{out_key, media_output_tokens_}}}};
  }

  void on_media_chunk(MediaChunk c, int32_t tokens, int32_t prompt_tokens) {
    if (!generating_) return;
    if (c.done) {
      generating_ = false;
      media_prompt_tokens_ += prompt_tokens;
      media_output_tokens_ += tokens;
      srv_.metrics.completion_tokens += uint64_t(tokens);
      srv_.metrics.prompt_tokens += uint64_t(prompt_tokens);
    }
    if (!c.error.empty()) {
      generating_ = false;
      srv_.metrics.errors++;
      if (!sse_started_) {
        const bool busy = c.error.rfind("busy", 0) == 0, refused = c.error.rfind("this model has no", 0) == 0;
        return respond_error(ApiError{busy ? 429 : refused ? 400 : 500, busy ? "rate_limit_error" : refused ? "invalid_request_error" : "server_error",
                                      busy ? "server_busy" : "", c.error, ""}, keep_alive_);
      }
      // Mid-stream: the chunked body ends without its last chunk, which clients see as a
      // failed transfer rather than a short, valid file.
      close_after_writes_ = true;
      return flush();
    }
    if (media_.kind == MediaKind::Image) {
      // Nothing is written until every image is there; credit as the codes arrive.
      credit_.delivered(srv_.pipe.executor, tokens);
      if (!c.bytes.empty()) images_.push_back(base64_encode(c.bytes));
      if (!c.done) return;
      if (int(images_.size()) < media_.n) return begin_media_generation();
      json data = json::array();
      for (const std::string& b64 : images_) data.push_back({{"b64_json", b64}});
      return respond_json(200, json{{"created", created_}, {"data", data}, {"usage", media_usage()}}.dump());
    }
    if (!sse_started_) {
      sse_started_ = true;
      queue(std::string("HTTP/1.1 200 OK\r\nContent-Type: ") + codecs::audio_content_type(media_.audio_format) +
            "\r\nTransfer-Encoding: chunked\r\nTrailer: X-Tutti-Usage\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n");
    }
    if (!c.bytes.empty()) {
      char size[32];
      std::snprintf(size, sizeof size, "%zx\r\n", c.bytes.size());
      queue(size + std::string(c.bytes.begin(), c.bytes.end()) + "\r\n", tokens);
    } else if (!c.done) {
      if (out_.empty()) credit_.delivered(srv_.pipe.executor, tokens);
      else out_.back().tokens_through = tokens;
    }
    if (c.done) {
      queue("0\r\nX-Tutti-Usage: " + media_usage().dump() + "\r\n\r\n");
      close_after_writes_ = true;
      flush();
    }
  }

  // ---- video jobs: create, poll, retrieve (the create / poll / retrieve pattern)
  void create_video_job(const std::string& body);
  void video_job_request(const std::string& path, bool get);

  void respond_json(int status, std::string body) {
    bhttp::response<bhttp::string_body> res{bhttp::status(status), 11};
    res.set(bhttp::field::content_type, "application/json");
    res.body() = std::move(body);
    send(std::move(res), keep_alive_);
  }

  void respond_metrics() {
    const ServerMetrics& m = srv_.metrics;
    std::string b;
    auto counter = [&](const char* name, const char* help, uint64_t v, const char* type = "counter") {
      b += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " + std::to_string(v) + "\n";
    };
    counter("tutti_http_requests_total", "HTTP requests received.", m.requests);
    counter("tutti_http_errors_total", "Requests answered with an error.", m.errors);
    counter("tutti_prompt_tokens_total", "Prompt tokens of finished generations.", m.prompt_tokens);
    counter("tutti_completion_tokens_total", "Generated tokens of finished generations.", m.completion_tokens);
    counter("tutti_http_connections", "Open HTTP connections.", m.active_connections, "gauge");
    counter("tutti_realtime_barge_ins_total", "Responses cut short by the user speaking.", m.barge_ins);
    b += "# HELP tutti_realtime_speech_to_first_audio_seconds End of the user's speech (commit) to the first audio delta sent.\n"
         "# TYPE tutti_realtime_speech_to_first_audio_seconds histogram\n";
    m.speech_to_first_audio.render(b, "tutti_realtime_speech_to_first_audio_seconds", "");
    if (srv_.pipe.metrics) b += srv_.pipe.metrics->render();
    bhttp::response<bhttp::string_body> res{bhttp::status::ok, 11};
    res.set(bhttp::field::content_type, "text/plain; version=0.0.4");
    res.body() = std::move(b);
    send(std::move(res), keep_alive_);
  }

  void respond_error(const ApiError& e, bool keep_alive) {
    bhttp::response<bhttp::string_body> res{bhttp::status(e.status), 11};
    res.set(bhttp::field::content_type, "application/json");
    res.body() = e.body();
    send(std::move(res), keep_alive);
  }

  void send(bhttp::response<bhttp::string_body> res, bool keep_alive) {
    res.keep_alive(keep_alive);
    res.prepare_payload();
    auto sp = std::make_shared<bhttp::response<bhttp::string_body>>(std::move(res));
    bhttp::async_write(stream_, *sp, [self = shared_from_this(), sp, keep_alive](beast::error_code ec, size_t) {
      if (ec || !keep_alive) return self->close();
      self->read();
    });
  }

  // Raw writes for server-sent events, one at a time in order. A write that makes no
  // progress for write_timeout (a client that stopped reading) drops the connection.
  void queue(std::string data, int32_t tokens_through = -1) {
    out_.push_back({std::move(data), tokens_through});
    flush();
  }
  void flush() {
    if (writing_) return;
    if (out_.empty()) {
      if (close_after_writes_) close();
      return;
    }
    writing_ = true;
    stream_.expires_after(millis(srv_.cfg.write_timeout_s));
    net::async_write(stream_, net::buffer(out_.front().data), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) {  // the client went away or stalled: ~Session cancels the generation
        self->out_.clear();
        return self->close();
      }
      const int32_t through = self->out_.front().tokens_through;
      self->out_.pop_front();
      if (through >= 0 && self->generating_) self->credit_.delivered(self->srv_.pipe.executor, through);
      self->flush();
    });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  HttpServer::Impl& srv_;
  bool keep_alive_ = false;
  // The generation in flight on this connection (one at a time).
  ParsedRequest parsed_;
  int64_t request_id_ = 0;
  std::string id_, text_;
  long created_ = 0;
  int32_t prompt_tokens_ = 0, completion_tokens_ = 0;
  bool generating_ = false, sse_started_ = false, first_chunk_ = true;
  // The media answer in flight (speech, music, images): sse_started_ then means "headers sent".
  MediaRequest media_;
  std::vector<std::string> images_;
  int32_t media_prompt_tokens_ = 0, media_output_tokens_ = 0;
  sink_actor sink_;
  DeliveryCredit credit_;
  std::deque<Outgoing> out_;
  bool writing_ = false, close_after_writes_ = false;
};

// ---- video jobs: generation runs detached from any connection; clients poll the job and
// fetch the MP4 once it is completed. Jobs live in HttpServer::Impl::jobs, on the I/O thread.
class VideoJob : public std::enable_shared_from_this<VideoJob> {
 public:
  static constexpr int kMaxActive = 4;    // queued or in progress at once; more get 429
  static constexpr size_t kMaxKept = 64;  // finished jobs beyond this are forgotten, oldest first

  VideoJob(std::string id, MediaRequest req, executor_actor executor, long created)
      : id_(std::move(id)), req_(std::move(req)), executor_(std::move(executor)), created_(created) {}

  bool active() const { return status_ == "queued" || status_ == "in_progress"; }
  bool completed() const { return status_ == "completed"; }
  const std::vector<uint8_t>& content() const { return mp4_; }
  long created() const { return created_; }
  int64_t request_id() const { return req_.request.id; }
  void set_sink(sink_actor s) { sink_ = std::move(s); }

  json to_json() const {
    json j = {{"id", id_}, {"object", "video"}, {"model", req_.model}, {"status", status_}, {"progress", int(progress_ * 100)},
              {"created_at", created_}, {"seconds", json(req_.seconds).dump()},
              {"size", std::to_string(req_.out_width) + "x" + std::to_string(req_.out_height)}};
    if (!error_.empty()) j["error"] = {{"code", "generation_failed"}, {"message", error_}};
    if (!active())
      j["usage"] = {{"input_tokens", prompt_tokens_}, {"output_tokens", output_tokens_},
                    {"output_tokens_details", {{"video_tokens", output_tokens_}}}};
    return j;
  }

  // ---- the sink's posts (I/O thread)
  void on_prompt_tokens(int32_t) {
    if (status_ == "queued") status_ = "in_progress";
  }
  void on_refused(const std::string& message) { fail(message); }
  void on_delta(const text_delta&) {}
  void on_media(MediaChunk c, int32_t tokens, int32_t prompt_tokens) {
    credit_.delivered(executor_, tokens);  // the MP4 is kept in memory: nothing waits on a client
    prompt_tokens_ = prompt_tokens, output_tokens_ = tokens;
    mp4_.insert(mp4_.end(), c.bytes.begin(), c.bytes.end());
    const int frames_total = std::max(1, int(std::lround(req_.seconds * 4)));
    if (status_ == "queued") status_ = "in_progress";
    progress_ = std::min(0.99, double(c.frames) / frames_total);
    if (!c.error.empty()) return fail(c.error);
    if (c.done) status_ = "completed", progress_ = 1.0;
  }
  void cancel() {
    if (!active()) return;
    caf::anon_send<caf::message_priority::high>(executor_, cancel_atom::value, req_.request.id);
    fail("cancelled");
  }
  void start_credit() { credit_.start(req_.request.id); }

 private:
  void fail(const std::string& message) {
    status_ = "failed";
    error_ = message;
    mp4_.clear();
  }
  std::string id_;
  MediaRequest req_;
  executor_actor executor_;
  long created_;
  std::string status_ = "queued", error_;
  double progress_ = 0;
  std::vector<uint8_t> mp4_;
  int32_t prompt_tokens_ = 0, output_tokens_ = 0;
  DeliveryCredit credit_;
  sink_actor sink_;
};

void Session::on_media(MediaChunk c, int32_t tokens, int32_t prompt_tokens) { on_media_chunk(std::move(c), tokens, prompt_tokens); }

void Session::create_video_job(const std::string& body) {
  auto parsed = parse_media_request(MediaKind::Video, body, srv_.cfg.modalities, srv_.cfg.model_name, srv_.cfg.max_media_seconds);
  if (std::holds_alternative<ApiError>(parsed)) {
    srv_.metrics.errors++;
    return respond_error(std::get<ApiError>(parsed), keep_alive_);
  }
  int active = 0;
  for (auto& [id, job] : srv_.jobs) active += job->active();
  if (active >= VideoJob::kMaxActive) {
    srv_.metrics.errors++;
    return respond_error(ApiError{429, "rate_limit_error", "too_many_video_jobs",
                                  std::to_string(active) + " videos are already being generated; try again later", ""}, keep_alive_);
  }
  // Forget the oldest finished jobs beyond the limit.
  while (srv_.jobs.size() >= VideoJob::kMaxKept) {
    auto oldest = srv_.jobs.end();
    for (auto it = srv_.jobs.begin(); it != srv_.jobs.end(); ++it)
      if (!it->second->active() && (oldest == srv_.jobs.end() || it->second->created() < oldest->second->created())) oldest = it;
    if (oldest == srv_.jobs.end()) break;
    srv_.jobs.erase(oldest);
  }
  MediaRequest req = std::get<MediaRequest>(std::move(parsed));
  req.request.id = srv_.next_id++;
  req.request.seed = uint64_t(req.request.id);
  const std::string id = "video_" + std::to_string(req.request.id);
  const ModalityInfo* m = srv_.cfg.modalities.find(Modality::Video);
  auto job = std::make_shared<VideoJob>(id, req, srv_.pipe.executor, unix_now());
  job->start_credit();
  srv_.jobs[id] = job;
  job->set_sink(spawn_generation(srv_.system, srv_.ioc, srv_.pipe.encoder, req.request, std::weak_ptr<VideoJob>(job),
                                 std::shared_ptr<MediaOutput>(make_video_output(req.out_width, req.out_height, m->frame_rate))));
  respond_json(200, job->to_json().dump());
}

void Session::video_job_request(const std::string& path, bool get) {
  std::string rest = path.substr(std::string("/v1/videos/").size());
  const bool content = rest.size() > 8 && rest.compare(rest.size() - 8, 8, "/content") == 0;
  if (content) rest.resize(rest.size() - 8);
  auto it = srv_.jobs.find(rest);
  if (it == srv_.jobs.end())
    return respond_error(ApiError{404, "invalid_request_error", "video_not_found", "no video job '" + rest + "'", ""}, keep_alive_);
  VideoJob& job = *it->second;
  if (!get) {  // DELETE: cancel if running, and forget it
    job.cancel();
    json j = job.to_json();
    j["deleted"] = true;
    srv_.jobs.erase(it);
    return respond_json(200, j.dump());
  }
  if (!content) return respond_json(200, job.to_json().dump());
  if (!job.completed())
    return respond_error(ApiError{400, "invalid_request_error", "video_not_ready", "video '" + rest + "' is " + job.to_json()["status"].get<std::string>(), ""}, keep_alive_);
  bhttp::response<bhttp::string_body> res{bhttp::status::ok, 11};
  res.set(bhttp::field::content_type, "video/mp4");
  res.body().assign(job.content().begin(), job.content().end());
  send(std::move(res), keep_alive_);
}

// ---- /v1/realtime: the OpenAI Realtime event grammar for text over a WebSocket.
// Client events: session.update, conversation.item.create, response.create, response.cancel.
// Server events: session.created / .updated, conversation.item.created, response.created,
// response.output_text.delta / .done, response.done (with usage), and non-fatal error events
// that carry the client's event_id. One response at a time per session.
class RealtimeSession : public std::enable_shared_from_this<RealtimeSession> {
 public:
  RealtimeSession(tcp::socket socket, HttpServer::Impl& srv)
      : ws_(std::move(socket)), srv_(srv), max_tokens_(std::min(256, srv.cfg.max_tokens)) {
    ++srv_.metrics.active_connections;
    apply_socket_options(ws_.next_layer().socket(), srv_.cfg);
  }
  ~RealtimeSession() {
    --srv_.metrics.active_connections;
    if (generating_) caf::anon_send<caf::message_priority::high>(srv_.pipe.executor, cancel_atom::value, request_id_);
    if (sink_) caf::anon_send_exit(sink_, caf::exit_reason::user_shutdown);
  }

  void start(bhttp::request<bhttp::string_body> req) {
    ws_.read_message_max(srv_.cfg.max_body_bytes);
    // Half-open peers: after read_timeout without traffic the server pings, and closes the
    // session if the peer stays silent (a realtime client may idle, but it answers pings).
    beast::websocket::stream_base::timeout timeouts;
    timeouts.handshake_timeout = millis(srv_.cfg.read_timeout_s);
    timeouts.idle_timeout = millis(srv_.cfg.read_timeout_s);
    timeouts.keep_alive_pings = true;
    ws_.set_option(timeouts);
    ws_.async_accept(req, [self = shared_from_this()](beast::error_code ec) {
      if (ec) return;
      self->session_id_ = "sess_" + std::to_string(self->srv_.next_id++);
      self->emit({{"type", "session.created"}, {"session", self->session_json()}});
      self->read();
    });
  }

  void on_prompt_tokens(int32_t) {}

  // An audio answer's deltas: the sink already turned samples into the session's output wire
  // format (base64 text in chunk.bytes).
  void on_media(MediaChunk c, int32_t tokens, int32_t prompt_tokens) {
    if (!generating_) return;
    if (!c.bytes.empty() && !barged_in_) {  // after a barge-in nothing more is sent
      if (audio_sent_samples_ == 0) {
        first_audio_at_ = std::chrono::steady_clock::now();
        if (committed_at_) {  // latency of a voice turn: end of speech to first audio out
          srv_.metrics.speech_to_first_audio.observe(std::chrono::duration<double>(*first_audio_at_ - *committed_at_).count());
          committed_at_.reset();
        }
      }
      audio_sent_samples_ += int64_t(c.frames);  // frames carries samples for wire audio
      emit({{"type", "response.output_audio.delta"}, {"response_id", response_id_}, {"item_id", item_id_}, {"output_index", 0},
            {"content_index", 0}, {"delta", std::string(c.bytes.begin(), c.bytes.end())}}, tokens);
    } else if (!c.done) {
      if (out_.empty()) credit_.delivered(srv_.pipe.executor, tokens);
      else out_.back().tokens_through = tokens;
    }
    if (!c.done && c.error.empty()) return;
    generating_ = false;
    const bool cancelled = c.error == "cancelled";
    if (!c.error.empty() && !cancelled) error("server_error", "", c.error, response_event_id_);
    emit({{"type", "response.output_audio.done"}, {"response_id", response_id_}, {"item_id", item_id_}, {"output_index", 0}, {"content_index", 0}});
    emit({{"type", "response.output_audio_transcript.done"}, {"response_id", response_id_}, {"item_id", item_id_}, {"output_index", 0},
          {"content_index", 0}, {"transcript", ""}});
    if (cancelled && barged_in_) {
      // Barge-in: tell the client how much of the answer could have been heard — what was
      // sent, but no more than the time since the first audio went out.
      const double elapsed = first_audio_at_ ? std::chrono::duration<double>(std::chrono::steady_clock::now() - *first_audio_at_).count() : 0;
      const int64_t played_ms = std::min<int64_t>(audio_sent_samples_ * 1000 / 24000, int64_t(elapsed * 1000));
      emit({{"type", "conversation.item.truncated"}, {"item_id", item_id_}, {"content_index", 0}, {"audio_end_ms", played_ms}});
    }
    barged_in_ = false;
    const std::string status = cancelled ? "cancelled" : !c.error.empty() ? "failed" : "completed";
    emit({{"type", "response.done"},
          {"response", {{"id", response_id_}, {"object", "realtime.response"}, {"status", status}, {"modalities", {"audio"}},
                        {"usage", {{"input_tokens", prompt_tokens}, {"output_tokens", tokens}, {"total_tokens", prompt_tokens + tokens},
                                   {"input_token_details", {{"text_tokens", std::max(0, prompt_tokens - input_audio_tokens_)},
                                                            {"audio_tokens", input_audio_tokens_}}},
                                   {"output_token_details", {{"text_tokens", 0}, {"audio_tokens", tokens}}}}}}}});
  }
  void on_refused(const std::string& message) {
    generating_ = false;
    error("invalid_request_error", "", message, response_event_id_);
    finish_response("failed", 0, 0);
  }
  void on_delta(const text_delta& d) {
    if (!generating_) return;
    if (!d.text.empty()) {  // tokens whose text is held back produce no event
      text_ += d.text;
      emit({{"type", "response.output_text.delta"}, {"response_id", response_id_}, {"item_id", item_id_}, {"output_index", 0},
            {"content_index", 0}, {"delta", d.text}}, d.completion_tokens);
    } else if (d.finish_reason.empty()) {
      if (out_.empty()) credit_.delivered(srv_.pipe.executor, d.completion_tokens);
      else out_.back().tokens_through = d.completion_tokens;
    }
    if (d.finish_reason.empty()) return;
    generating_ = false;
    if (d.finish_reason == "error") error("server_error", "", d.error, response_event_id_);
    emit({{"type", "response.output_text.done"}, {"response_id", response_id_}, {"item_id", item_id_}, {"output_index", 0},
          {"content_index", 0}, {"text", text_}});
    if (d.finish_reason != "error" && d.finish_reason != "cancelled")
      conversation_.push_back({"assistant", text_, {}});
    const std::string status = d.finish_reason == "cancelled" ? "cancelled" : d.finish_reason == "error" ? "failed"
                               : d.finish_reason == "length" ? "incomplete" : "completed";
    finish_response(status, d.prompt_tokens, d.completion_tokens);
  }

 private:
  json session_json() const {
    json td = nullptr;
    if (vad_config_)
      td = {{"type", "server_vad"}, {"threshold", vad_config_->threshold}, {"prefix_padding_ms", vad_config_->prefix_padding_ms},
            {"silence_duration_ms", vad_config_->silence_duration_ms}, {"create_response", auto_response_}};
    return {{"id", session_id_}, {"object", "realtime.session"}, {"model", srv_.cfg.model_name}, {"modalities", modalities_},
            {"instructions", instructions_}, {"temperature", temperature_}, {"max_response_output_tokens", max_tokens_},
            {"input_audio_format", audio_wire_name(in_wire_)}, {"output_audio_format", audio_wire_name(out_wire_)},
            {"turn_detection", td}};
  }

  bool has_audio() const { return srv_.pipe.codecs && srv_.pipe.codecs->info(Modality::Audio); }

  // ---- input audio: buffered, voice-detected, encoded to audio tokens as it arrives
  void append_audio(const json& ev, const std::string& event_id) {
    if (!has_audio()) return error("invalid_request_error", "audio_not_supported", "this model has no audio modality", event_id);
    if (!ev.contains("audio") || !ev["audio"].is_string())
      return error("invalid_request_error", "missing_audio", "'audio' must be a base64 string", event_id);
    auto samples = decode_wire_audio(ev["audio"].get<std::string>(), in_wire_);
    if (!samples) return error("invalid_request_error", "invalid_audio", samples.error().message, event_id);
    std::vector<float> pcm = resample_linear(*samples, audio_wire_rate(in_wire_), 24000);
    if (input_samples_ + int64_t(pcm.size()) > int64_t(24000) * 15 * 60)
      return error("invalid_request_error", "input_audio_buffer_full", "the input audio buffer holds at most 15 minutes", event_id);
    // Codes of every finished 20 ms frame (one per stage), kept until commit or clear.
    const auto codes = audio_encoder().push(pcm);
    input_codes_.insert(input_codes_.end(), codes.begin(), codes.end());
    input_samples_ += int64_t(pcm.size());
    if (!vad_config_) return;
    for (const auto& e : vad_->push(pcm)) {
      if (e.started) {
        speech_start_ms_ = e.at_ms;
        speech_item_id_ = "item_" + std::to_string(srv_.next_id++);
        emit({{"type", "input_audio_buffer.speech_started"}, {"audio_start_ms", e.at_ms}, {"item_id", speech_item_id_}});
        if (generating_) {  // barge-in: the user talks over the answer
          barged_in_ = true;
          srv_.metrics.barge_ins++;
          caf::anon_send<caf::message_priority::high>(srv_.pipe.executor, cancel_atom::value, request_id_);
        }
      } else {
        emit({{"type", "input_audio_buffer.speech_stopped"}, {"audio_end_ms", e.at_ms}, {"item_id", speech_item_id_}});
        commit_audio(std::max<int64_t>(0, speech_start_ms_ - vad_config_->prefix_padding_ms), e.at_ms, "");
        if (auto_response_ && !generating_) start_response(json::object(), "");
      }
    }
  }

  codecs::AudioEncoder& audio_encoder() {
    if (!encoder_) {
      const ModalityInfo* m = srv_.pipe.codecs->info(Modality::Audio);
      encoder_ = std::make_unique<codecs::AudioEncoder>(int(m->frame_size), srv_.pipe.codecs->books(Modality::Audio));
    }
    return *encoder_;
  }

  // The buffered audio from `from_ms` to `to_ms` becomes a user item of audio tokens.
  void commit_audio(int64_t from_ms, int64_t to_ms, const std::string& event_id) {
    const ModalityInfo& m = *srv_.pipe.codecs->info(Modality::Audio);
    const int64_t frame_ms = int64_t(m.frame_size) * 1000 / m.sample_rate, stages = m.num_stages;
    // Encoder frame j (j >= 1) covers input [(j-1) N, (j+1) N): frames from from_ms on.
    const int64_t first = std::clamp<int64_t>(from_ms / frame_ms, 0, int64_t(input_codes_.size()) / stages);
    const int64_t last = std::clamp<int64_t>(to_ms / frame_ms + 1, first, int64_t(input_codes_.size()) / stages);
    if (last - first < 5) {
      error("invalid_request_error", "input_audio_buffer_commit_empty", "the buffer holds less than 100 ms of audio", event_id);
      return clear_audio();
    }
    std::vector<int32_t> ids = {int32_t(m.begin_token)};
    const auto tokens = codecs::codes_to_tokens(m, std::span<const int32_t>(input_codes_.data() + first * stages, size_t((last - first) * stages)));
    ids.insert(ids.end(), tokens.begin(), tokens.end());
    ids.push_back(int32_t(m.end_token));
    const std::string id = speech_item_id_.empty() ? "item_" + std::to_string(srv_.next_id++) : speech_item_id_;
    emit({{"type", "input_audio_buffer.committed"}, {"previous_item_id", last_item_id_.empty() ? json(nullptr) : json(last_item_id_)}, {"item_id", id}});
    conversation_.push_back({"user", "", std::move(ids)});
    last_item_id_ = id;
    emit({{"type", "conversation.item.created"},
          {"item", {{"id", id}, {"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_audio"}, {"transcript", nullptr}}}}}}});
    committed_at_ = std::chrono::steady_clock::now();
    speech_item_id_.clear();
    clear_audio();
  }

  void clear_audio() {
    input_codes_.clear();
    input_samples_ = 0;
    encoder_.reset();
    if (vad_) vad_->reset();
  }

  // The conversation as a prompt: text items through the chat template, audio items as
  // spliced token ids (media markers).
  text_request conversation_request() const {
    std::vector<ChatMessage> messages;
    text_request r;
    if (!instructions_.empty()) messages.push_back({"system", instructions_});
    for (const Item& it : conversation_) {
      if (it.ids.empty()) {
        std::string clean = it.text;  // marker bytes from a client are not markers
        clean.erase(std::remove_if(clean.begin(), clean.end(), [](char c) { return c == '\x1e' || c == '\x1f'; }), clean.end());
        messages.push_back({it.role, clean});
      } else {
        messages.push_back({it.role, "\x1e" + std::to_string(r.media_parts.size()) + "\x1f"});
        r.media_parts.push_back(it.ids);
      }
    }
    r.prompt = format_chat(srv_.cfg.chat_template, messages);
    return r;
  }

  void read() {
    ws_.async_read(in_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return;  // closed or protocol error: the session ends (~RealtimeSession cancels)
      const std::string text = beast::buffers_to_string(self->in_.data());
      self->in_.consume(self->in_.size());
      try {
        self->handle(text, self->ws_.got_text());
      } catch (const json::exception& e) {  // a field of the wrong type: the client's mistake, not a crash
        self->error("invalid_request_error", "invalid_value", std::string("a field has the wrong type: ") + e.what(), "");
      }
      self->read();
    });
  }

  void handle(const std::string& text, bool is_text) {
    if (!is_text) return error("invalid_request_error", "binary_not_supported", "binary messages are not supported yet", "");
    json ev = json::parse(text, nullptr, false);
    if (ev.is_discarded() || !ev.is_object()) return error("invalid_request_error", "invalid_json", "the message is not a JSON object", "");
    const std::string event_id = ev.value("event_id", "");
    if (!ev.contains("type") || !ev["type"].is_string()) return error("invalid_request_error", "missing_type", "the event has no 'type'", event_id);
    const std::string type = ev["type"];
    if (type == "session.update") {
      const json s = ev.value("session", json::object());
      if (!s.is_object()) return error("invalid_request_error", "invalid_value", "'session' must be an object", event_id);
      if (s.contains("instructions") && s["instructions"].is_string()) instructions_ = s["instructions"];
      if (s.contains("temperature") && s["temperature"].is_number()) temperature_ = s["temperature"];
      if (s.contains("max_response_output_tokens") && s["max_response_output_tokens"].is_number_integer()) {
        max_tokens_ = std::clamp(int(s["max_response_output_tokens"]), 1, srv_.cfg.max_tokens);
        max_tokens_set_ = true;
      }
      if (auto e = update_audio_settings(s)) return error("invalid_request_error", "invalid_value", *e, event_id);
      return emit({{"type", "session.updated"}, {"session", session_json()}});
    }
    if (type == "conversation.item.create") {
      const json item = ev.value("item", json::object());
      const std::string role = item.value("role", "user");
      if (!item.is_object() || item.value("type", "message") != "message" || (role != "user" && role != "system" && role != "assistant"))
        return error("invalid_request_error", "invalid_item", "only message items with role user, system or assistant are supported", event_id);
      std::string content;
      for (const json& part : item.value("content", json::array()))
        if (part.is_object() && (part.value("type", "") == "input_text" || part.value("type", "") == "text" || part.value("type", "") == "output_text"))
          content += part.value("text", "");
      if (content.empty()) return error("invalid_request_error", "empty_item", "the item has no text content", event_id);
      conversation_.push_back({role, content, {}});
      const std::string id = item.value("id", "item_" + std::to_string(srv_.next_id++));
      last_item_id_ = id;
      return emit({{"type", "conversation.item.created"},
                   {"item", {{"id", id}, {"type", "message"}, {"role", role}, {"content", {{{"type", "input_text"}, {"text", content}}}}}}});
    }
    if (type == "response.create") return start_response(ev.value("response", json::object()), event_id);
    if (type == "input_audio_buffer.append") return append_audio(ev, event_id);
    if (type == "input_audio_buffer.commit") {
      if (!has_audio()) return error("invalid_request_error", "audio_not_supported", "this model has no audio modality", event_id);
      return commit_audio(0, input_samples_ * 1000 / 24000, event_id);
    }
    if (type == "input_audio_buffer.clear") {
      clear_audio();
      return emit({{"type", "input_audio_buffer.cleared"}});
    }
    if (type == "response.cancel") {
      if (!generating_) return error("invalid_request_error", "response_cancel_not_active", "no response is in progress", event_id);
      caf::anon_send<caf::message_priority::high>(srv_.pipe.executor, cancel_atom::value, request_id_);
      return;
    }
    error("invalid_request_error", "unknown_event", "unknown event type '" + type + "'", event_id);
  }

  void start_response(const json& resp, const std::string& event_id) {
    if (generating_) return error("invalid_request_error", "conversation_already_has_active_response", "a response is already in progress", event_id);
    if (conversation_.empty() && instructions_.empty())
      return error("invalid_request_error", "empty_conversation", "add an item before asking for a response", event_id);
    if (!resp.is_object()) return error("invalid_request_error", "invalid_value", "'response' must be an object", event_id);
    text_request r = conversation_request();
    request_id_ = srv_.next_id++;
    r.id = request_id_;
    r.temperature = temperature_;
    std::vector<std::string> modalities = modalities_;
    for (const char* key : {"modalities", "output_modalities"})
      if (resp.contains(key) && resp[key].is_array()) {
        modalities.clear();
        for (const json& x : resp[key])
          if (x.is_string()) modalities.push_back(x);
      }
    const bool audio = std::count(modalities.begin(), modalities.end(), "audio") > 0;
    if (audio && !has_audio()) return error("invalid_request_error", "audio_not_supported", "this model has no audio modality", event_id);
    input_audio_tokens_ = 0;
    for (const auto& part : r.media_parts) input_audio_tokens_ += int32_t(part.size());
    if (audio) {
      // An audio answer: up to max_response_output_tokens codes when set, else 10 seconds.
      r.modality = "audio";
      r.max_tokens = max_tokens_set_ ? max_tokens_ : 2000;
      r.temperature = std::max(r.temperature, 0.7f);  // greedy decoding repeats one code
      r.request_class = "realtime";  // paced against its playback clock
      r.tokens_per_second = srv_.pipe.codecs->info(Modality::Audio)->tokens_per_second();
    } else {
      r.max_tokens = max_tokens_;
    }
    if (resp.contains("tutti"))  // extension: class, rate, watermarks
      if (auto e = apply_tutti_extension(resp["tutti"], r)) return error(e->type, "invalid_value", e->message, event_id);
    response_id_ = "resp_" + std::to_string(request_id_);
    item_id_ = "item_" + std::to_string(srv_.next_id++);
    response_event_id_ = event_id;
    text_.clear();
    audio_sent_samples_ = 0;
    first_audio_at_.reset();
    generating_ = true;
    credit_.start(request_id_);
    emit({{"type", "response.created"}, {"response", {{"id", response_id_}, {"object", "realtime.response"}, {"status", "in_progress"}, {"modalities", modalities}}}});
    std::shared_ptr<MediaOutput> out;
    if (audio) out = make_wire_audio_output(out_wire_);
    sink_ = spawn_generation(srv_.system, srv_.ioc, srv_.pipe.encoder, r, std::weak_ptr<RealtimeSession>(shared_from_this()), out);
  }

  // session.update's audio fields, in both spellings clients use; a message on a bad value.
  std::optional<std::string> update_audio_settings(const json& s) {
    auto wire = [&](const json& v, AudioWire& out, const char* name) -> std::optional<std::string> {
      auto w = parse_audio_wire(v);
      if (!w) return std::string("'") + name + "' must be pcm16, g711_ulaw or g711_alaw (or audio/pcm at 24000, audio/pcmu, audio/pcma)";
      out = *w;
      return std::nullopt;
    };
    if (s.contains("input_audio_format"))
      if (auto e = wire(s["input_audio_format"], in_wire_, "input_audio_format")) return e;
    if (s.contains("output_audio_format"))
      if (auto e = wire(s["output_audio_format"], out_wire_, "output_audio_format")) return e;
    const json audio = s.value("audio", json::object());
    if (audio.is_object()) {
      if (audio.contains("input") && audio["input"].is_object() && audio["input"].contains("format"))
        if (auto e = wire(audio["input"]["format"], in_wire_, "audio.input.format")) return e;
      if (audio.contains("output") && audio["output"].is_object() && audio["output"].contains("format"))
        if (auto e = wire(audio["output"]["format"], out_wire_, "audio.output.format")) return e;
    }
    for (const char* key : {"modalities", "output_modalities"})
      if (s.contains(key)) {
        if (!s[key].is_array()) return std::string("'") + key + "' must be an array";
        std::vector<std::string> m;
        for (const json& x : s[key]) {
          if (!x.is_string() || (x != "text" && x != "audio")) return std::string("'") + key + "' holds text and audio only";
          m.push_back(x);
        }
        if (m.empty()) return std::string("'") + key + "' must not be empty";
        if (std::count(m.begin(), m.end(), "audio") && !has_audio()) return std::string("this model has no audio modality");
        modalities_ = m;
      }
    json td = s.contains("turn_detection") ? s["turn_detection"] : audio.value("input", json::object()).value("turn_detection", json("keep"));
    if (td.is_null()) {
      vad_config_.reset();
    } else if (td.is_object()) {
      if (td.value("type", "server_vad") != "server_vad") return std::string("turn_detection.type must be server_vad (or null)");
      VadConfig c;
      c.threshold = td.value("threshold", c.threshold);
      c.prefix_padding_ms = td.value("prefix_padding_ms", c.prefix_padding_ms);
      c.silence_duration_ms = td.value("silence_duration_ms", c.silence_duration_ms);
      if (c.threshold < 0 || c.threshold > 1 || c.prefix_padding_ms < 0 || c.silence_duration_ms < 20 || c.silence_duration_ms > 10000)
        return std::string("turn_detection: threshold 0..1, prefix_padding_ms >= 0, silence_duration_ms 20..10000");
      auto_response_ = td.value("create_response", true);
      vad_config_ = c;
      vad_ = std::make_unique<VoiceActivityDetector>(c);
    } else if (!(td.is_string() && td == "keep")) {
      return std::string("'turn_detection' must be an object or null");
    }
    return std::nullopt;
  }

  void finish_response(const std::string& status, int prompt_tokens, int completion_tokens) {
    emit({{"type", "response.done"},
          {"response", {{"id", response_id_}, {"object", "realtime.response"}, {"status", status},
                        {"usage", {{"input_tokens", prompt_tokens}, {"output_tokens", completion_tokens},
                                   {"total_tokens", prompt_tokens + completion_tokens}}}}}});
  }

  void error(const std::string& type, const std::string& code, const std::string& message, const std::string& event_id) {
    srv_.metrics.errors++;
    json e = {{"type", type}, {"message", message}};
    e["code"] = code.empty() ? json(nullptr) : json(code);
    e["event_id"] = event_id.empty() ? json(nullptr) : json(event_id);
    emit({{"type", "error"}, {"error", e}});
  }

  // Queues an event for the client. Generated text is bounded by credit (the client window);
  // what else a client can make the server say is one event per message it sends, so a client
  // that sends without reading is closed once max_pending_events pile up.
  void emit(json event, int32_t tokens_through = -1) {
    if (closing_) return;
    event["event_id"] = "event_" + std::to_string(srv_.next_id++);
    if (out_.size() >= srv_.cfg.max_pending_events) {
      closing_ = true;
      out_.clear();
      beast::get_lowest_layer(ws_).close();  // its write never completes: cut the socket
      return;
    }
    out_.push_back({event.dump(), tokens_through});
    flush();
  }
  void flush() {
    if (writing_ || out_.empty()) return;
    writing_ = true;
    ws_.text(true);
    ws_.async_write(net::buffer(out_.front().data), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) return self->out_.clear();
      const int32_t through = self->out_.front().tokens_through;
      self->out_.pop_front();
      if (through >= 0 && self->generating_) self->credit_.delivered(self->srv_.pipe.executor, through);
      self->flush();
    });
  }

  beast::websocket::stream<beast::tcp_stream> ws_;
  HttpServer::Impl& srv_;
  beast::flat_buffer in_;
  std::deque<Outgoing> out_;
  DeliveryCredit credit_;
  bool writing_ = false, closing_ = false;
  std::string session_id_, instructions_;
  float temperature_ = 0.8f;  // the Realtime API's default
  int max_tokens_;
  bool max_tokens_set_ = false;
  struct Item {
    std::string role, text;
    std::vector<int32_t> ids;  // audio the user spoke, as tokens (then text is empty)
  };
  std::vector<Item> conversation_;
  // Audio settings and input state.
  std::vector<std::string> modalities_ = {"text"};
  AudioWire in_wire_ = AudioWire::Pcm16, out_wire_ = AudioWire::Pcm16;
  std::optional<VadConfig> vad_config_ = VadConfig{};
  bool auto_response_ = true;
  std::unique_ptr<VoiceActivityDetector> vad_ = std::make_unique<VoiceActivityDetector>(VadConfig{});
  std::unique_ptr<codecs::AudioEncoder> encoder_;
  std::vector<int32_t> input_codes_;
  int64_t input_samples_ = 0, speech_start_ms_ = 0, audio_sent_samples_ = 0;
  int32_t input_audio_tokens_ = 0;
  std::string speech_item_id_, last_item_id_;
  std::optional<std::chrono::steady_clock::time_point> committed_at_, first_audio_at_;
  bool barged_in_ = false;
  bool generating_ = false;
  int64_t request_id_ = 0;
  std::string response_id_, item_id_, response_event_id_, text_;
  sink_actor sink_;
};

void start_realtime(tcp::socket socket, bhttp::request<bhttp::string_body> req, HttpServer::Impl& srv) {
  std::make_shared<RealtimeSession>(std::move(socket), srv)->start(std::move(req));
}

void HttpServer::Impl::accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (stopped) return;
    if (!ec) std::make_shared<Session>(std::move(socket), *this)->start();
    accept();
  });
}

HttpServer::HttpServer(caf::actor_system& system, PipelineHandles pipeline, ServerConfig config)
    : impl_(std::make_unique<Impl>(system, std::move(pipeline), std::move(config), metrics_)) {}

HttpServer::~HttpServer() { stop(); }

Expected<uint16_t> HttpServer::start() {
  beast::error_code ec;
  const auto address = net::ip::make_address(impl_->cfg.host, ec);
  if (ec) return Error{"listen address '" + impl_->cfg.host + "' is invalid: " + ec.message()};
  tcp::endpoint ep{address, impl_->cfg.port};
  impl_->acceptor.open(ep.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(ep, ec);
  if (!ec) impl_->acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return Error{"cannot listen on " + impl_->cfg.host + ":" + std::to_string(impl_->cfg.port) + ": " + ec.message()};
  const uint16_t port = impl_->acceptor.local_endpoint().port();
  impl_->accept();
  impl_->thread = std::thread([this] { impl_->ioc.run(); });
  return port;
}

void HttpServer::stop() {
  if (!impl_ || impl_->stopped.exchange(true)) return;
  net::post(impl_->ioc, [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
    impl_->ioc.stop();
  });
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace tutti::http
