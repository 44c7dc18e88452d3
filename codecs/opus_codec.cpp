#include "codecs/opus_codec.h"

#include <opus/opus.h>

#include <string>

namespace tutti::codecs {

namespace {
Error opus_error(const char* call, int code) { return Error{std::string("opus: ") + call + ": " + opus_strerror(code)}; }
}  // namespace

Status OpusFormat::validate() const {
  if (sample_rate != 48000 && sample_rate != 24000)
    return Error{"opus: sample rate " + std::to_string(sample_rate) + " Hz is not supported (48000 or 24000)"};
  if (bitrate < 6000 || bitrate > 510000) return Error{"opus: bitrate must be 6000..510000 bits/s"};
  return Status::Ok();
}

Expected<std::unique_ptr<OpusFrameEncoder>> OpusFrameEncoder::create(const OpusFormat& f) {
  if (Status s = f.validate(); !s) return s.error();
  int err = OPUS_OK;
  OpusEncoder* enc = opus_encoder_create(f.sample_rate, 1, OPUS_APPLICATION_AUDIO, &err);
  if (err != OPUS_OK || !enc) return opus_error("opus_encoder_create", err);
  std::unique_ptr<OpusFrameEncoder> e(new OpusFrameEncoder(enc, f));
  if (int r = opus_encoder_ctl(enc, OPUS_SET_BITRATE(f.bitrate)); r != OPUS_OK) return opus_error("OPUS_SET_BITRATE", r);
  return e;
}

OpusFrameEncoder::~OpusFrameEncoder() { opus_encoder_destroy(enc_); }

Expected<std::vector<uint8_t>> OpusFrameEncoder::encode(std::span<const float> frame) {
  if (int(frame.size()) != format_.frame_samples())
    return Error{"opus: a frame is " + std::to_string(format_.frame_samples()) + " samples, got " + std::to_string(frame.size())};
  std::vector<uint8_t> packet(4000);  // the largest packet libopus recommends for one frame
  const int n = opus_encode_float(enc_, frame.data(), format_.frame_samples(), packet.data(), int(packet.size()));
  if (n < 0) return opus_error("opus_encode_float", n);
  packet.resize(size_t(n));
  return packet;
}

Expected<std::unique_ptr<OpusFrameDecoder>> OpusFrameDecoder::create(const OpusFormat& f) {
  if (Status s = f.validate(); !s) return s.error();
  int err = OPUS_OK;
  OpusDecoder* dec = opus_decoder_create(f.sample_rate, 1, &err);
  if (err != OPUS_OK || !dec) return opus_error("opus_decoder_create", err);
  return std::unique_ptr<OpusFrameDecoder>(new OpusFrameDecoder(dec, f));
}

OpusFrameDecoder::~OpusFrameDecoder() { opus_decoder_destroy(dec_); }

Expected<std::vector<float>> OpusFrameDecoder::run(const uint8_t* data, int bytes) {
  // A packet may hold up to 120 ms: room for that, trimmed to what came out. Concealment
  // must ask for exactly the missing duration (one 20 ms frame).
  std::vector<float> pcm(size_t(data ? format_.sample_rate / 1000 * 120 : format_.frame_samples()));
  const int n = opus_decode_float(dec_, data, bytes, pcm.data(), int(pcm.size()), 0);
  if (n < 0) return opus_error(data ? "opus_decode_float" : "opus_decode_float (concealment)", n);
  pcm.resize(size_t(n));
  return pcm;
}

Expected<std::vector<float>> OpusFrameDecoder::decode(std::span<const uint8_t> packet) {
  if (packet.empty()) return Error{"opus: an empty packet"};
  return run(packet.data(), int(packet.size()));
}

Expected<std::vector<float>> OpusFrameDecoder::conceal() {
  return run(nullptr, 0);
}

}  // namespace tutti::codecs
