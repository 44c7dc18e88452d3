// The HTTP front door (Boost.Beast): the OpenAI-compatible endpoints, the Realtime WebSocket,
// media, jobs, /health and /metrics. Each connection is a session on the I/O thread that
// routes its requests (routes.cpp) to one handler per endpoint family (handlers/); each
// generation (generation.hpp) gets a sink actor that requests encoding from the pipeline and
// posts the deltas back, so the I/O thread never waits on a step and the executor never
// waits on a socket. A client that goes away cancels its generation.
//
// Threads: one I/O thread runs the sessions; the actors run on CAF's threads.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "actors/access/access.hpp"
#include "actors/http/media.hpp"
#include "actors/http/openai.hpp"
#include "actors/pipeline.hpp"
#include "config/settings.h"
#include "pipeline/metrics.h"

namespace tutti::http {

struct ModelFacts;     // models.hpp
class ModelRegistry;

// The request class each endpoint's generations get unless a request names its own
// ([admission] settings; Realtime voice and stream-job answers are always realtime).
struct EndpointClasses {
  RequestClass chat = RequestClass::Interactive;
  RequestClass speech = RequestClass::Interactive;
  RequestClass music = RequestClass::Batch;
  RequestClass image = RequestClass::Batch;
  RequestClass video = RequestClass::Batch;
  RequestClass of(MediaKind kind) const {
    switch (kind) {
      case MediaKind::Speech: return speech;
      case MediaKind::Music: return music;
      case MediaKind::Image: return image;
      case MediaKind::Video: return video;
    }
    return RequestClass::Batch;
  }
};

struct ServerConfig {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;              // 0: any free port (tests)
  // TLS on tls_port when tls_cert and tls_key (PEM files) are set; the plain port stays.
  std::string tls_cert, tls_key;
  uint16_t tls_port = 8443;          // 0: any free port
  size_t max_body_bytes = 1 << 20;   // larger request bodies get 413
  size_t max_upload_bytes = 25 << 20;  // ... and larger multipart/form-data uploads
  // Connections: past max_connections only /health and requests with a valid key are served
  // (the rest get 503), with reserved_connections more accepted for them; past both, or past
  // max_connections_per_peer from one address (0: no limit), a connection is refused at once.
  int max_connections = 256;
  int reserved_connections = 16;
  int max_connections_per_peer = 0;
  double head_timeout_s = 10;        // a request's head (line and headers) must arrive within it
  int max_tokens = 1024;             // upper bound and default for max_tokens
  std::string model_name;            // "": the model's (fit_to), else "tutti"
  std::vector<std::string> model_aliases;  // other names it answers to ([server] model_aliases)
  ServedModel served() const { return {model_name, model_aliases}; }
  // Slow or half-open clients: a request (headers and body) must arrive within read_timeout;
  // a write that makes no progress for write_timeout drops the connection (and cancels its
  // generation); a WebSocket with no traffic for read_timeout is pinged, and closed if the
  // peer stays silent.
  double read_timeout_s = 60;
  // How long a generation waits for the encoder to take its request: on a cluster ingress the
  // encoder is another node's, and every remote request has a finite timeout.
  double encode_timeout_s = 30;
  // The first request id. Executor nodes key their sequences by the ids the servers in front
  // of them assign, so a cluster ingress starts at a random high base, apart from the node's
  // own server (which starts at 1) and from other ingresses.
  int64_t first_request_id = 1;
  double write_timeout_s = 60;
  int send_buffer_bytes = 0;          // SO_SNDBUF per connection; 0: the OS default
  size_t max_pending_events = 1024;   // WebSocket events queued for a client that does not read
  size_t max_pending_bytes = 8 << 20; // ... and their bytes; past either the connection is cut
  // A Realtime session's conversation, in bytes (text, and 4 per media token): past it the
  // client gets an error event and a close with 1008. With max_connections, these bound what
  // sessions hold: max_connections x (max_session_bytes + max_pending_bytes + max_body_bytes).
  size_t max_session_bytes = 16 << 20;
  ModalityTable modalities;           // the model's media modalities (media endpoints)
  double max_media_seconds = 30;      // longest speech, music or video answer
  ChatTemplate chat_template = ChatTemplate::Plain;
  EndpointClasses classes;
  // Realtime voice: while the user is still talking, prefill the conversation and the speech
  // so far each time this much more has arrived (the turn's request then finds it in the
  // prefix cache and computes only the rest); 0: prefill at the end of the turn only.
  int prefill_while_speaking_ms = 300;
  // Realtime conversations: the prompt a session builds stays within this many tokens (the
  // oldest items go first; see RealtimeSession::trim_conversation).
  int max_conversation_tokens = 4096;
  // Access: keys required on every endpoint but /health and the static page at / (none: open),
  // and limits per key. See access.hpp.
  access::ApiKeys api_keys;
  access::KeyLimits key_limits;
  // Stream jobs: the hosts (addresses, CIDR ranges) their inputs and outputs may use, after
  // resolving (an output binds there, so never a wildcard); and how long a job may go without
  // input before it ends.
  std::vector<std::string> stream_allowed_hosts = {"127.0.0.0/8", "::1"};
  double stream_idle_timeout_s = 60;
  // Turns of a stream job's speech besides the VAD's pauses: the end of the input, or this
  // long with no input at all, commits the speech so far; speech longer than max_turn is
  // committed every max_turn (a feed that talks without a pause is still answered).
  double stream_turn_idle_s = 0.8;
  double stream_max_turn_s = 15;
  // The usage ledger (ledger.hpp): "" for none.
  std::string ledger_path;
  std::string ledger_synchronous = "normal";

