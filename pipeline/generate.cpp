#include "pipeline/generate.h"

#include <chrono>

namespace tutti {

Expected<GenerateResult> generate(Model& model, PagedKvCache& kv, const Tokenizer* tokenizer,
                                  const std::vector<int32_t>& prompt, Sampler& sampler, const GenerateOptions& o,
                                  const std::function<bool(int32_t)>& on_token) {
  using Clock = std::chrono::steady_clock;
  if (prompt.empty()) return Error{"the prompt is empty"};
  const int n_vocab = int(model.hparams().n_vocab);
  if (Status s = validate(sampler.params(), n_vocab); !s) return s.error();
  GenerateResult result;
  StepLogits logits;
  Batch batch;
  batch.chunks.resize(1);
  SequenceChunk& chunk = batch.chunks[0];
  chunk.seq_id = o.seq_id;

  const auto t0 = Clock::now();
  for (size_t pos = 0; pos < prompt.size(); pos += size_t(o.prefill_chunk)) {
    const size_t end = std::min(prompt.size(), pos + size_t(o.prefill_chunk));
    chunk.start_pos = int32_t(pos);
    chunk.tokens.assign(prompt.begin() + long(pos), prompt.begin() + long(end));
    if (Status s = model.forward(batch, kv, logits); !s) return s.error();
  }
  for (int32_t t : prompt) sampler.accept(t);
  const auto t1 = Clock::now();
  result.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();

  int32_t pos = int32_t(prompt.size());
  for (int i = 0; i < o.max_tokens; ++i) {
    const int32_t next = sampler.sample(logits.row(0), n_vocab);
    if (next < 0) return Error{"the sampling mask allows no token"};
    if (sampler.is_stop(next) || (o.stop_at_eog && tokenizer && tokenizer->is_end_of_generation(next))) break;
    result.tokens.push_back(next);
    if (on_token && !on_token(next)) break;
    if (i + 1 == o.max_tokens) break;
    chunk.start_pos = pos++;
    chunk.tokens.assign(1, next);
    if (Status s = model.forward(batch, kv, logits); !s) return s.error();
  }
  result.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  return result;
}

}  // namespace tutti
