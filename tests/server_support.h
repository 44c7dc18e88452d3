// A real server for tests: a small unified random model, the actor pipeline and the HTTP
// server on an ephemeral loopback port. Shut down in the destructor.
#pragma once

#include "actors/http/server.hpp"
#include "codecs/model_pack.h"
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
  // `model_path`: another model file instead (snac_model_path()).
  explicit ServerUnderTest(http::ServerConfig sc = {}, actors::PipelineConfig pc = default_pipeline(), bool unified = true,
                           const std::string& model_path = "") {
    RandomModelSpec spec;
    spec.dim = 64; spec.layers = 2; spec.heads = 4; spec.kv_heads = 2; spec.ffn = 96; spec.unified = unified; spec.seed = 4;
    const std::string path = !model_path.empty() ? model_path : random_model(spec, unified ? "http-unified.gguf" : "http-text.gguf");
    model = std::move(Model::load(path, *backend)).value();
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

// A unified model whose audio codec is SNAC (random weights at the shared checkpoint's
// small width, tutti layout) beside the other modalities: made once per process.
inline std::string snac_model_path() {
  const std::string path = temp_path("http-snac.gguf");
  if (!std::filesystem::exists(path)) {
    RandomModelSpec spec;
    spec.dim = 64; spec.layers = 2; spec.heads = 4; spec.kv_heads = 2; spec.ffn = 96; spec.seed = 4;
    const std::string backbone = random_model(spec, "http-snac-backbone.gguf");
    codecs::SnacConfig small;
    small.encoder_dim = 16;
    small.decoder_dim = 128;
    codecs::PackOptions o;
    o.kmeans_iterations = 2;
    o.snac = std::make_shared<const codecs::SnacWeights>(codecs::random_snac_weights(small, 11));
    auto material = codecs::generated_material(default_modalities(1000), 3);
    material.erase(Modality::Audio);
    material.erase(Modality::Music);
    Status s = codecs::pack_unified_model(backbone, material, path + ".tmp", o);
    EXPECT_TRUE(s.ok()) << s.message();
    std::filesystem::rename(path + ".tmp", path);
  }
  return path;
}

}  // namespace tutti::test
