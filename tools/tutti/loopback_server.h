// The whole server (actor pipeline and HTTP) on an ephemeral loopback port, inside the
// benchmarking process: what `tutti bench serve`, `bench media` and `bench voice` measure
// against. The same assembly as `tutti serve` (Serving), with the benchmarks' settings.
#pragma once

#include <memory>

#include "actors/serving.hpp"

namespace tutti::cli {

// `model` and `tokenizer` outlive the server.
inline Expected<std::unique_ptr<Serving>> start_loopback_server(Model& model, std::shared_ptr<const Tokenizer> tokenizer,
                                                                const actors::PipelineConfig& pc, int caf_workers,
                                                                int prefill_while_speaking_ms = http::ServerConfig{}.prefill_while_speaking_ms) {
  Serving::Options o;
  o.pipeline = pc;
  o.caf_workers = caf_workers;
  o.server.port = 0;
  o.server.max_tokens = 1 << 16;
  o.server.prefill_while_speaking_ms = prefill_while_speaking_ms;
  return Serving::start(model, std::move(tokenizer), std::move(o));
}

}  // namespace tutti::cli
