// /v1/realtime: the WebSocket connection of a Realtime session. Its lifecycle (upgrade,
// timeouts, going away on drain), the framing (text events, binary messages), the queue of
// events to the client with the credit they carry, and dispatch of each client event to the
// session (session.cpp).
#include "actors/http/handlers/handlers.hpp"
#include "actors/http/realtime/open.hpp"
#include "actors/http/realtime/session.hpp"
#include "actors/http/routes.hpp"

namespace tutti::http {

namespace {

// `Stream`: PlainStream or TlsStream, the HTTP session's.
template <class Stream>
class RealtimeConnection final : public RealtimeLink, public std::enable_shared_from_this<RealtimeConnection<Stream>> {
 public:
  using std::enable_shared_from_this<RealtimeConnection<Stream>>::shared_from_this;
  using std::enable_shared_from_this<RealtimeConnection<Stream>>::weak_from_this;
  // `key`: the name of the key the client presented; the connection holds one of its
  // concurrent sessions (admitted before the upgrade) while it lasts.
  RealtimeConnection(Stream stream, ServerState& srv, std::string key)
      : ws_(std::move(stream)), srv_(srv), hold_(srv, key), session_(srv, *this, key) {
    ++srv_.metrics.active_connections;
    apply_socket_options(beast::get_lowest_layer(ws_).socket(), srv_.cfg);
  }
  ~RealtimeConnection() override {
    --srv_.metrics.active_connections;
    srv_.on_drain.erase(drain_id_);
  }

  // `request_id`: the upgrade's, answered as x-request-id on the 101.
  void start(const bhttp::request<bhttp::string_body>& req, const std::string& request_id) {
    ws_.read_message_max(srv_.cfg.max_body_bytes);
    // Half-open peers: after read_timeout without traffic the server pings, and closes the
    // session if the peer stays silent (a realtime client may idle, but it answers pings).
    beast::websocket::stream_base::timeout timeouts;
    timeouts.handshake_timeout = millis(srv_.cfg.read_timeout_s);
    timeouts.idle_timeout = millis(srv_.cfg.read_timeout_s);
    timeouts.keep_alive_pings = true;
    ws_.set_option(timeouts);
    // A browser that offers subprotocols (the key travels in one) needs one chosen back:
    // "realtime" when offered, never the key's.
    const std::string chosen = realtime::choose_subprotocol(req[bhttp::field::sec_websocket_protocol]);
    ws_.set_option(beast::websocket::stream_base::decorator([chosen, request_id](beast::websocket::response_type& res) {
      if (!chosen.empty()) res.set(bhttp::field::sec_websocket_protocol, chosen);
      res.set("x-request-id", request_id);
    }));
    // Clients still on the beta interface say so (OpenAI-Beta: realtime=v1); the rest get GA.
    dialect_ = std::string(req["OpenAI-Beta"]).find("realtime=v1") != std::string::npos
                   ? realtime::Dialect::Beta
                   : realtime::Dialect::Ga;
    drain_id_ = uint64_t(srv_.next_id++);
    srv_.on_drain[drain_id_] = [weak = weak_from_this()] {
      if (auto self = weak.lock()) self->go_away();
    };
    ws_.async_accept(req, [self = shared_from_this()](beast::error_code ec) {
      if (ec) return;
      self->session_.identify(realtime_id(self->srv_, "sess_"));
      self->session_.set_dialect(self->dialect_);
      self->emit(realtime::session_created(self->session_.session_json()));
      self->read();
    });
  }

  // ---- RealtimeLink
  // Queues an event for the client. Generated output is bounded by credit (the client
  // window); what else a client can make the server say is one event per message it sends,
  // so a client that sends without reading is closed once max_pending_events pile up.
  void emit(json event, int32_t tokens_through = -1) override {
    event["event_id"] = realtime_id(srv_, "event_");
    queue(event.dump(-1, ' ', false, json::error_handler_t::replace), tokens_through, false);  // generated text may hold a stray byte
  }
  void send_binary(std::string data, int32_t tokens_through) override { queue(std::move(data), tokens_through, true); }
  void tokens_without_bytes(int32_t tokens) override { out_.tokens_without_bytes(tokens); }
  void credit_to(std::weak_ptr<Generation> g) override { out_.credit_to(std::move(g)); }
  void error(const ApiError& e, const std::string& client_event_id) override {
    srv_.metrics.errors++;
    emit(e.realtime_event(client_event_id), -1);
  }
  void response_finished() override { flush(); }
  void off_thread(std::function<void()> work, std::function<void()> then) override {
    paused_ = true;
    net::post(srv_.media_pool, [self = shared_from_this(), work = std::move(work), then = std::move(then)]() mutable {
      try {
        work();
      } catch (const std::exception& e) {  // a bug: said, and the session goes on
        std::fprintf(stderr, "tutti: a realtime media job failed: %s\n", e.what());
      }
      net::post(self->srv_.ioc, [self, then = std::move(then)] {
        self->paused_ = false;
        then();
        if (!self->paused_) self->read();
      });
    });
  }
  void close_for_policy(const std::string& why) override {
    policy_close_ = why;
    flush();
  }

 private:
  // The server drains: close with "going away" once the response in flight is done and
  // every event is written (flush() closes then).
  void go_away() {
    going_away_ = true;
    flush();
  }

