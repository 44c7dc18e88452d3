// The whole server assembled in one place: the actor system (configured for compute), the
// pipeline (encoder, executor, decoder) and the HTTP server on top, with one stop. `tutti
// serve`, the benchmarks' loopback server and the tests all start it this way, so they all
// run the same server (fitted to its model by ServerConfig::fit_to).
#pragma once

#include <memory>

#include "actors/http/server.hpp"
#include "actors/pipeline.hpp"

namespace tutti {

class Serving {
 public:
  struct Options {
    actors::PipelineConfig pipeline;
    http::ServerConfig server;  // fitted to the model here
    int caf_workers = 2;
  };
  // `model` and `tokenizer` outlive the server.
  static Expected<std::unique_ptr<Serving>> start(Model& model, std::shared_ptr<const Tokenizer> tokenizer, Options options);
  ~Serving() { stop(); }
  Serving(const Serving&) = delete;
  Serving& operator=(const Serving&) = delete;

  uint16_t port() const { return port_; }
  uint16_t tls_port() const { return http_ ? http_->tls_port() : 0; }  // 0 without TLS
  const http::ServerConfig& config() const { return config_; }
  const http::HttpServer& http() const { return *http_; }
  const actors::PipelineHandles& pipeline() const { return pipe_; }
  caf::actor_system& system() { return *system_; }

  // Graceful: see HttpServer::drain; then stops. Returns the generations cut short.
  int drain(double seconds);
  // Closes every session and stops the pipeline's actors; idempotent.
  void stop();

 private:
  Serving() = default;
  caf::actor_system_config caf_config_;
  std::unique_ptr<caf::actor_system> system_;
  actors::PipelineHandles pipe_;
  http::ServerConfig config_;
  std::unique_ptr<http::HttpServer> http_;
  uint16_t port_ = 0;
  bool stopped_ = false;
};

}  // namespace tutti
