// SNAC weights on their way into a unified file: from a published checkpoint directory
// (config.json + pytorch_model.bin) through tools/snac/checkpoint.py (which only moves the
// tensors out of the PyTorch archive, into a plain GGUF), or random weights of a
// configuration (`tutti model init --codec snac`). Here every tensor is checked against
// the configuration, weight norm is folded (w = g * v / ||v||, the norm over every
// dimension but the first), and the result is what add_snac_tensors writes.
#pragma once

#include <string>
#include <vector>

#include "codecs/snac.h"
#include "pipeline/expected.h"
#include "pipeline/gguf.h"

namespace tutti::codecs {

struct SnacWeights {
  SnacConfig config;
  struct Tensor {
    std::string name;             // the unified file's name without the prefix, e.g. "decoder.model.1.weight"
    std::vector<int64_t> shape;   // PyTorch order
    std::vector<float> values;
  };
  std::vector<Tensor> tensors;
};

// Runs the helper on `dir` (python3 and tools/snac/checkpoint.py, found beside the binary's
// source tree or through TUTTI_TOOLS_DIR), then reads and checks what it wrote.
Expected<SnacWeights> import_snac_checkpoint(const std::string& dir);
// The checks and the folding, on the helper's GGUF (state dict keys as they were; both
// weight-norm key styles: weight_g/weight_v and parametrizations.weight.original0/1).
Expected<SnacWeights> snac_weights_from_state_dict(const GgufFile& state_dict, const std::string& what);
// Random weights of a configuration, scaled as PyTorch initialises them, so a decoder's
// activations stay in range.
SnacWeights random_snac_weights(const SnacConfig& config, uint64_t seed);
// The tensors under `prefix` (e.g. "codec.audio.") and the configuration under
// `config_prefix` (e.g. "tutti.audio.snac.").
void add_snac_tensors(GgufWriter& w, const std::string& prefix, const std::string& config_prefix, const SnacWeights& s);

// The weights as a loaded model, through the same GGUF layout and loader a unified file
// uses (benchmarks and tests; the model copies what it needs).
Expected<std::shared_ptr<const SnacModel>> load_snac_weights(const SnacWeights& s);

// Where the helper scripts live (TUTTI_TOOLS_DIR, else the source tree this binary was built from).
std::string tools_dir();

}  // namespace tutti::codecs
