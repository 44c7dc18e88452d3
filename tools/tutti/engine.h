// What several subcommands share: the engine options common to them (--config, --threads,
// --kernels, --kv-cache-mb, --kv-cache-type) and the loaded model, tokenizer and cache.
#pragma once

#include <memory>
#include <set>
#include <string>

#include "kernels/backend.h"
#include "pipeline/config_file.h"
#include "pipeline/model.h"
#include "pipeline/tokenizer.h"
#include "tools/tutti/args.h"

namespace tutti::cli {

// Option names every engine-running command accepts.
std::set<std::string> engine_options();

struct Engine {
  EngineConfig config;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<PagedKvCache> kv;
};

// Reads --config then the flags over it, and loads the model named by --model (or the
// config). Prints the error and returns null on failure.
std::unique_ptr<Engine> open_engine(Args& args, bool need_tokenizer);

// The default model path that `make serve` creates (models/default.gguf).
std::string default_model_path();

int fail(const std::string& message);  // prints "tutti: message" and returns 1

}  // namespace tutti::cli
