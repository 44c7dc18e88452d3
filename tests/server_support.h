// A real server for tests: a small unified random model, the actor pipeline and the HTTP
// server on an ephemeral loopback port. Shut down in the destructor.
#pragma once

#include "actors/http/server.hpp"
#include "test_support.h"

namespace tutti::test {

struct ServerUnderTest {
  std::unique_ptr<Backend> backend = make_cpu_backend({1});
  std::unique_ptr<Model> model;
  std::shared_ptr<const Tokenizer> tokenizer;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  actors::PipelineHandles pipe;
  std::unique_ptr<http::HttpServer> server;
  uint16_t port = 0;

  static actors::PipelineConfig default_pipeline() {
    actors::PipelineConfig pc;
    pc.kv_cache_bytes = 8 << 20;
    return pc;
  }

  // `unified`: a model with the media modalities (the default), or a text-only Llama.
  explicit ServerUnderTest(http::ServerConfig sc = {}, actors::PipelineConfig pc = default_pipeline(), bool unified = true) {
    RandomModelSpec spec;
    spec.dim = 64; spec.layers = 2; spec.heads = 4; spec.kv_heads = 2; spec.ffn = 96; spec.unified = unified; spec.seed = 4;
    model = std::move(Model::load(random_model(spec, unified ? "http-unified.gguf" : "http-text.gguf"), *backend)).value();
    tokenizer = std::shared_ptr<const Tokenizer>(std::move(Tokenizer::from_gguf(model->file())).value());
    actors::configure_for_compute(cfg, 2);
    sys = std::make_unique<caf::actor_system>(cfg);
    pipe = *actors::spawn_pipeline(*sys, *model, tokenizer, pc);
    sc.port = 0;
    sc.model_name = "tutti-test";
    sc.modalities = model->config().modalities;
    server = std::make_unique<http::HttpServer>(*sys, pipe, sc);
    auto p = server->start();
    EXPECT_TRUE(p) << p.error().message;
    port = p ? *p : 0;
  }
  ~ServerUnderTest() {
    server->stop();
    caf::anon_send_exit(pipe.encoder, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(pipe.executor, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(pipe.decoder, caf::exit_reason::user_shutdown);
  }
};

}  // namespace tutti::test
