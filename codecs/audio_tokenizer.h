// The audio and music tokenizer: MDCT frames of `frame_size` new samples (20 ms at 24 kHz
// for audio, 40 ms at 48 kHz for music), each frame one code per residual stage. Streams in
// both directions: samples in, codes out frame by frame; codes in, samples out frame by
// frame (one frame behind: the overlap-add needs the next frame).
//
// Codes are per stage (0 .. codebook size - 1); a modality's vocabulary ids are
// token_offset + stage * size + code (codes_to_tokens / tokens_to_codes).
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "codecs/mdct.h"
#include "codecs/rvq.h"
#include "pipeline/model_config.h"

namespace tutti::codecs {

class AudioEncoder {
 public:
  // codebooks.dim must equal frame_size.
  AudioEncoder(int frame_size, std::shared_ptr<const Codebooks> codebooks);
  // Codes of every frame completed by these samples (stages per frame, stage 0 first).
  std::vector<int32_t> push(std::span<const float> samples);
  // Ends the stream: the last partial frame padded with silence, plus one frame of silence
  // so a decoder can finish the tail. Codes of those frames.
  std::vector<int32_t> finish();
  int frame_size() const { return mdct_.n(); }

 private:
  std::vector<int32_t> encode_frame(std::span<const float> frame);
  MdctAnalyzer mdct_;
  std::shared_ptr<const Codebooks> cb_;
  std::vector<float> pending_, coefficients_;
};

class AudioDecoder {
 public:
  AudioDecoder(int frame_size, std::shared_ptr<const Codebooks> codebooks);
  // Samples of every frame completed by these codes (frame_size per whole frame of codes;
  // the first frame's output is the stream's first frame_size samples, which the encoder's
  // analysis delays by one frame).
  std::vector<float> push(std::span<const int32_t> codes);
  // The stream ended: the overlap the last frame left (frame_size samples, its second half).
  std::vector<float> finish();

 private:
  MdctSynthesizer mdct_;
  std::shared_ptr<const Codebooks> cb_;
  std::vector<int32_t> pending_;
  std::vector<float> coefficients_;
  bool primed_ = false;  // the first synthesized frame holds only the delay: dropped
};

// Vocabulary ids of per-stage codes (frames of `stages` codes), and back. tokens_to_codes
// returns an Error for an id outside the modality's code range or in the wrong stage slot.
std::vector<int32_t> codes_to_tokens(const ModalityInfo& m, std::span<const int32_t> codes);
Expected<std::vector<int32_t>> tokens_to_codes(const ModalityInfo& m, std::span<const int32_t> tokens);

// Segmental SNR in dB of `decoded` against `reference` (aligned): the mean over frames of
// `frame` samples whose reference energy is above `silence` of each frame's SNR, clamped to
// [-10, 35] dB as is usual.
double segmental_snr_db(std::span<const float> reference, std::span<const float> decoded, int frame, double silence = 1e-6);

}  // namespace tutti::codecs
