// Opus (libopus) for 20 ms mono frames at 48 or 24 kHz: an encoder, and a decoder that
// conceals a lost packet (packet-loss concealment) so a stream with a gap still plays.
// Every libopus error becomes an Error naming the call and libopus's reason.
//
// Ownership: each object owns its libopus state; not thread-safe (one per stream).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "pipeline/expected.h"

struct OpusEncoder;
struct OpusDecoder;

namespace tutti::codecs {

struct OpusFormat {
  int sample_rate = 48000;  // 48000 or 24000
  int bitrate = 32000;      // bits per second (encoder)
  int frame_samples() const { return sample_rate / 50; }  // 20 ms
  Status validate() const;
};

class OpusFrameEncoder {
 public:
  static Expected<std::unique_ptr<OpusFrameEncoder>> create(const OpusFormat& format);
  ~OpusFrameEncoder();
  // One 20 ms frame of samples in [-1, 1] (exactly frame_samples()) to one packet.
  Expected<std::vector<uint8_t>> encode(std::span<const float> frame);
  const OpusFormat& format() const { return format_; }

 private:
  OpusFrameEncoder(OpusEncoder* enc, OpusFormat f) : enc_(enc), format_(f) {}
  OpusEncoder* enc_;
  OpusFormat format_;
};

class OpusFrameDecoder {
 public:
  static Expected<std::unique_ptr<OpusFrameDecoder>> create(const OpusFormat& format);
  ~OpusFrameDecoder();
  // One packet to its 20 ms of samples; a corrupt packet is an Error (the stream goes on).
  Expected<std::vector<float>> decode(std::span<const uint8_t> packet);
  // 20 ms in place of a packet that never arrived, extrapolated from what came before.
  Expected<std::vector<float>> conceal();
  const OpusFormat& format() const { return format_; }

 private:
  OpusFrameDecoder(OpusDecoder* dec, OpusFormat f) : dec_(dec), format_(f) {}
  Expected<std::vector<float>> run(const uint8_t* data, int bytes);
  OpusDecoder* dec_;
  OpusFormat format_;
};

}  // namespace tutti::codecs
