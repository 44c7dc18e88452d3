// The whole server (actor pipeline and HTTP) on an ephemeral loopback port, inside the
// benchmarking process: what `tutti bench serve` and `tutti bench media` measure against.
#pragma once

#include <memory>

#include "actors/http/server.hpp"
#include "actors/pipeline.hpp"

namespace tutti::cli {

struct RunningServer {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> system;
  actors::PipelineHandles pipe;
  std::unique_ptr<http::HttpServer> server;
  uint16_t port = 0;

  // `model` and `tokenizer` outlive the server.
  static Expected<std::unique_ptr<RunningServer>> start(Model& model, std::shared_ptr<const Tokenizer> tokenizer,
                                                        const actors::PipelineConfig& pc, int caf_workers,
                                                        int prefill_while_speaking_ms = http::ServerConfig{}.prefill_while_speaking_ms) {
    auto s = std::make_unique<RunningServer>();
    actors::configure_for_compute(s->cfg, caf_workers);
    s->system = std::make_unique<caf::actor_system>(s->cfg);
    auto pipe = actors::spawn_pipeline(*s->system, model, std::move(tokenizer), pc);
    if (!pipe) return pipe.error();
    s->pipe = *pipe;
    http::ServerConfig sc;
    sc.port = 0;
    sc.max_tokens = 1 << 16;
    sc.model_name = model.hparams().name.empty() ? "tutti" : model.hparams().name;
    sc.modalities = model.config().modalities;
    sc.prefill_while_speaking_ms = prefill_while_speaking_ms;
    s->server = std::make_unique<http::HttpServer>(*s->system, s->pipe, sc);
    auto port = s->server->start();
    if (!port) return port.error();
    s->port = *port;
    return s;
  }
  ~RunningServer() {
    if (server) server->stop();
    caf::anon_send_exit(pipe.encoder, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(pipe.executor, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(pipe.decoder, caf::exit_reason::user_shutdown);
  }
};

}  // namespace tutti::cli
