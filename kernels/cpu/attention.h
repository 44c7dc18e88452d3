// Internal to the CPU backend: causal attention of one row's query heads that share a KV
// head, over that sequence's paged cache. Compiled for several x86-64 levels.
#pragma once

#include "kernels/backend.h"

namespace tutti::cpu {

// q: `group` query heads of head_dim values (contiguous), out: the same shape. scratch must
// hold group * (pos + 16) + head_dim floats. Attends positions [0, pos] of seq.
// The AVX-512 version; returns false (doing nothing) for shapes it does not handle
// (head_dim not a multiple of 16 or above 256, blocks above 64 positions).
bool attend_group_avx512(const KvLayerView& kv, const AttentionSeq& seq, int pos, int kv_head, int group, int head_dim,
                         float scale, const float* q, float* out, float* scratch);

void attend_group(const KvLayerView& kv, const AttentionSeq& seq, int pos, int kv_head, int group, int head_dim,
                  float scale, const float* q, float* out, float* scratch);

}  // namespace tutti::cpu
