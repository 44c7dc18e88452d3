// The HTTP session: one per connection, on the I/O thread. It reads a request, finds its
// route, checks the key, and hands it to the endpoint's handler as an HttpExchange; it
// writes what the handler answers (whole responses, or streamed bytes with the credit they
// carry). Routing and socket I/O only: what an endpoint does is in its handler.
#include "actors/http/generation.hpp"
#include "actors/http/http_exchange.hpp"
#include "actors/http/multipart.hpp"
#include "actors/http/realtime/open.hpp"
#include "actors/http/routes.hpp"
#include "actors/http/tls.hpp"

namespace tutti::http {

namespace {

// `Stream`: PlainStream, or TlsStream on the TLS port (the handshake first, within the head
// timeout). Everything after it is the same for both.
template <class Stream>
class Session final : public HttpExchange, public std::enable_shared_from_this<Session<Stream>> {
 public:
  using std::enable_shared_from_this<Session<Stream>>::shared_from_this;
  Session(Stream stream, ServerState& srv) : stream_(std::move(stream)), srv_(srv) {
    ++srv_.metrics.active_connections;
    apply_socket_options(socket(), srv_.cfg);
    beast::error_code ec;
    const auto peer = socket().remote_endpoint(ec);
    if (!ec) peer_ = peer.address().to_string();
    ++srv_.peers[peer_];
  }
  ~Session() override {
    --srv_.metrics.active_connections;
    if (auto it = srv_.peers.find(peer_); it != srv_.peers.end() && --it->second <= 0) srv_.peers.erase(it);
  }

  void start() {
    const ServerConfig& c = srv_.cfg;
    const bool over_all = int(srv_.metrics.active_connections) > c.max_connections + c.reserved_connections;
    const bool over_peer = c.max_connections_per_peer > 0 && srv_.peers[peer_] > c.max_connections_per_peer;
    if (over_all || over_peer) {
      srv_.metrics.connections_refused++;
      keep_alive_ = false;
      return respond_error(ApiError{ErrorCode::too_many_connections,
                                    over_peer ? "too many connections from this address; try again later" : "too many connections; try again later"});
    }
    if constexpr (std::is_same_v<Stream, TlsStream>) {
      lowest().expires_after(millis(std::min(srv_.cfg.head_timeout_s, srv_.cfg.read_timeout_s)));
      stream_.async_handshake(net::ssl::stream_base::server, [self = shared_from_this()](beast::error_code ec) {
        if (ec) return self->close();  // not TLS, or a client that does not trust us: nothing to answer
        self->read();
      });
    } else {
      read();
    }
  }

  // ---- HttpExchange
  ServerState& server() override { return srv_; }
  const Request& request() const override { return request_; }
  const std::string& key() const override { return key_; }
  bool admin() const override { return admin_; }
  const std::vector<std::string>& params() const override { return params_; }

  void respond(bhttp::response<bhttp::string_body> res) override {
    const bool keep_alive = keep_alive_;
    if (request_id_.empty()) request_id_ = new_request_id();
    res.set("x-request-id", request_id_);
    if (!served_by_.empty()) res.set("x-tutti-served-by", served_by_);
    if (!node_.empty()) res.set("x-tutti-node", node_);
    handler_.reset();  // answered: a kept handler has nothing more to say
    res.keep_alive(keep_alive);
    res.prepare_payload();
    auto sp = std::make_shared<bhttp::response<bhttp::string_body>>(std::move(res));
    lowest().expires_after(millis(srv_.cfg.write_timeout_s));
    bhttp::async_write(stream_, *sp, [self = shared_from_this(), sp, keep_alive](beast::error_code ec, size_t) {
      if (ec || !keep_alive) return self->close();
      self->read();
    });
  }
  void stream(std::string data, int32_t tokens_through) override {
    out_.push(std::move(data), tokens_through);
    flush();
  }
  void tokens_without_bytes(int32_t tokens) override { out_.tokens_without_bytes(tokens); }
  void end_stream() override {
    close_after_writes_ = true;
    flush();
  }
  void abort_stream() override { end_stream(); }
  void keep(std::shared_ptr<GenerationOwner> handler, std::weak_ptr<Generation> credit) override {
    handler_ = std::move(handler);
    if (auto g = credit.lock()) served_by_ = g->served_by(), node_ = g->node();
    out_.credit_to(std::move(credit));
    watch_client();
  }
  void off_thread(std::function<void()> work, std::function<void()> then) override {
    net::post(srv_.media_pool, [self = shared_from_this(), work = std::move(work), then = std::move(then)]() mutable {
      try {
        work();
      } catch (const std::exception& e) {  // a bug: said, and `then` still answers
        std::fprintf(stderr, "tutti: a media job failed: %s\n", e.what());
      }
      net::post(self->srv_.ioc, [self, then = std::move(then)] { then(); });
    });
  }
  void become_realtime() override {
    handler_.reset();
    open_realtime(std::move(stream_), srv_, key_, request_, request_id_);
  }

