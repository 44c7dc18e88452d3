// A model's front: what a cluster ingress needs of a model that runs on executor nodes. The
// ingress never runs the transformer, but it reads the model's facts (its modalities, chat
// template and context: ServerConfig::fit_to) and encodes its users' media into the model's
// tokens (a voice's audio codes, an image's patches) with the model's codecs. So an executor
// node sends, when it joins, a GGUF made of its file's metadata and codec tensors only: no
// transformer weights, and not the vocabulary's arrays (the node's encoder tokenizes).
//
// Owned by whoever holds the result; plain functions, no actors.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "actors/http/models.hpp"
#include "codecs/model_codecs.h"
#include "pipeline/gguf.h"

namespace tutti::cluster {

// The front of a loaded file: every metadata entry but tokenizer.ggml.* (the vocabulary's
// arrays), and every codec.* tensor, as GGUF bytes.
std::vector<uint8_t> model_front_bytes(const GgufFile& file);

struct ModelFront {
  http::ModelFacts facts;
  std::shared_ptr<const codecs::ModelCodecs> codecs;
  uint64_t fingerprint = 0;  // stable_hash of the bytes: two nodes sending the same front share one copy
};

// Reads a front a node sent (untrusted bytes: every field is checked, as any GGUF file's) for
// a model of `n_vocab` ids.
Expected<ModelFront> read_model_front(const std::vector<uint8_t>& bytes, uint32_t n_vocab, const std::string& name);

}  // namespace tutti::cluster
