// Residual vector quantization: a vector becomes one code per stage; stage s quantizes what
// the stages before it left over, with its own codebook. Plain data and functions: the
// codebooks are the `codec.<modality>.codebook.<s>` tensors of a unified GGUF
// ([dim, size] f32, code c's vector contiguous), trained here by k-means.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "pipeline/expected.h"

namespace tutti::codecs {

struct Codebooks {
  int dim = 0, size = 0, stages = 0;
  std::vector<std::vector<float>> books;  // per stage: size * dim floats, code-major
  // Per stage, |code|^2 / 2 for the nearest-code search: filled by prepare() (train_rvq and
  // the model loader call it), so encoding does not recompute them for every vector.
  std::vector<std::vector<float>> half_norms;
  const float* code(int stage, int c) const { return books[size_t(stage)].data() + size_t(c) * size_t(dim); }
  void prepare();
  Status validate() const;
};

// Codes of `x` (length dim), one per stage, stage 0 first; `residual` (optional, length dim)
// receives what is left.
void rvq_encode(const Codebooks& cb, std::span<const float> x, std::span<int32_t> codes, std::span<float> residual = {});
// Sum of the codes' vectors into out (length dim).
void rvq_decode(const Codebooks& cb, std::span<const int32_t> codes, std::span<float> out);

struct KmeansOptions {
  int iterations = 10;
  uint32_t seed = 1;
  // Called after each stage's iteration: (stage, iteration, mean squared error so far).
  std::function<void(int, int, double)> progress;
};
// Trains `stages` codebooks of `size` codes on vectors (rows of `data`, dim each): k-means++
// seeding, Lloyd iterations, each stage on the residuals the previous stages leave. Fewer
// training vectors than codes is an error.
Expected<Codebooks> train_rvq(std::span<const float> data, int dim, int size, int stages, const KmeansOptions& options = {});

}  // namespace tutti::codecs
