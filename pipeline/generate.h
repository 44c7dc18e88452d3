// Single-sequence generation on top of Model::forward: chunked prefill of the prompt, then
// one decode step per token until max_tokens, a stop token or end-of-generation. The CLI and
// tests use it; the server's scheduler batches many sequences instead.
#pragma once

#include <functional>
#include <vector>

#include "pipeline/model.h"
#include "pipeline/sampler.h"
#include "pipeline/tokenizer.h"

namespace tutti {

struct GenerateOptions {
  int max_tokens = 32;
  int prefill_chunk = 512;     // prompt tokens per forward step
  bool stop_at_eog = true;     // end at the tokenizer's end-of-generation tokens
  int64_t seq_id = 0;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (the stop token excluded)
  double prefill_seconds = 0, decode_seconds = 0;
};

// on_token is called for each generated token as it is chosen; returning false stops.
Expected<GenerateResult> generate(Model& model, PagedKvCache& kv, const Tokenizer* tokenizer,
                                  const std::vector<int32_t>& prompt, Sampler& sampler, const GenerateOptions& options,
                                  const std::function<bool(int32_t)>& on_token = {});

}  // namespace tutti
