// The whole server assembled in one place: the actor system (configured for compute), the
// models (each with its own pipeline: encoder, executor, decoder; http/models.hpp) and the
// HTTP server on top, with one stop. `tutti serve`, the benchmarks' loopback server and the
// tests all start it this way, so they all run the same server (fitted to its default model
// by ServerConfig::fit_to).
#pragma once

#include <functional>
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
    // Before the actor system is made: a cluster node loads the middleman and registers the
    // types that cross nodes (actors/cluster/node.hpp). Empty: a process of its own.
    std::function<void(caf::actor_system_config&)> configure_actors;
  };
  // Where the models come from, given the actor system: loaded from the settings, borrowed,
  // or gathered from the executor nodes that join a cluster ingress.
  using ModelSource = std::function<Expected<std::shared_ptr<http::ModelRegistry>>(caf::actor_system&)>;
  static Expected<std::unique_ptr<Serving>> start(Options options, const ModelSource& models);
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
  // Stops `before` with the server, first: what lives in the actor system (a cluster
  // ingress's actor, a node's membership loop) goes before the system does.
  void on_stop(std::function<void()> before) { on_stop_.push_back(std::move(before)); }
  // The default model's pipeline as it is now (a reload replaces it).
  actors::PipelineHandles pipeline() const {
    auto inst = models_->primary().current();
    return inst ? inst->pipe : actors::PipelineHandles{};
  }
  http::ModelRegistry& models() { return *models_; }
  std::shared_ptr<http::ModelRegistry> registry() const { return models_; }
  caf::actor_system& system() { return *system_; }

  // Graceful: see HttpServer::drain; then stops. Returns the generations cut short.
  int drain(double seconds);
  // Closes every session and stops the pipelines' actors; idempotent.
  void stop();

 private:
  Serving() = default;
  static std::unique_ptr<Serving> with_actor_system(const Options& o);
  static Expected<std::unique_ptr<Serving>> serve(std::unique_ptr<Serving> s, Options o);
  std::vector<std::function<void()>> on_stop_;
  caf::actor_system_config caf_config_;
  std::unique_ptr<caf::actor_system> system_;
  std::shared_ptr<http::ModelRegistry> models_;
  http::ServerConfig config_;
  std::unique_ptr<http::HttpServer> http_;
  uint16_t port_ = 0;
  bool stopped_ = false;
};

}  // namespace tutti