  void read() {
    ws_.async_read(in_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return;  // closed or protocol error: the connection ends (its response is cancelled)
      const std::string text = beast::buffers_to_string(self->in_.data());
      self->in_.consume(self->in_.size());
      try {
        self->dispatch(text, self->ws_.got_text());
      } catch (const json::exception& e) {  // a field of the wrong type: the client's mistake, not a crash
        self->error(ApiError{ErrorCode::invalid_request, std::string("a field has the wrong type: ") + e.what(), "", 0, "invalid_value"}, "");
      }
      if (!self->paused_) self->read();  // a media job in flight resumes reading when it is done
    });
  }

  void dispatch(const std::string& text, bool is_text) {
    if (!is_text) return session_.binary(text);
    auto parsed = realtime::parse_client_event(text);
    if (auto* e = std::get_if<realtime::EventError>(&parsed))
      return error(ApiError{ErrorCode::invalid_request, e->message, "", 0, e->code}, e->event_id);
    auto& ev = std::get<realtime::ClientEvent>(parsed);
    std::visit([&](auto& body) { session_.apply(body, ev.event_id); }, ev.body);
  }

  void queue(std::string data, int32_t tokens_through, bool binary) {
    if (closing_) return;
    // A client that does not read cannot be told (its socket takes nothing more): cut it.
    if (out_.size() >= srv_.cfg.max_pending_events || out_.bytes() + data.size() > srv_.cfg.max_pending_bytes) {
      closing_ = true;
      out_.clear();
      beast::get_lowest_layer(ws_).close();  // its write never completes: cut the socket
      return;
    }
    out_.push(std::move(data), tokens_through, binary);
    flush();
  }

  void flush() {
    if (writing_) return;
    if (out_.empty()) {
      if (policy_close_ && !closing_) {
        closing_ = true;
        ws_.async_close(beast::websocket::close_reason(beast::websocket::close_code::policy_error, *policy_close_),
                        [self = shared_from_this()](beast::error_code) {});
        return;
      }
      if (going_away_ && !session_.responding() && !closing_) {
        closing_ = true;
        ws_.async_close(beast::websocket::close_code::going_away, [self = shared_from_this()](beast::error_code) {});
      }
      return;
    }
    writing_ = true;
    ws_.binary(out_.front().binary);
    ws_.async_write(net::buffer(out_.front().data), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) return self->out_.clear();
      self->out_.written();
      self->flush();
    });
  }

  beast::websocket::stream<Stream> ws_;
  ServerState& srv_;
  SessionHold hold_;
  beast::flat_buffer in_;
  OutgoingQueue out_;
  bool writing_ = false, closing_ = false, going_away_ = false;
  bool paused_ = false;  // a media job of this session is on a worker: no client event is read
  std::optional<std::string> policy_close_;  // close with 1008 once the error event is written
  uint64_t drain_id_ = 0;
  realtime::Dialect dialect_ = realtime::Dialect::Ga;
  RealtimeSession session_;  // last: destroyed first (its response cancels and records)
};

}  // namespace

void handle_realtime_upgrade(HttpExchange& ex) {
  ServerState& srv = ex.server();
  if (!beast::websocket::is_upgrade(ex.request()))
    return ex.respond_error(invalid_request("/v1/realtime expects a WebSocket upgrade"));
  // The official clients name a model (or a transcription intent) in the query.
  const std::string_view target = ex.request().target();
  const ServedModel served = srv.models->served();
  if (auto model = query_param(target, "model"); model && !served.answers_to(*model)) return ex.respond_error(served.not_found(*model));
  if (query_param(target, "intent") || query_param(target, "call_id"))
    return ex.respond_error(invalid_request("this server has no transcription or SIP sessions on /v1/realtime; use /v1/audio/transcriptions", "intent"));
  // A voice session opens only while one more stream would fit the realtime capacity: a
  // client told "busy, retry in n s" now is better off than one whose every answer fails.
  // (Asked of the model that answers voice now: a fallback, while the default's audio is down.)
  auto voice = srv.models->route("", Modality::Audio, false);
  const ModelRoute* route = std::get_if<ModelRoute>(&voice);
  if (const ModalityInfo* audio = srv.cfg.modalities.find(Modality::Audio); audio && route && route->instance->pipe.admission) {
    const actors::PipelineHandles& pipe = route->instance->pipe;
    AdmissionRequest stream;
    stream.cls = RequestClass::Realtime;
    stream.max_new_tokens = int(audio->tokens_per_second() * 2);
    stream.tokens_per_second = audio->tokens_per_second();
    const AdmissionDecision d = pipe.admission->probe(stream, monotonic_seconds());
    if (d.outcome == AdmissionOutcome::Capacity) {
      if (pipe.metrics) pipe.metrics->voice_sessions_refused++;
      return ex.respond_error(ApiError{ErrorCode::busy, d.message, "", d.retry_after_s});
    }
  }
  // A WebSocket session is one of its key's concurrent sessions for as long as it lasts.
  if (auto refusal = srv.admit(ex.key(), Modality::Text, true))
    return ex.respond_error(ApiError{refusal->code, refusal->message, "", refusal->retry_after_s});
  ex.become_realtime();
}

void open_realtime(PlainStream stream, ServerState& srv, const std::string& key, const bhttp::request<bhttp::string_body>& upgrade,
                   const std::string& request_id) {
  std::make_shared<RealtimeConnection<PlainStream>>(std::move(stream), srv, key)->start(upgrade, request_id);
}
void open_realtime(TlsStream stream, ServerState& srv, const std::string& key, const bhttp::request<bhttp::string_body>& upgrade,
                   const std::string& request_id) {
  std::make_shared<RealtimeConnection<TlsStream>>(std::move(stream), srv, key)->start(upgrade, request_id);
}

}  // namespace tutti::http
