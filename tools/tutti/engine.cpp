#include "tools/tutti/engine.h"

#include <cstdio>
#include <stdexcept>

namespace tutti::cli {

int fail(const std::string& message) {
  std::fprintf(stderr, "tutti: %s\n", message.c_str());
  return 1;
}

std::string default_model_path() { return "models/default.gguf"; }

std::set<std::string> engine_options() {
  return {"model", "config", "threads", "kernels", "kv-cache-mb", "kv-cache-type", "device"};
}

std::unique_ptr<Engine> open_engine(Args& args, bool need_tokenizer) {
  auto e = std::make_unique<Engine>();
  if (args.has("config")) {
    auto c = load_engine_config(args.get("config"));
    if (!c) {
      fail(c.error().message);
      return nullptr;
    }
    e->config = *c;
  }
  EngineConfig& c = e->config;
  c.model = args.get("model", c.model.empty() ? default_model_path() : c.model);
  c.threads = int(args.get_int("threads", c.threads));
  c.kernels = args.get("kernels", c.kernels);
  c.device = args.get("device", c.device);
  c.kv_cache_bytes = size_t(args.get_int("kv-cache-mb", static_cast<long long>(c.kv_cache_bytes >> 20))) << 20;
  c.kv_cache_type = args.get("kv-cache-type", c.kv_cache_type);
  if (!args.ok()) {
    fail(args.error());
    return nullptr;
  }
  if (c.device != "cpu") {
    fail("device '" + c.device + "' is not available in this build (cpu)");
    return nullptr;
  }
  if (c.kv_cache_type != "f16" && c.kv_cache_type != "f32") {
    fail("--kv-cache-type must be f16 or f32");
    return nullptr;
  }
  try {
    e->backend = make_cpu_backend({c.threads, c.kernels});
  } catch (const std::exception& ex) {
    fail(ex.what());
    return nullptr;
  }
  auto model = Model::load(c.model, *e->backend);
  if (!model) {
    fail(model.error().message);
    return nullptr;
  }
  e->model = std::move(model).value();
  auto tok = Tokenizer::from_gguf(e->model->file());
  if (tok) {
    e->tokenizer = std::move(tok).value();
    if (e->tokenizer->vocab_size() != e->model->hparams().n_vocab && need_tokenizer) {
      fail(c.model + ": tokenizer has " + std::to_string(e->tokenizer->vocab_size()) + " tokens but the model " +
           std::to_string(e->model->hparams().n_vocab));
      return nullptr;
    }
  } else if (need_tokenizer) {
    fail(tok.error().message);
    return nullptr;
  }
  auto kv = e->model->make_kv_cache(c.kv_cache_bytes, c.kv_cache_type == "f16" ? TensorType::F16 : TensorType::F32,
                                    c.kv_block_tokens);
  if (!kv) {
    fail(kv.error().message);
    return nullptr;
  }
  e->kv = std::move(kv).value();
  return e;
}

}  // namespace tutti::cli
