// The whole server assembled in one place: the actor system (configured for compute), the
// models (each with its own pipeline: encoder, executor, decoder; http/models.hpp) and the
// HTTP server on top, with one stop. `tutti serve`, the benchmarks' loopback server and the
// tests all start it this way, so they all run the same server (fitted to its default model
// by ServerConfig::fit_to).
#pragma once

#include <memory>

#include "actors/http/models.hpp"
#include "actors/http/server.hpp"
#include "actors/pipeline.hpp"

namespace tutti {

class Serving {
 public:
  struct Options {
    actors::PipelineConfig pipeline;
    http::ServerConfig server;  // fitted to the default model here
    int caf_workers = 2;
    // The canaries' settings, and the engine settings a reload loads new files with.
    Settings engine;
  };
  // One model the caller owns: `model` and `tokenizer` outlive the server. It is named by
  // options.server.model_name (or the file's own name).
  static Expected<std::unique_ptr<Serving>> start(Model& model, std::shared_ptr<const Tokenizer> tokenizer, Options options);
  // The settings' models ([[models]], or [model] path alone), loaded here.
  static Expected<std::unique_ptr<Serving>> start(Options options);
  ~Serving() { stop(); }
  Serving(const Serving&) = delete;
  Serving& operator=(const Serving&) = delete;

  uint16_t port() const { return port_; }
  uint16_t tls_port() const { return http_ ? http_->tls_port() : 0; }  // 0 without TLS
  const http::ServerConfig& config() const { return config_; }
  const http::HttpServer& http() const { return *http_; }
  // The default model's pipeline as it is now (a reload replaces it).
  actors::PipelineHandles pipeline() const {
    auto inst = models_->primary().current();
    return inst ? inst->pipe : actors::PipelineHandles{};
  }
  http::ModelRegistry& models() { return *models_; }
  caf::actor_system& system() { return *system_; }

  // Graceful: see HttpServer::drain; then stops. Returns the generations cut short.
  int drain(double seconds);
  // Closes every session and stops the pipelines' actors; idempotent.
  void stop();

 private:
  Serving() = default;
  static Expected<std::unique_ptr<Serving>> serve(std::unique_ptr<Serving> s, Options o);
  caf::actor_system_config caf_config_;
  std::unique_ptr<caf::actor_system> system_;
  std::shared_ptr<http::ModelRegistry> models_;
  http::ServerConfig config_;
  std::unique_ptr<http::HttpServer> http_;
  uint16_t port_ = 0;
  bool stopped_ = false;
};

}  // namespace tutti
