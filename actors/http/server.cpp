// The HTTP front door: one Session per connection (completions with SSE, media endpoints,
// video jobs, /metrics, /health, /v1/models; an upgrade hands the socket to a Realtime
// session), and the HttpServer that accepts connections.
#include "actors/http/server.hpp"
#include "actors/http/session_support.hpp"

namespace tutti::http {

extern const char* const kWebClientHtml;  // web_client.cpp, generated from web/index.html

using namespace detail;

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
    end_usage("cancelled", "the client went away or the server stopped");
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
  void on_prompt_tokens(int32_t n) {
    prompt_tokens_ = n;
    if (usage_.tokens_in.empty()) usage_.tokens_in["text"] = n;  // media answers add their own
  }
  void on_refused(const std::string& message) {
    generating_ = false;
    srv_.metrics.errors++;
    end_usage("failed", message);
    respond_error(ApiError{400, "invalid_request_error", "", message, ""}, keep_alive_);
  }
  void on_delta(const text_delta& d) {
    if (!generating_) return;
    completion_tokens_ = d.completion_tokens;
    if (usage_.first_output_s < 0 && d.completion_tokens > 0) usage_.first_output_s = HttpServer::Impl::unix_seconds() - usage_.started_at;
    const bool final_delta = !d.finish_reason.empty();
    if (final_delta) {
      generating_ = false;
      srv_.metrics.completion_tokens += uint64_t(d.completion_tokens);
      srv_.metrics.prompt_tokens += uint64_t(d.prompt_tokens);
      usage_.tokens_in["text"] = d.prompt_tokens;
      usage_.tokens_out["text"] = d.completion_tokens;
      end_usage(outcome_of(d.finish_reason), d.error);
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
  // Starts the account of a generation producing `modality`: refused (429, or 503 while
  // shutting down) with a record when the key's limits say so.
  bool begin_usage(const std::string& modality, const std::string& request_class) {
    UsageRecord u;
    u.request_id = "http-" + std::to_string(srv_.next_id++);
    u.key = key_, u.endpoint = endpoint_, u.request_class = request_class;
    u.started_at = HttpServer::Impl::unix_seconds();
    if (auto refusal = srv_.admit(key_, modality, true)) {
      u.outcome = "refused", u.error = refusal->code;
      srv_.account(u);
      srv_.metrics.errors++;
      respond_error(refusal_error(*refusal), keep_alive_);
      return false;
    }
    usage_ = std::move(u);
    accounted_ = false;
    hold_ = Hold(srv_, key_, true, true);
    return true;
  }
  // Ends it: the record (before the last bytes go out), the hold released. Once.
  void end_usage(const std::string& outcome, const std::string& error = "") {
    if (accounted_) return;
    accounted_ = true;
    usage_.outcome = outcome, usage_.error = error;
    srv_.account(usage_);
    hold_.release();
  }
  static std::string outcome_of(const std::string& finish_reason) {
    if (finish_reason == "stop") return "completed";
    if (finish_reason == "length") return "incomplete";
    if (finish_reason == "cancelled") return "cancelled";
    return "failed";
  }

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
    // Open to all: the health check, and the browser page (static; its WebSocket presents
    // the key like any client).
    if (path == "/health" && get) return respond_json(200, R"({"status":"ok"})");
    if ((path == "/" || path == "/index.html") && get) {
      bhttp::response<bhttp::string_body> res{bhttp::status::ok, 11};
      res.set(bhttp::field::content_type, "text/html; charset=utf-8");
      res.body() = kWebClientHtml;
      return send(std::move(res), keep_alive_);
    }
    // Everything else needs a key when keys are configured (a bearer token; browsers'
    // WebSockets put it in a subprotocol instead).
    std::string presented = ApiKeys::bearer(std::string(req[bhttp::field::authorization]));
    if (presented.empty() && path == "/v1/realtime")
      presented = ApiKeys::from_subprotocols(std::string(req[bhttp::field::sec_websocket_protocol]));
    auto key = srv_.authenticate(presented);
    if (!key) {
      srv_.metrics.errors++;
      return respond_error(ApiError{401, "invalid_request_error", "invalid_api_key",
                                    presented.empty() ? "an API key is required: Authorization: Bearer KEY" : "the API key is not valid", ""},
                           false);
    }
    key_ = *key;
    endpoint_ = path;
    if (path == "/v1/realtime") {
      if (!beast::websocket::is_upgrade(req))
        return respond_error(ApiError{400, "invalid_request_error", "", "/v1/realtime expects a WebSocket upgrade", ""}, false);
      // A WebSocket session is one of its key's concurrent sessions for as long as it lasts.
      if (auto refusal = srv_.admit(key_, "text", true)) {
        srv_.metrics.errors++;
        return respond_error(refusal_error(*refusal), false);
      }
      return start_realtime(stream_.release_socket(), std::move(req), srv_, key_);
    }
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
    if (path == "/v1/streams" && post) {
      auto [status, json_body] = stream_jobs_create(srv_, req.body(), key_);
      if (status != 200) srv_.metrics.errors++;
      return respond_json(status, std::move(json_body));
    }
    if (path.rfind("/v1/streams/", 0) == 0 && (get || req.method() == bhttp::verb::delete_)) {
      const std::string id = path.substr(std::string("/v1/streams/").size());
      auto [status, json_body] = get ? stream_jobs_get(srv_, id) : stream_jobs_delete(srv_, id);
      return respond_json(status, std::move(json_body));
    }
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
    if (!begin_usage("text", std::get<ParsedRequest>(parsed).request.request_class)) return;
    parsed_ = std::get<ParsedRequest>(std::move(parsed));
    usage_.model = parsed_.model;
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
  void start_media(MediaKind kind, const std::string& body) {
    auto parsed = parse_media_request(kind, body, srv_.cfg.modalities, srv_.cfg.model_name, srv_.cfg.max_media_seconds);
    if (std::holds_alternative<ApiError>(parsed)) {
      srv_.metrics.errors++;
      return respond_error(std::get<ApiError>(parsed), keep_alive_);
    }
    if (!begin_usage(std::get<MediaRequest>(parsed).request.modality, std::get<MediaRequest>(parsed).request.request_class)) return;
    media_ = std::get<MediaRequest>(std::move(parsed));
    usage_.model = media_.model;
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

  // Called on the I/O thread by the sink's posts, like on_delta (public for that; kept here
  // beside the rest of the media code).
 public:
  void on_media(MediaChunk c, int32_t tokens, int32_t prompt_tokens) {
    if (!generating_) return;
    if (usage_.first_output_s < 0 && !c.bytes.empty()) usage_.first_output_s = HttpServer::Impl::unix_seconds() - usage_.started_at;
    if (c.done) {
      generating_ = false;
      media_prompt_tokens_ += prompt_tokens;
      media_output_tokens_ += tokens;
      srv_.metrics.completion_tokens += uint64_t(tokens);
      srv_.metrics.prompt_tokens += uint64_t(prompt_tokens);
    }
    usage_.tokens_in = {{"text", media_prompt_tokens_ + (c.done ? 0 : prompt_tokens)}};
    usage_.tokens_out = {{media_.request.modality, media_output_tokens_ + (c.done ? 0 : tokens)}};
    if (!c.error.empty()) {
      generating_ = false;
      srv_.metrics.errors++;
      end_usage(c.error == "cancelled" ? "cancelled" : "failed", c.error);
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
      end_usage("completed");
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
      end_usage("completed");
      queue("0\r\nX-Tutti-Usage: " + media_usage().dump() + "\r\n\r\n");
      close_after_writes_ = true;
      flush();
    }
  }


 private:
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
    counter("tutti_realtime_speech_prefills_total", "Prefills of a user's speech started while they were still talking.", m.speech_prefills);
    counter("tutti_realtime_conversation_items_dropped_total", "Oldest realtime conversation items dropped to keep within max_conversation_tokens.",
            m.conversation_items_dropped);
    counter("tutti_auth_failures_total", "Requests refused for a missing or invalid API key.", m.auth_failures);
    counter("tutti_limit_refusals_total", "Requests refused by a key's limits (or while shutting down).", m.limit_refusals);
    counter("tutti_ledger_records_total", "Usage records committed to the ledger.", m.ledger_records);
    counter("tutti_ledger_errors_total", "Usage records the ledger could not commit.", m.ledger_errors);
    counter("tutti_generations_running", "Generations running (HTTP, realtime responses, jobs).", uint64_t(std::max<int64_t>(0, m.generations)), "gauge");
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
    if (e.retry_after_s > 0) res.set(bhttp::field::retry_after, std::to_string(int(std::ceil(e.retry_after_s))));
    if (e.status == 401) res.set(bhttp::field::www_authenticate, "Bearer");
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
  // Access and accounting: the key of the request in flight, its hold (generation count,
  // concurrent session), and its usage record, written once when it ends.
  std::string key_, endpoint_;
  Hold hold_;
  UsageRecord usage_;
  bool accounted_ = true;
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
  // Called once when the job ends (completed, failed or cancelled) with its usage record.
  void on_end(std::function<void(UsageRecord)> f) { on_end_ = std::move(f); }

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
    if (c.done) {
      status_ = "completed", progress_ = 1.0;
      end("completed", "");
    }
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
    end(message == "cancelled" ? "cancelled" : "failed", message);
  }
  void end(const std::string& outcome, const std::string& error) {
    if (!on_end_) return;
    UsageRecord r;
    r.request_id = id_;
    r.model = req_.model;
    r.endpoint = "/v1/videos";
    r.request_class = req_.request.request_class;
    r.started_at = double(created_);
    r.tokens_in["text"] = prompt_tokens_;
    r.tokens_out["video"] = output_tokens_;
    r.outcome = outcome, r.error = error;
    auto f = std::move(on_end_);
    on_end_ = nullptr;
    f(std::move(r));
  }
  std::function<void(UsageRecord)> on_end_;
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

void Session::create_video_job(const std::string& body) {
  auto parsed = parse_media_request(MediaKind::Video, body, srv_.cfg.modalities, srv_.cfg.model_name, srv_.cfg.max_media_seconds);
  if (std::holds_alternative<ApiError>(parsed)) {
    srv_.metrics.errors++;
    return respond_error(std::get<ApiError>(parsed), keep_alive_);
  }
  // A job refused before it starts has its record too, as every other request does.
  auto refuse = [&](const ApiError& e) {
    UsageRecord u;
    u.request_id = "http-" + std::to_string(srv_.next_id++);
    u.key = key_, u.endpoint = "/v1/videos", u.request_class = std::get<MediaRequest>(parsed).request.request_class;
    u.started_at = HttpServer::Impl::unix_seconds();
    u.outcome = "refused", u.error = e.code;
    srv_.account(std::move(u));
    srv_.metrics.errors++;
    respond_error(e, keep_alive_);
  };
  int active = 0;
  for (auto& [id, job] : srv_.jobs) active += job->active();
  if (active >= VideoJob::kMaxActive)
    return refuse(ApiError{429, "rate_limit_error", "too_many_video_jobs",
                           std::to_string(active) + " videos are already being generated; try again later", ""});
  // Forget the oldest finished jobs beyond the limit.
  while (srv_.jobs.size() >= VideoJob::kMaxKept) {
    auto oldest = srv_.jobs.end();
    for (auto it = srv_.jobs.begin(); it != srv_.jobs.end(); ++it)
      if (!it->second->active() && (oldest == srv_.jobs.end() || it->second->created() < oldest->second->created())) oldest = it;
    if (oldest == srv_.jobs.end()) break;
    srv_.jobs.erase(oldest);
  }
  if (auto refusal = srv_.admit(key_, "video", false)) return refuse(refusal_error(*refusal));
  MediaRequest req = std::get<MediaRequest>(std::move(parsed));
  req.request.id = srv_.next_id++;
  req.request.seed = uint64_t(req.request.id);
  const std::string id = "video_" + std::to_string(req.request.id);
  const ModalityInfo* m = srv_.cfg.modalities.find(Modality::Video);
  auto job = std::make_shared<VideoJob>(id, req, srv_.pipe.executor, unix_now());
  job->start_credit();
  // Accounted when it ends; a job counts as a running generation until then (drain waits).
  auto hold = std::make_shared<Hold>(srv_, key_, true, false);
  job->on_end([srv = &srv_, key = key_, hold](UsageRecord r) {
    r.key = key;
    srv->account(std::move(r));
    hold->release();
  });
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
  if (!impl_->cfg.ledger_path.empty() && !impl_->ledger) {
    auto ledger = UsageLedger::open(impl_->cfg.ledger_path, impl_->cfg.ledger_synchronous);
    if (!ledger) return ledger.error();
    impl_->ledger = std::move(ledger).value();
  }
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
  impl_->thread = std::thread([this] {
    // An exception escaping one session's handler ends that handler (its session is dropped
    // with it); it is said loudly and the I/O thread goes on serving everyone else.
    for (;;) {
      try {
        impl_->ioc.run();
        return;
      } catch (const std::exception& e) {
        impl_->metrics.errors++;
        std::fprintf(stderr, "tutti: a session failed on the I/O thread: %s\n", e.what());
      }
    }
  });
  return port;
}

void HttpServer::stop() {
  if (!impl_ || impl_->stopped.exchange(true)) return;
  net::post(impl_->ioc, [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
    stream_jobs_stop_all(*impl_);
    impl_->ioc.stop();
  });
  if (impl_->thread.joinable()) impl_->thread.join();
}

int HttpServer::drain(double seconds) {
  if (!impl_ || impl_->stopped) return 0;
  impl_->draining = true;
  // On the I/O thread: no new connections; WebSockets close once their response is done.
  net::post(impl_->ioc, [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
    for (auto& [id, go_away] : std::map<uint64_t, std::function<void()>>(impl_->on_drain)) go_away();
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                                   std::chrono::duration<double>(seconds));
  while (metrics_.generations > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const int cut = int(std::max<int64_t>(0, metrics_.generations.load()));
  // Let the last writes and close frames go out, then stop; sessions still running end as
  // cancelled (and are recorded) when the I/O context goes.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  stop();
  impl_.reset();  // every session's destructor has run: the ledger is complete
  return cut;
}

}  // namespace tutti::http