 private:
  // The head first, within its own short deadline (a client trickling a request in holds a
  // connection only that long), then the body within the read timeout.
  void read() {
    parser_.emplace();
    parser_->body_limit(srv_.cfg.max_body_bytes);
    lowest().expires_after(millis(std::min(srv_.cfg.head_timeout_s, srv_.cfg.read_timeout_s)));
    bhttp::async_read_header(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->on_read(ec);
      // Uploads (multipart/form-data: audio, images) may be larger than JSON bodies.
      const auto& head = self->parser_->get();
      self->body_limit_ = multipart_boundary(std::string(head[bhttp::field::content_type])) ? self->srv_.cfg.max_upload_bytes
                                                                                          : self->srv_.cfg.max_body_bytes;
      self->parser_->body_limit(self->body_limit_);
      self->lowest().expires_after(millis(self->srv_.cfg.read_timeout_s));  // slow or half-open clients are dropped
      bhttp::async_read(self->stream_, self->buffer_, *self->parser_, [self](beast::error_code ec2, size_t) { self->on_read(ec2); });
    });
  }

  void on_read(beast::error_code ec) {
    if (ec == bhttp::error::end_of_stream || ec == net::error::eof || ec == beast::error::timeout) return close();
    if (ec) keep_alive_ = false;
    if (ec == bhttp::error::body_limit)
      return respond_error(ApiError{ErrorCode::request_too_large, "the request body exceeds " + std::to_string(body_limit_) + " bytes"});
    if (ec) return respond_error(invalid_request("malformed HTTP request: " + ec.message()));
    request_ = parser_->release();
    dispatch();
  }

  void dispatch() {
    srv_.metrics.requests++;
    request_id_ = new_request_id();
    keep_alive_ = request_.keep_alive();
    key_.clear(), admin_ = false;  // each request presents its own key
    served_by_.clear(), node_.clear();
    const std::string target(request_.target());
    path_ = target.substr(0, target.find('?'));
    RouteMatch m = match_route(request_.method(), path_);
    // Open routes answer without a key; everything else needs one when keys are configured
    // (a bearer token; browsers' WebSockets put it in a subprotocol instead).
    // Past max_connections the reserve serves only /health and clients with a valid key.
    const bool in_reserve = int(srv_.metrics.active_connections) > srv_.cfg.max_connections;
    if (in_reserve && !(m.route && m.route->handler == routes_health()) &&
        (!srv_.cfg.api_keys.enabled() || !srv_.cfg.api_keys.match(access::ApiKeys::bearer(std::string(request_[bhttp::field::authorization]))))) {
      srv_.metrics.connections_refused++;
      keep_alive_ = false;
      return respond_error(ApiError{ErrorCode::too_many_connections, "too many connections; try again later"});
    }
    if (!m.route || m.route->access != RouteAccess::Open) {
      std::string presented = access::ApiKeys::bearer(std::string(request_[bhttp::field::authorization]));
      if (presented.empty() && path_ == "/v1/realtime")
        presented = access::ApiKeys::from_subprotocols(std::string(request_[bhttp::field::sec_websocket_protocol]));
      auto key = srv_.authenticate(presented, &admin_);
      if (!key) {
        keep_alive_ = false;
        return respond_error(ApiError{ErrorCode::unauthorized,
                                      presented.empty() ? "an API key is required: Authorization: Bearer KEY" : "the API key is not valid"});
      }
      key_ = *key;
      if (m.route && m.route->access == RouteAccess::Admin && srv_.cfg.api_keys.enabled() && !admin_)
        return respond_error(ApiError{ErrorCode::forbidden, "this endpoint needs an admin key ([access] admin_keys)"});
    }
    if (!m.route) {
      if (m.path_exists)
        return respond_error(ApiError{ErrorCode::method_not_allowed, "use " + m.allowed + " for " + path_});
      return respond_error(ApiError{ErrorCode::not_found, "no route for " + std::string(request_.method_string()) + " " + path_});
    }
    params_ = std::move(m.params);
    m.route->handler(*this);
  }

  // While a kept handler's generation runs, watch the socket: a client that closes it (EOF
  // or error) is gone, and its handler is dropped (which cancels and records the
  // generation). This pending wait also keeps the session alive while nothing is in flight.
  void watch_client() {
    socket().async_wait(tcp::socket::wait_read, [self = shared_from_this()](beast::error_code ec) {
      if (!self->handler_) return;
      char probe;
      beast::error_code peek_ec;
      const size_t n = self->socket().receive(net::buffer(&probe, 1), tcp::socket::message_peek, peek_ec);
      if (ec || peek_ec || n == 0) {
        self->handler_.reset();
        self->close();
      }
      // Data instead of EOF: a pipelined request, read once this answer is done.
    });
  }

