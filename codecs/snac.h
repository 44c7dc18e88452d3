// SNAC (multi-scale neural audio codec) inference: the 24 kHz speech model's architecture
// and any configuration of it without attention (../shared/guides/snac.md).
//
// - SnacConfig: the constructor arguments, as a checkpoint's config.json and the unified
//   file's tutti.<m>.snac.* keys carry them, and the values derived from them.
// - snac_tensor_specs: every tensor a configuration has, in PyTorch's names and shapes. One
//   list serves the importer (checkpoint -> GGUF), the loader (shape checks) and the random
//   model `tutti model init --codec snac` makes.
// - SnacModel: the folded weights, loaded once and shared read-only by every stream.
// - SnacDecoder / SnacEncoder: one stream each way. Every layer keeps the context it needs
//   (convolution history, the previous column of a transposed convolution, the skip input
//   of a residual unit), so a stream decodes each sample once, and streamed output equals
//   a one-shot decode of the whole input exactly, edges included.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "pipeline/expected.h"
#include "pipeline/gguf.h"

namespace tutti {
class ThreadPool;
}

namespace tutti::codecs {

struct SnacConfig {
  int sampling_rate = 24000;
  int encoder_dim = 48;
  std::vector<int> encoder_rates = {2, 4, 8, 8};
  int decoder_dim = 1024;
  std::vector<int> decoder_rates = {8, 8, 4, 2};
  int codebook_size = 4096;
  int codebook_dim = 8;
  std::vector<int> vq_strides = {4, 2, 1};
  bool noise = true;
  bool depthwise = true;

  int hop_length() const;     // samples per latent step: the product of encoder_rates
  int latent_dim() const;     // encoder_dim * 2^len(encoder_rates)
  int frame_latents() const;  // latent steps per frame: the coarsest stride (vq_strides[0])
  int frame_samples() const { return hop_length() * frame_latents(); }
  int codes_per_frame() const;  // sum over levels of frame_latents / stride
  // The level of each code of a frame, in the order Orpheus interleaves them: depth first
  // over the tree of strides ([4, 2, 1] gives 0 1 2 2 1 2 2).
  std::vector<int> frame_levels() const;
  Status validate() const;  // one line naming what is wrong
};

// The published 24 kHz speech model's configuration (19.8 M parameters).
SnacConfig snac_24khz_config();

// config.json as published checkpoints carry it. attn_window_size must be null (the 32 and
// 44 kHz music models have attention, which tutti does not implement).
Expected<SnacConfig> parse_snac_config_json(const std::string& text);
// The tutti.<m>.snac.* keys (prefix "tutti.audio.snac.").
Expected<SnacConfig> read_snac_config(const GgufFile& file, const std::string& prefix);
void write_snac_config(GgufWriter& w, const std::string& prefix, const SnacConfig& c);

// One convolution of the network (weight [out, in / groups, k] as PyTorch lays it out;
// a transposed convolution's is [in, out, k]), or a Snake's alpha, or a codebook.
struct SnacTensorSpec {
  enum class Kind { Conv, ConvTranspose, Alpha, Codebook };
  std::string name;             // PyTorch module path: "decoder.model.1", ".alpha" etc. added by kind
  Kind kind = Kind::Conv;
  std::vector<int64_t> shape;   // the weight's (or alpha's, codebook's) shape, PyTorch order
  bool bias = true;             // convolutions: has "<name>.bias" of shape [out]
  // Convolutions: where they sit decides these (PyTorch's constructor arguments). The
  // padding is (k - 1) * dilation / 2 for stride 1, ceil(stride / 2) otherwise.
  int stride = 1, dilation = 1, groups = 1;
};
std::vector<SnacTensorSpec> snac_tensor_specs(const SnacConfig& c);
// The tensor names of a spec in the unified file (prefix "codec.audio."): convolutions as
// "<prefix><name>.weight" (weight norm already folded) and "<prefix><name>.bias".
std::string snac_weight_name(const SnacTensorSpec& s);

struct SnacModel;  // folded weights in the layouts the kernels read (snac.cpp)

struct SnacDecodeOptions {
  bool zero_noise = false;    // the noise blocks add nothing (exact comparisons)
  uint64_t seed = 0;          // the noise blocks' Gaussian noise
  ThreadPool* pool = nullptr; // splits each product between its threads (nullptr: this thread)
};

class SnacDecoder {
 public:
  SnacDecoder(std::shared_ptr<const SnacModel> model, SnacDecodeOptions options);
  ~SnacDecoder();
  // Codes in frame order (codes_per_frame per frame, each level's codes interleaved as
  // frame_levels() says). A partial frame waits for the rest. Returns the samples whose
  // context is complete: everything up to algorithmic_latency_samples() before the end of
  // what the frames so far cover.
  Expected<std::vector<float>> push(std::span<const int32_t> codes);
  // End of the codes: the rest of the samples (a partial frame is dropped).
  std::vector<float> finish();

 private:
  struct Graph;
  std::shared_ptr<const SnacModel> model_;
  std::unique_ptr<Graph> graph_;
  std::vector<int32_t> pending_;
};

class SnacEncoder {
 public:
  explicit SnacEncoder(std::shared_ptr<const SnacModel> model, ThreadPool* pool = nullptr);
  ~SnacEncoder();
  // Samples at the codec's rate; codes (frame order) of every frame whose context is complete.
  std::vector<int32_t> push(std::span<const float> samples);
  // The stream ended: pads to a whole frame as SNAC's preprocessing does (zeros), and
  // returns the codes of the remaining frames.
  std::vector<int32_t> finish();

 private:
  struct Graph;
  std::shared_ptr<const SnacModel> model_;
  std::unique_ptr<Graph> graph_;
  int64_t samples_ = 0;
};

// Loads and checks the weights named by snac_tensor_specs (prefix e.g. "codec.audio."):
// every tensor present, F32, F16 or BF16, with its shape, finite; nothing else under the
// prefix. Errors are one line naming the file and the tensor.
Expected<std::shared_ptr<const SnacModel>> load_snac_model(const GgufFile& file, const std::string& tensor_prefix,
                                                           const SnacConfig& config);
const SnacConfig& snac_model_config(const SnacModel& m);
// Samples of context the decoder needs past a sample before it can emit it (from the
// convolutions' right padding), and the same for the encoder's codes.
int snac_decoder_latency_samples(const SnacModel& m);
int snac_encoder_latency_samples(const SnacModel& m);
uint64_t snac_parameter_count(const SnacConfig& c);

// Codes per level (the shared codes.txt layout) to frame order and back. Errors when the
// level lengths do not form whole frames or a code is out of range.
Expected<std::vector<int32_t>> snac_levels_to_frames(const SnacConfig& c, const std::vector<std::vector<int32_t>>& levels);
std::vector<std::vector<int32_t>> snac_frames_to_levels(const SnacConfig& c, std::span<const int32_t> frames);

}  // namespace tutti::codecs
