#include "tools/tutti/model_loading.h"

#include <cstdio>
#include <stdexcept>

#include "kernels/cuda/cuda_backend.h"

namespace tutti::cli {

int fail(const std::string& message) {
  std::fprintf(stderr, "tutti: %s\n", message.c_str());
  return 1;
}

std::string default_model_path() { return "models/default.gguf"; }

std::set<std::string> engine_options() {
  return {"model", "config", "threads", "kernels", "kv-cache-mb", "kv-cache-type", "device"};
}

std::optional<Settings> read_settings(Args& args) {
  Settings c;
  if (args.has("config")) {
    auto loaded = load_settings(args.get("config"));
    if (!loaded) {
      fail(loaded.error().message);
      return std::nullopt;
    }
    c = *loaded;
  }
  c.model_path = args.get("model", c.model_path);
  c.threads = int(args.get_int("threads", c.threads));
  c.kernels = args.get("kernels", c.kernels);
  c.device = args.get("device", c.device);
  c.kv_cache_mb = int(args.get_int("kv-cache-mb", c.kv_cache_mb));
  c.kv_cache_type = args.get("kv-cache-type", c.kv_cache_type);
  if (!args.ok()) {
    fail(args.error());
    return std::nullopt;
  }
  if (c.device != "cpu" && c.device != "cuda") {
    fail("--device must be cpu or cuda");
    return std::nullopt;
  }
  if (c.kv_cache_type != "f16" && c.kv_cache_type != "f32") {
    fail("--kv-cache-type must be f16 or f32");
    return std::nullopt;
  }
  if (c.kv_cache_mb < 1) {
    fail("--kv-cache-mb must be positive");
    return std::nullopt;
  }
  return c;
}

std::unique_ptr<Backend> make_backend(const Settings& s) {
  if (s.device == "cuda") return make_cuda_backend({});
  return make_cpu_backend({s.threads, s.kernels});
}

std::unique_ptr<LoadedModel> open_engine(Args& args, bool need_tokenizer) {
  auto e = std::make_unique<LoadedModel>();
  auto settings = read_settings(args);
  if (!settings) return nullptr;
  e->settings = *settings;
  const Settings& c = e->settings;
  try {
    e->backend = make_backend(c);
  } catch (const std::exception& ex) {
    fail(ex.what());
    return nullptr;
  }
  auto model = Model::load(c.model_path, *e->backend);
  if (!model) {
    fail(model.error().message);
    return nullptr;
  }
  e->model = std::move(model).value();
  auto tok = Tokenizer::from_gguf(e->model->file());
  if (tok) {
    e->tokenizer = std::move(tok).value();
    if (e->tokenizer->vocab_size() != e->model->hparams().n_vocab && need_tokenizer) {
      fail(c.model_path + ": tokenizer has " + std::to_string(e->tokenizer->vocab_size()) + " tokens but the model " +
           std::to_string(e->model->hparams().n_vocab));
      return nullptr;
    }
  } else if (need_tokenizer) {
    fail(tok.error().message);
    return nullptr;
  }
  auto kv = e->model->make_kv_cache(size_t(c.kv_cache_mb) << 20, c.kv_cache_type == "f16" ? TensorType::F16 : TensorType::F32,
                                    c.kv_block_tokens);
  if (!kv) {
    fail(kv.error().message);
    return nullptr;
  }
  e->kv = std::move(kv).value();
  return e;
}

}  // namespace tutti::cli
