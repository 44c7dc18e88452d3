// The HttpServer: the listener, the I/O thread, and shutdown (stop, drain). Sessions are in
// http_session.cpp, their handlers in handlers/, the Realtime WebSocket in realtime/.
#include "actors/http/server.hpp"

#include "actors/http/models.hpp"

#include "actors/http/handlers/handlers.hpp"
#include "actors/http/server_state.hpp"
#include "actors/http/stream_address.hpp"
#include "actors/http/tls.hpp"

namespace tutti::http {

Expected<ServerConfig> ServerConfig::from(const Settings& st) {
  ServerConfig sc;
  if (st.port < 0 || st.port > 65535) return Error{"[server] port must be 0..65535"};
  sc.host = st.host;
  sc.port = uint16_t(st.port);
  if (st.tls_cert.empty() != st.tls_key.empty()) return Error{"[server] tls_cert and tls_key go together"};
  sc.tls_cert = st.tls_cert;
  sc.tls_key = st.tls_key;
  sc.tls_port = uint16_t(st.tls_port);
  sc.model_aliases = st.model_aliases;
  sc.max_tokens = st.max_tokens;
  sc.max_body_bytes = size_t(st.max_body_bytes);
  sc.max_upload_bytes = size_t(st.max_upload_bytes);
  sc.max_connections = st.max_connections;
  sc.reserved_connections = st.reserved_connections;
  sc.max_connections_per_peer = st.max_connections_per_peer;
  sc.head_timeout_s = st.head_timeout_s;
  sc.max_session_bytes = size_t(st.max_session_bytes);
  sc.max_pending_bytes = size_t(st.max_pending_bytes);
  sc.read_timeout_s = st.read_timeout_s;
  sc.write_timeout_s = st.write_timeout_s;
  sc.send_buffer_bytes = st.send_buffer_bytes;
  sc.prefill_while_speaking_ms = st.prefill_while_speaking_ms;
  for (auto [name, field] : {std::pair{&st.chat_class, &sc.classes.chat}, std::pair{&st.speech_class, &sc.classes.speech},
                             std::pair{&st.music_class, &sc.classes.music}, std::pair{&st.image_class, &sc.classes.image},
                             std::pair{&st.video_class, &sc.classes.video}})
    if (auto c = parse_request_class(*name)) *field = *c;
  sc.max_conversation_tokens = st.max_conversation_tokens;
  // Access: keys from the settings and the key file (never printed).
  for (const std::string& k : st.api_keys)
    if (Status s = sc.api_keys.add(k); !s) return Error{"[access] api_keys: " + s.message()};
  if (!st.api_key_file.empty())
    if (Status s = sc.api_keys.add_file(st.api_key_file); !s) return s.error();
  for (const std::string& k : st.admin_keys)
    if (Status s = sc.api_keys.add(k, "", true); !s) return Error{"[access] admin_keys: " + s.message()};
  sc.key_limits = {st.requests_per_minute, st.concurrent_sessions, st.tokens_per_minute, st.jobs_per_key};
  sc.stream_allowed_hosts = st.stream_allowed_hosts;
  if (auto ranges = parse_host_ranges(st.stream_allowed_hosts); !ranges) return Error{"[streams] allowed_hosts: " + ranges.error().message};
  sc.stream_idle_timeout_s = st.stream_idle_timeout_s;
  sc.stream_turn_idle_s = st.stream_turn_idle_ms / 1000;
  sc.stream_max_turn_s = st.stream_max_turn_s;
  sc.ledger_path = st.ledger_path;
  sc.ledger_synchronous = st.ledger_synchronous;
  return sc;
}

void ServerConfig::fit_to(const Model& model) { fit_to(facts_of(model)); }

void ServerConfig::fit_to(const ModelFacts& facts) {
  if (model_name.empty()) model_name = facts.name.empty() ? "tutti" : facts.name;
  chat_template = facts.chat_template;
  modalities = facts.modalities;
  if (facts.context > 0) max_conversation_tokens = std::min(max_conversation_tokens, int(facts.context));
}

HttpServer::HttpServer(caf::actor_system& system, std::shared_ptr<ModelRegistry> models, ServerConfig config) {
  if (config.model_name.empty()) config.model_name = "tutti";
  impl_ = std::make_unique<ServerState>(system, std::move(models), std::move(config), metrics_);
}

HttpServer::~HttpServer() { stop(); }

Expected<uint16_t> HttpServer::start() {
  if (!impl_->cfg.ledger_path.empty() && !impl_->ledger) {
    auto ledger = access::UsageLedger::open(impl_->cfg.ledger_path, impl_->cfg.ledger_synchronous);
    if (!ledger) return ledger.error();
    impl_->ledger = std::move(ledger).value();
  }
  beast::error_code ec;
  const auto address = net::ip::make_address(impl_->cfg.host, ec);
  if (ec) return Error{"listen address '" + impl_->cfg.host + "' is invalid: " + ec.message()};
  auto listen = [&](tcp::acceptor& acceptor, uint16_t port) -> Status {
    tcp::endpoint ep{address, port};
    acceptor.open(ep.protocol(), ec);
    if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor.bind(ep, ec);
    if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
    if (ec) return Error{"cannot listen on " + impl_->cfg.host + ":" + std::to_string(port) + ": " + ec.message()};
    return {};
  };
  if (!impl_->cfg.tls_cert.empty()) {
    auto ctx = make_server_tls_context(impl_->cfg.tls_cert, impl_->cfg.tls_key);
    if (!ctx) return ctx.error();
    impl_->tls = std::move(ctx).value();
    if (Status s = listen(impl_->tls_acceptor, impl_->cfg.tls_port); !s) return s.error();
    tls_port_ = impl_->tls_acceptor.local_endpoint().port();
  }
  if (Status s = listen(impl_->acceptor, impl_->cfg.port); !s) return s.error();
  const uint16_t port = impl_->acceptor.local_endpoint().port();
  impl_->accept();
  if (impl_->tls) impl_->accept_tls();
  impl_->thread = std::thread([this] {
    // An exception escaping one session's handler ends that handler (its session is dropped
    // with it); it is said loudly and the I/O thread goes on serving everyone else.
    for (;;) {
      try {
        impl_->ioc.run();
        return;
      } catch (const std::exception& e) {
        impl_->metrics.errors++;
        impl_->metrics.io_thread_exceptions++;
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
    impl_->tls_acceptor.close(ignored);
    stop_all_jobs(*impl_);
    impl_->ioc.stop();
  });
  if (impl_->thread.joinable()) impl_->thread.join();
  // A reload in flight finishes (its loader thread is joined) while the registry it swaps into exists.
  impl_->models->wait_for_reloads();
}

int HttpServer::drain(double seconds) {
  if (!impl_ || impl_->stopped) return 0;
  impl_->draining = true;
  // On the I/O thread: no new connections; WebSockets close once their response is done.
  net::post(impl_->ioc, [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
    impl_->tls_acceptor.close(ignored);
    for (auto& [id, go_away] : std::map<uint64_t, std::function<void()>>(impl_->on_drain)) go_away();
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                                   std::chrono::duration<double>(seconds));
  while (metrics_.generations > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const int cut = int(std::max<int64_t>(0, metrics_.generations.load()));
  // Let the last writes and close frames go out, then stop; what is still running ends as
  // cancelled (and is recorded) when the I/O context goes.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  stop();
  impl_.reset();  // every session's destructor has run: the ledger is complete
  return cut;
}

}  // namespace tutti::http
