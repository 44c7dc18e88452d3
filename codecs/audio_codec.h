// The audio codec interface: what the transports, the decoder actor and the CLI see of a
// modality's codec. The modality's codec type in the file (tutti.<m>.transform) picks the
// implementation from one table (make_audio_codec): "mdct" (MDCT frames + residual VQ,
// audio_tokenizer.*) or "snac" (the neural codec, snac.*). Sample rate, frame size and
// token rate come from here; nothing downstream assumes them.
//
// Codes are in frame order: codes_per_frame() per frame, the level of each slot given by
// frame_levels(). Both directions stream; an offline decode is one push and a finish.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "pipeline/expected.h"
#include "pipeline/gguf.h"
#include "pipeline/model_config.h"

namespace tutti {
class ThreadPool;
}

namespace tutti::codecs {

struct Codebooks;

class AudioCodeEncoder {
 public:
  virtual ~AudioCodeEncoder() = default;
  // Samples at the codec's rate; the codes of every frame now complete (frame order).
  virtual std::vector<int32_t> push(std::span<const float> samples) = 0;
  // End of the stream: the codes of what is left (padded to a whole frame).
  virtual std::vector<int32_t> finish() = 0;
};

class AudioCodeDecoder {
 public:
  virtual ~AudioCodeDecoder() = default;
  // Codes in frame order (a partial frame waits); the samples now complete. An Error for a
  // code outside the codebook, after which the decoder is unusable.
  virtual Expected<std::vector<float>> push(std::span<const int32_t> codes) = 0;
  // End of the codes: the remaining samples.
  virtual std::vector<float> finish() = 0;
};

struct AudioDecodeOptions {
  bool zero_noise = false;     // SNAC: noise blocks add nothing (exact comparisons)
  uint64_t seed = 0;           // SNAC: the noise blocks' noise
  ThreadPool* pool = nullptr;  // SNAC: products split over these threads
};

class AudioCodec {
 public:
  virtual ~AudioCodec() = default;
  virtual const char* kind() const = 0;          // "mdct" | "snac"
  virtual int sample_rate() const = 0;
  virtual int frame_samples() const = 0;         // samples one frame of codes covers
  virtual int codes_per_frame() const = 0;       // tokens per frame
  virtual std::vector<int> frame_levels() const = 0;  // level of each slot of a frame
  int levels() const;
  double tokens_per_second() const { return double(sample_rate()) / frame_samples() * codes_per_frame(); }
  // Samples of look-ahead the streaming decoder needs before it can emit a sample (its
  // algorithmic latency), and the same for the encoder's codes.
  virtual int decoder_latency_samples() const = 0;
  virtual int encoder_latency_samples() const = 0;
  virtual std::unique_ptr<AudioCodeEncoder> encoder(ThreadPool* pool = nullptr) const = 0;
  virtual std::unique_ptr<AudioCodeDecoder> decoder(const AudioDecodeOptions& options = {}) const = 0;
  // The residual-VQ codebooks the codes index, for codecs built on them (mdct); null for
  // SNAC, whose quantizer lives in its network. Read by the canaries' fault injection.
  virtual const Codebooks* codebooks() const { return nullptr; }

  // One-shot helpers over the streaming objects.
  std::vector<int32_t> encode(std::span<const float> samples, ThreadPool* pool = nullptr) const;
  Expected<std::vector<float>> decode(std::span<const int32_t> codes, const AudioDecodeOptions& options = {}) const;
};

// The codec of an audio-like modality (audio, music) of a unified file. Errors are one line
// naming the file and what is wrong with the codec's tensors or keys.
Expected<std::shared_ptr<const AudioCodec>> make_audio_codec(const GgufFile& file, const ModalityInfo& modality);

struct SnacModel;
std::shared_ptr<const AudioCodec> make_snac_codec(std::shared_ptr<const SnacModel> model);

// The codec types make_audio_codec knows, for messages and `tutti model info`.
std::vector<std::string> audio_codec_kinds();

}  // namespace tutti::codecs
