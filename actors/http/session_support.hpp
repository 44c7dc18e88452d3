// What the server's session types share (internal to actors/http/): the server's state
// (HttpServer::Impl: I/O context, pipeline handles, settings, video jobs), socket helpers,
// flow-control credit, and the per-generation sink actor that connects a session to the
// pipeline. HTTP sessions live in server.cpp, Realtime WebSocket sessions in realtime_session.cpp.
#pragma once

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <chrono>
#include <cstdio>
#include <random>
#include <cmath>
#include <functional>
#include <utility>
#include <deque>
#include <map>
#include <optional>

#include "actors/http/ledger.hpp"
#include "actors/http/media.hpp"
#include "actors/http/server.hpp"

namespace tutti::http {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using namespace tutti::actors;

class Session;

class VideoJob;
class StreamJob;

struct HttpServer::Impl {
  caf::actor_system& system;
  PipelineHandles pipe;
  ServerConfig cfg;
  ServerMetrics& metrics;
  // Access and accounting, on the I/O thread: per-key limits, the usage ledger (or none).
  // Declared before the I/O context: sessions that end when it is destroyed still record.
  KeyLimiter limiter;
  std::unique_ptr<UsageLedger> ledger;
  // Graceful shutdown: set once drain() starts; what WebSocket sessions do then (close with
  // "going away" after their response), by session, registered while they live.
  std::atomic<bool> draining{false};
  std::map<uint64_t, std::function<void()>> on_drain;
  // Ids (next_id) restart with the process; ledger records carry this random prefix too, so
  // a request of one run never collides with one of another in the ledger. (Before the I/O
  // context, like the ledger: sessions ended by its destruction record with it; ASan found
  // the use after free when it stood after.)
  const std::string instance_id = [] {
    std::random_device rd;
    char buf[24];
    std::snprintf(buf, sizeof buf, "%08x%08x", unsigned(rd()), unsigned(rd()));
    return std::string(buf);
  }();
  net::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  std::thread thread;
  std::atomic<int64_t> next_id{1};
  std::atomic<bool> stopped{false};
  // Video jobs by id; touched only on the I/O thread (one thread runs ioc).
  std::map<std::string, std::shared_ptr<VideoJob>> jobs;
  // ZeroMQ stream jobs by id (stream_job.cpp); their state is touched on the I/O thread.
  std::map<std::string, std::shared_ptr<StreamJob>> streams;

  Impl(caf::actor_system& s, PipelineHandles p, ServerConfig c, ServerMetrics& m)
      : system(s), pipe(std::move(p)), cfg(std::move(c)), metrics(m), limiter(cfg.key_limits) {}
  void accept();

  // The name of the key a request presents ("" when the server is open); nullopt: refused.
  std::optional<std::string> authenticate(const std::string& presented) {
    if (!cfg.api_keys.enabled()) return std::string();
    auto name = cfg.api_keys.match(presented);
    if (!name) metrics.auth_failures++;
    return name;
  }
  // May a generation of `key` producing `modality` start now? (Counts it if so.)
  std::optional<Refusal> admit(const std::string& key, const std::string& modality, bool holds_session) {
    if (draining) return Refusal{"server_shutting_down", "the server is shutting down", 5};
    auto refusal = limiter.begin(key, unix_seconds(), modality, holds_session);
    if (refusal) metrics.limit_refusals++;
    return refusal;
  }
  // A request ended: its record goes to the ledger (before its last bytes are sent), its
  // tokens to the key's quota.
  void account(UsageRecord r) {
    r.finished_at = unix_seconds();
    r.request_id = instance_id + ":" + r.request_id;
    if (r.model.empty()) r.model = cfg.model_name;
    for (const auto* m : {&r.tokens_in, &r.tokens_out})
      for (const auto& [modality, n] : *m) limiter.add_tokens(r.key, modality, n, r.finished_at);
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
};

namespace detail {

// A running generation's hold on the server: counted in `generations` (drain waits for it)
// and, with holds_session, one of its key's concurrent sessions. Released once, by
// release() or the destructor. I/O thread only.
class Hold {
 public:
  Hold() = default;
  Hold(HttpServer::Impl& srv, std::string key, bool counts_generation, bool holds_session)
      : srv_(&srv), key_(std::move(key)), generation_(counts_generation), session_(holds_session) {
    if (generation_) srv_->metrics.generations++;
  }
  Hold(Hold&& o) noexcept { *this = std::move(o); }
  Hold& operator=(Hold&& o) noexcept {
    if (this != &o) {
      release();
      srv_ = std::exchange(o.srv_, nullptr);
      key_ = std::move(o.key_);
      generation_ = o.generation_, session_ = o.session_;
    }
    return *this;
  }
  ~Hold() { release(); }
  void release() {
    if (!srv_) return;
    if (generation_) srv_->metrics.generations--;
    if (session_) srv_->limiter.end_session(key_);
    srv_ = nullptr;
  }

 private:
  HttpServer::Impl* srv_ = nullptr;
  std::string key_;
  bool generation_ = false, session_ = false;
};

// The error a refusal (limits, shutting down) becomes: 429 with a retry hint, or 503.
inline ApiError refusal_error(const Refusal& r) {
  const bool shutting_down = r.code == "server_shutting_down";
  return ApiError{shutting_down ? 503 : 429, shutting_down ? "server_error" : "rate_limit_error", r.code, r.message, "", r.retry_after_s};
}

inline std::chrono::milliseconds millis(double seconds) { return std::chrono::milliseconds(int64_t(seconds * 1000)); }

inline void apply_socket_options(tcp::socket& socket, const ServerConfig& cfg) {
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
  bool binary = false;  // a WebSocket binary message (the Opus framing)
};

inline long unix_now() { return long(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()); }

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
              MediaChunk chunk;
              try {  // a failure encoding this answer ends it with the reason, nothing else
                chunk = media->on_delta(d);
              } catch (const std::exception& e) {
                chunk.done = true;
                chunk.error = std::string("encoding the answer failed: ") + e.what();
              }
              if (d.token >= 0) chunk.tokens.push_back(d.token);
              const bool last = chunk.done;
              net::post(*ioc, [weak, chunk = std::move(chunk), t = d.completion_tokens, p = d.prompt_tokens]() mutable {
                if (auto s = weak.lock()) s->on_media(std::move(chunk), t, p);
              });
              if (last) self->quit();
            }};
  });
}

}  // namespace detail

// Stream jobs (stream_job.cpp), on the I/O thread: each returns an HTTP status and body.
// `key`: the name of the key that created the job; its answers are recorded under it.
std::pair<int, std::string> stream_jobs_create(HttpServer::Impl& srv, const std::string& body, const std::string& key);
std::pair<int, std::string> stream_jobs_get(HttpServer::Impl& srv, const std::string& id);
std::pair<int, std::string> stream_jobs_delete(HttpServer::Impl& srv, const std::string& id);
void stream_jobs_stop_all(HttpServer::Impl& srv);

// Starts a Realtime WebSocket session on an upgraded connection (realtime_session.cpp).
// Starts a Realtime WebSocket session for the client's key (name; "" when the server is open).
void start_realtime(tcp::socket socket, bhttp::request<bhttp::string_body> req, HttpServer::Impl& srv, const std::string& key);

}  // namespace tutti::http
