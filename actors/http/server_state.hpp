// The server's shared state (internal to actors/http/): the I/O context, the pipeline's
// handles, the settings, the access limits and the ledger, and the running jobs. Every
// session, handler and job reaches the rest of the server through it, on the I/O thread.
#pragma once

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "actors/access/ledger.hpp"
#include "actors/http/models.hpp"
#include "actors/http/server.hpp"

namespace boost::asio::ssl {
class context;  // tls.hpp: only the session, the Realtime connection and the listener need it
}

namespace tutti::http {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;

class VideoJob;
class StreamJob;

// The way onto the I/O thread for actors and loader threads, which may outlive the server: a
// generation's sink (living in the actor system) can be handling a delta while the server is
// destroyed. Each poster holds it shared; the server closes it before its I/O context goes,
// after which a post is dropped (what it carried was for sessions that are ending anyway).
class IoGate {
 public:
  explicit IoGate(net::io_context& ioc) : ioc_(&ioc) {}
  template <class Handler>
  void post(Handler&& h) {
    std::lock_guard<std::mutex> lock(mu_);
    if (ioc_) net::post(*ioc_, std::forward<Handler>(h));
  }
  void close() {
    std::lock_guard<std::mutex> lock(mu_);
    ioc_ = nullptr;
  }

 private:
  std::mutex mu_;
  net::io_context* ioc_;  // null once closed
};

class ServerState {
 public:
  ServerState(caf::actor_system& s, std::shared_ptr<ModelRegistry> r, ServerConfig c, ServerMetrics& m)
      : system(s), models(std::move(r)), cfg(std::move(c)), metrics(m), limiter(cfg.key_limits) {
    next_id = cfg.first_request_id;
  }
  // Before any member goes: no actor posts to the I/O context from here on.
  ~ServerState() { io_gate->close(); }

  caf::actor_system& system;
  // The models (models.hpp): each request is routed to the instance that answers its
  // modality; cfg below holds what the default model decides (fit_to), which every fallback
  // and every reload must keep (cannot_stand_in).
  std::shared_ptr<ModelRegistry> models;
  ServerConfig cfg;
  ServerMetrics& metrics;
  // Access and accounting, on the I/O thread: per-key limits, the usage ledger (or none).
  // Declared before the I/O context: sessions that end when it is destroyed still record.
  access::KeyLimiter limiter;
  std::unique_ptr<access::UsageLedger> ledger;
  // Graceful shutdown: set once drain() starts; what WebSocket sessions do then (close with
  // "going away" after their response), by session, registered while they live.
  std::atomic<bool> draining{false};
  std::map<uint64_t, std::function<void()>> on_drain;
  // Ids (next_id) restart with the process; ledger records carry this random prefix too, so
  // a request of one run never collides with one of another in the ledger. (Before the I/O
  // context, like the ledger: sessions ended by its destruction record with it.)
  const std::string instance_id = [] {
    std::random_device rd;
    char buf[24];
    std::snprintf(buf, sizeof buf, "%08x%08x", unsigned(rd()), unsigned(rd()));
    return std::string(buf);
  }();
  // Open connections by peer address (HTTP sessions), for max_connections_per_peer. Before
  // the I/O context: sessions ended by its destruction still count themselves out.
  std::map<std::string, int> peers;
  net::io_context ioc{1};
  const std::shared_ptr<IoGate> io_gate = std::make_shared<IoGate>(ioc);  // how actors post to ioc
  tcp::acceptor acceptor{ioc};
  // The TLS port, when a certificate is configured (tls.hpp); null: plain HTTP only.
  std::shared_ptr<net::ssl::context> tls;
  tcp::acceptor tls_acceptor{ioc};
  std::thread thread;
  std::atomic<int64_t> next_id{1};
  std::atomic<bool> stopped{false};
  // Video jobs and ZeroMQ stream jobs by id; touched only on the I/O thread.
  std::map<std::string, std::shared_ptr<VideoJob>> jobs;
  std::map<std::string, std::shared_ptr<StreamJob>> streams;
  // The Responses API's stored responses (store: true), for previous_response_id: each one's
  // whole conversation as chat messages, its owner's key; the oldest go past kMaxStored.
  struct StoredResponse {
    std::string owner;
    nlohmann::json messages;  // the input's messages and the answer, in order
  };
  static constexpr size_t kMaxStoredResponses = 256;
  std::map<std::string, StoredResponse> responses;
  std::deque<std::string> response_order;  // oldest first
  // Media work for sessions (FFmpeg, Opus, the audio codec's encoder): never on the I/O
  // thread, which serves everyone. Last: destroyed (its threads joined) first.
  net::thread_pool media_pool{2};

