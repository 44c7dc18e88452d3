// A ragged batch for one forward step: several sequences, each contributing a chunk of
// consecutive tokens (a prefill chunk of many, or one decode token), each at its own
// positions. This is what the continuous-batching scheduler builds every step.
#pragma once

#include <cstdint>
#include <vector>

namespace tutti {

struct SequenceChunk {
  int64_t seq_id = 0;
  int32_t start_pos = 0;          // position of tokens[0]; K/V of [0, start_pos) must exist
  std::vector<int32_t> tokens;
  bool logits_for_all = false;    // logits of every token (tests, scoring) or only the last
};

struct Batch {
  std::vector<SequenceChunk> chunks;
  int total_tokens() const {
    int n = 0;
    for (auto& c : chunks) n += int(c.tokens.size());
    return n;
  }
};

// Logits of a step: rows of n_vocab floats. Chunk i's rows start at row_begin[i]: one row
// (its last token) or one per token when it asked for all.
struct StepLogits {
  int n_vocab = 0;
  std::vector<float> data;
  std::vector<int> row_begin;
  const float* row(int r) const { return data.data() + size_t(r) * n_vocab; }
  const float* last_of(size_t chunk, const Batch& b) const {
    const int rows = b.chunks[chunk].logits_for_all ? int(b.chunks[chunk].tokens.size()) : 1;
    return row(row_begin[chunk] + rows - 1);
  }
};

}  // namespace tutti