  // The [server], [realtime], [access] and [ledger] settings (keys from the key file too);
  // Serving fits them to the default model.
  static Expected<ServerConfig> from(const Settings& settings);
  // What the model decides: its name (unless one is set), chat template, modalities, and a
  // conversation no longer than its context. Every way of assembling a server calls it.
  void fit_to(const Model& model);
  void fit_to(const ModelFacts& facts);
};

// Counters the server exports on /metrics (atomics: written by the I/O and actor threads).
struct ServerMetrics {
  std::atomic<uint64_t> requests{0}, errors{0}, completion_tokens{0}, prompt_tokens{0}, active_connections{0};
  std::atomic<uint64_t> connections_refused{0};  // over the connection limits (all, or per peer)
  // Realtime voice: end of the user's speech (the commit) to the first audio delta sent.
  Histogram speech_to_first_audio{{0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2, 5}};
  std::atomic<uint64_t> barge_ins{0};
  std::atomic<uint64_t> speech_prefills{0};  // prefills of speech started while the user was talking
  std::atomic<uint64_t> conversation_items_dropped{0};  // realtime items trimmed off the oldest end
  std::atomic<uint64_t> auth_failures{0}, limit_refusals{0}, ledger_records{0}, ledger_errors{0};
  // Exceptions that escaped a handler on the I/O thread: each one is a bug (it drops a
  // session); tests assert none happen.
  std::atomic<uint64_t> io_thread_exceptions{0};
  std::atomic<int64_t> generations{0};  // generations running (every transport: drain waits for them)
};

class HttpServer {
 public:
  HttpServer(caf::actor_system& system, std::shared_ptr<ModelRegistry> models, ServerConfig config);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Opens the ledger, binds and starts serving on a background thread; the bound port
  // (useful with port 0).
  Expected<uint16_t> start();
  uint16_t tls_port() const { return tls_port_; }  // the bound TLS port; 0 without TLS
  void stop();  // closes the listener and every session; idempotent
  // Graceful shutdown: stops accepting, refuses new generations (503, or an error event),
  // lets running generations finish for up to `seconds`, closes WebSockets with "going away"
  // once their response is done, then stops (what is still running ends as cancelled and is
  // recorded) and flushes the ledger. Returns the generations that had to be cut short.
  int drain(double seconds);
  const ServerMetrics& metrics() const { return metrics_; }


 private:
  uint16_t tls_port_ = 0;
  ServerMetrics metrics_;      // outlives impl_: sessions ended by its destruction count in it
  std::unique_ptr<class ServerState> impl_;
};

}  // namespace tutti::http