  // The default model's instance now (a reload replaces it); null once stopped.
  std::shared_ptr<ModelInstance> primary() const { return models->primary().current(); }
  // The codecs of the model that answers `modality` now (input audio is encoded with the
  // codec of the model that will hear it), the default model's when none can.
  std::shared_ptr<const codecs::ModelCodecs> codecs_for(Modality modality, const std::string& model = "") {
    auto r = models->route(model, modality, false);
    if (auto* route = std::get_if<ModelRoute>(&r)) return route->instance->pipe.codecs;
    auto p = primary();
    return p ? p->pipe.codecs : nullptr;
  }

  void accept();      // the plain port (http_session.cpp)
  void accept_tls();  // the TLS port

  // The name of the key a request presents ("" when the server is open); nullopt: refused.
  // `admin`: whether it is an admin key (an open server has none).
  std::optional<std::string> authenticate(const std::string& presented, bool* admin) {
    *admin = false;
    if (!cfg.api_keys.enabled()) return std::string();
    auto name = cfg.api_keys.match(presented, admin);
    if (!name) metrics.auth_failures++;
    return name;
  }
  // An id no client can guess (128 random bits): jobs are reached by id alone.
  static std::string unguessable_id(const char* prefix) {
    std::random_device rd;
    char buf[40];
    std::snprintf(buf, sizeof buf, "%08x%08x%08x%08x", unsigned(rd()), unsigned(rd()), unsigned(rd()), unsigned(rd()));
    return prefix + std::string(buf);
  }
  // May a generation of `key` producing `modality` start now? (Counts it if so.) Without
  // `check_limits` only the drain is asked (work admitted as a whole before: a stream job).
  std::optional<access::Refusal> admit(const std::string& key, Modality modality, bool holds_session, bool check_limits = true) {
    if (draining) return access::Refusal{ErrorCode::shutting_down, "the server is shutting down", 5};
    if (!check_limits) return std::nullopt;
    auto refusal = limiter.begin(key, unix_seconds(), modality_name(modality), holds_session);
    if (refusal) metrics.limit_refusals++;
    return refusal;
  }
  // A request ended: its record goes to the ledger (before its last bytes are sent). Its
  // tokens were charged to the key's quota as they were produced (Generation).
  void account(access::UsageRecord r) {
    r.finished_at = unix_seconds();
    r.request_id = instance_id + ":" + r.request_id;
    if (r.model.empty()) r.model = cfg.model_name;
    if (!ledger) return;
    if (auto ok = ledger->record(r); ok) {
      metrics.ledger_records++;
    } else {
      metrics.ledger_errors++;  // loud: billing depends on it (the message never holds a key)
      std::fprintf(stderr, "tutti: %s (request %s)\n", ok.error().message.c_str(), r.request_id.c_str());
    }
  }
  static double unix_seconds() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  }
  static long unix_now() { return long(unix_seconds()); }
};

inline std::chrono::milliseconds millis(double seconds) { return std::chrono::milliseconds(int64_t(seconds * 1000)); }

inline void apply_socket_options(tcp::socket& socket, const ServerConfig& cfg) {
  beast::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);  // deltas are small and latency matters
  if (cfg.send_buffer_bytes > 0) socket.set_option(net::socket_base::send_buffer_size(cfg.send_buffer_bytes), ignored);
}

}  // namespace tutti::http