  // Streamed writes, one at a time in order. A write that makes no progress for
  // write_timeout (a client that stopped reading) drops the connection.
  void flush() {
    if (writing_) return;
    if (out_.empty()) {
      if (close_after_writes_) {
        handler_.reset();
        close();
      }
      return;
    }
    writing_ = true;
    lowest().expires_after(millis(srv_.cfg.write_timeout_s));
    net::async_write(stream_, net::buffer(out_.front().data), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) {  // the client went away or stalled: dropping the handler cancels its generation
        self->out_.clear();
        self->handler_.reset();
        return self->close();
      }
      self->out_.written();
      self->flush();
    });
  }

  // Closes the connection: our side first, then whatever the client still sends is read and
  // dropped until it closes too (at most a second). Closing at once with bytes unread would
  // send a reset, which can make the client's kernel discard the end of an answer it has not
  // read yet. (On TLS without close_notify: HTTP's own framing says where every body ends.)
  void close() {
    if (closing_) return;
    closing_ = true;
    beast::error_code ignored;
    socket().shutdown(tcp::socket::shutdown_send, ignored);
    lowest().expires_after(std::chrono::seconds(1));
    linger(std::make_shared<std::array<char, 1024>>());
  }
  void linger(std::shared_ptr<std::array<char, 1024>> scratch) {
    lowest().async_read_some(net::buffer(*scratch), [self = shared_from_this(), scratch](beast::error_code ec, size_t) {
      if (!ec) return self->linger(scratch);
      beast::error_code ignored;
      self->socket().close(ignored);
    });
  }
  beast::tcp_stream& lowest() { return beast::get_lowest_layer(stream_); }
  std::string new_request_id() { return "req_" + srv_.instance_id + std::to_string(srv_.next_id++); }
  tcp::socket& socket() { return lowest().socket(); }

  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  ServerState& srv_;
  Request request_;
  bool keep_alive_ = false;
  std::string key_, peer_;
  bool admin_ = false;
  std::vector<std::string> params_;
  std::shared_ptr<GenerationOwner> handler_;  // the answer in flight, if it outlives its call
  OutgoingQueue out_;
  bool writing_ = false, close_after_writes_ = false;
  size_t body_limit_ = 0;  // this request's: max_body_bytes, or max_upload_bytes for a form
  bool closing_ = false;
};

}  // namespace

std::string HttpExchange::stream_head(const std::string& content_type, const std::string& extra_headers) const {
  const std::string served = (served_by_.empty() ? "" : "x-tutti-served-by: " + served_by_ + "\r\n") +
                             (node_.empty() ? "" : "x-tutti-node: " + node_ + "\r\n");
  return "HTTP/1.1 200 OK\r\nContent-Type: " + content_type + "\r\nx-request-id: " + request_id_ +
         "\r\nCache-Control: no-cache\r\n" + served + extra_headers + "Connection: close\r\n\r\n";
}

void HttpExchange::respond_json(int status, std::string body) {
  bhttp::response<bhttp::string_body> res{bhttp::status(status), 11};
  res.set(bhttp::field::content_type, "application/json");
  res.body() = std::move(body);
  respond(std::move(res));
}

void HttpExchange::respond_bytes(const char* content_type, std::string body) {
  bhttp::response<bhttp::string_body> res{bhttp::status::ok, 11};
  res.set(bhttp::field::content_type, content_type);
  res.body() = std::move(body);
  respond(std::move(res));
}

void HttpExchange::respond_error(const ApiError& e) {
  server().metrics.errors++;
  bhttp::response<bhttp::string_body> res{bhttp::status(e.status()), 11};
  res.set(bhttp::field::content_type, "application/json");
  if (e.retry_after() > 0) res.set(bhttp::field::retry_after, std::to_string(int(std::ceil(e.retry_after()))));
  if (e.code == ErrorCode::unauthorized) res.set(bhttp::field::www_authenticate, "Bearer");
  res.body() = e.body();
  respond(std::move(res));
}

void ServerState::accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (stopped) return;
    if (!ec) std::make_shared<Session<PlainStream>>(PlainStream(std::move(socket)), *this)->start();
    accept();
  });
}

void ServerState::accept_tls() {
  tls_acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (stopped) return;
    if (!ec) std::make_shared<Session<TlsStream>>(TlsStream(std::move(socket), *tls), *this)->start();
    accept_tls();
  });
}

}  // namespace tutti::http
