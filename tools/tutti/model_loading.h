// What several subcommands share: the settings (--config FILE, then the flags --model,
// --threads, --kernels, --kv-cache-mb, --kv-cache-type, --device over it) and the loaded
// model, tokenizer and cache.
#pragma once

#include <memory>
#include <optional>
#include <set>
#include <string>

#include "kernels/backend.h"
#include "config/settings.h"
#include "pipeline/model.h"
#include "pipeline/tokenizer.h"
#include "tools/tutti/args.h"

namespace tutti::cli {

// Option names every engine-running command accepts.
std::set<std::string> engine_options();

struct LoadedModel {
  Settings settings;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<PagedKvCache> kv;
};

// Reads --config then the flags over it, and loads the model named by --model (or the
// config). Prints the error and returns null on failure.
std::unique_ptr<LoadedModel> open_engine(Args& args, bool need_tokenizer);
// Reads --config (or the defaults) and applies the engine flags over it; prints the error and
// returns nothing on failure.
std::optional<Settings> read_settings(Args& args);

// The backend the settings name: the CPU backend (threads, kernels) or the CUDA backend
// (device "cuda"). Throws std::runtime_error with the reason it cannot be made.
std::unique_ptr<Backend> make_backend(const Settings& settings);

// The default model path that `make serve` creates (models/default.gguf).
std::string default_model_path();

int fail(const std::string& message);  // prints "tutti: message" and returns 1

}  // namespace tutti::cli
