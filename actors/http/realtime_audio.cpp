#include "actors/http/realtime_audio.hpp"

#include "codecs/opus_codec.h"

#include <algorithm>
#include <cmath>

namespace tutti::http {

std::optional<AudioWire> parse_audio_wire(const nlohmann::json& v) {
  std::string name;
  if (v.is_string()) {
    name = v.get<std::string>();
  } else if (v.is_object() && v.contains("type") && v["type"].is_string()) {
    const std::string t = v["type"];
    if (t == "audio/pcm") {
      if (v.contains("rate") && (!v["rate"].is_number_integer() || v["rate"].get<int>() != 24000)) return std::nullopt;
      return AudioWire::Pcm16;
    }
    if (t == "audio/pcmu") return AudioWire::G711Ulaw;
    if (t == "audio/pcma") return AudioWire::G711Alaw;
    return std::nullopt;
  } else {
    return std::nullopt;
  }
  if (name == "pcm16") return AudioWire::Pcm16;
  if (name == "g711_ulaw") return AudioWire::G711Ulaw;
  if (name == "g711_alaw") return AudioWire::G711Alaw;
  return std::nullopt;
}

const char* audio_wire_name(AudioWire w) { return w == AudioWire::Pcm16 ? "pcm16" : w == AudioWire::G711Ulaw ? "g711_ulaw" : "g711_alaw"; }
int audio_wire_rate(AudioWire w) { return w == AudioWire::Pcm16 ? 24000 : 8000; }

Expected<std::vector<uint8_t>> base64_decode(const std::string& text) {
  std::vector<uint8_t> out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  size_t pad = 0;
  for (char ch : text) {
    int v;
    if (ch >= 'A' && ch <= 'Z') v = ch - 'A';
    else if (ch >= 'a' && ch <= 'z') v = ch - 'a' + 26;
    else if (ch >= '0' && ch <= '9') v = ch - '0' + 52;
    else if (ch == '+') v = 62;
    else if (ch == '/') v = 63;
    else if (ch == '=') { ++pad; continue; }
    else return Error{"the audio is not valid base64"};
    if (pad) return Error{"the audio is not valid base64 (data after padding)"};
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(uint8_t(acc >> bits));
    }
  }
  if (pad > 2) return Error{"the audio is not valid base64 (padding)"};
  return out;
}

namespace {
int16_t to16(float v) { return int16_t(std::lround(std::clamp(v, -1.f, 1.f) * 32767.f)); }
}  // namespace

// G.711 µ-law and A-law, as the reference implementation (Sun's g711.c) does them.
namespace {
int segment(int v, const int* ends) {
  for (int i = 0; i < 8; ++i)
    if (v <= ends[i]) return i;
  return 8;
}
}  // namespace

uint8_t linear_to_ulaw(int16_t sample) {
  static const int ends[8] = {0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF};
  int v = sample >> 2, mask = 0xFF;
  if (v < 0) v = -v, mask = 0x7F;
  v = std::min(v, 8159) + (0x84 >> 2);
  const int seg = segment(v, ends);
  if (seg >= 8) return uint8_t(0x7F ^ mask);
  return uint8_t(((seg << 4) | ((v >> (seg + 1)) & 0xF)) ^ mask);
}
int16_t ulaw_to_linear(uint8_t u) {
  u = uint8_t(~u);
  int t = ((u & 0x0F) << 3) + 0x84;
  t <<= (u & 0x70) >> 4;
  return int16_t((u & 0x80) ? (0x84 - t) : (t - 0x84));
}
uint8_t linear_to_alaw(int16_t sample) {
  static const int ends[8] = {0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF};
  int v = sample >> 3, mask = 0xD5;
  if (v < 0) v = -v - 1, mask = 0x55;
  const int seg = segment(v, ends);
  if (seg >= 8) return uint8_t(0x7F ^ mask);
  const int a = (seg << 4) | (seg < 2 ? (v >> 1) & 0x0F : (v >> seg) & 0x0F);
  return uint8_t(a ^ mask);
}
int16_t alaw_to_linear(uint8_t a) {
  a ^= 0x55;
  int t = (a & 0x0F) << 4;
  const int seg = (a & 0x70) >> 4;
  if (seg == 0) t += 8;
  else if (seg == 1) t += 0x108;
  else t = (t + 0x108) << (seg - 1);
  return int16_t((a & 0x80) ? t : -t);
}

std::vector<float> resample_linear(std::span<const float> in, int from, int to) {
  if (from == to || in.empty()) return std::vector<float>(in.begin(), in.end());
  const size_t n = size_t(double(in.size()) * to / from);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    const double x = double(i) * from / to;
    const size_t k = size_t(x);
    const double f = x - double(k);
    const float a = in[std::min(k, in.size() - 1)], b = in[std::min(k + 1, in.size() - 1)];
    out[i] = float(a + (b - a) * f);
  }
  return out;
}

Expected<std::vector<float>> decode_wire_audio(const std::string& text, AudioWire w) {
  auto bytes = base64_decode(text);
  if (!bytes) return bytes.error();
  std::vector<float> out;
  if (w == AudioWire::Pcm16) {
    if (bytes->size() % 2) return Error{"PCM16 audio must be a whole number of 16-bit samples"};
    out.resize(bytes->size() / 2);
    for (size_t i = 0; i < out.size(); ++i)
      out[i] = float(int16_t(uint16_t((*bytes)[2 * i]) | uint16_t((*bytes)[2 * i + 1]) << 8)) / 32768.f;
    return out;
  }
  out.resize(bytes->size());
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = float(w == AudioWire::G711Ulaw ? ulaw_to_linear((*bytes)[i]) : alaw_to_linear((*bytes)[i])) / 32768.f;
  return out;
}

std::string encode_wire_audio(std::span<const float> samples, AudioWire w) {
  std::vector<uint8_t> bytes;
  if (w == AudioWire::Pcm16) {
    bytes.resize(samples.size() * 2);
    for (size_t i = 0; i < samples.size(); ++i) {
      const int16_t v = to16(samples[i]);
      bytes[2 * i] = uint8_t(v), bytes[2 * i + 1] = uint8_t(uint16_t(v) >> 8);
    }
  } else {
    bytes.resize(samples.size());
    for (size_t i = 0; i < samples.size(); ++i)
      bytes[i] = w == AudioWire::G711Ulaw ? linear_to_ulaw(to16(samples[i])) : linear_to_alaw(to16(samples[i]));
  }
  return base64_encode(bytes);
}

namespace {
// The end of an audio answer, as both Realtime outputs report it.
void finish_chunk(const actors::media_delta& d, MediaChunk& c) {
  if (!d.last()) return;
  c.done = true;
}

class WireAudioOutput final : public MediaOutput {
 public:
  WireAudioOutput(AudioWire w, int model_rate) : w_(w), rate_(model_rate) {}
  MediaChunk on_delta(const actors::media_delta& d) override {
    MediaChunk c;
    if (!d.samples.empty()) {
      const std::string b64 = encode_wire_audio(resample_linear(d.samples, rate_, audio_wire_rate(w_)), w_);
      c.bytes.assign(b64.begin(), b64.end());
      c.frames = int(d.samples.size());
    }
    finish_chunk(d, c);
    return c;
  }

 private:
  AudioWire w_;
  int rate_;
};
}  // namespace

std::unique_ptr<MediaOutput> make_wire_audio_output(AudioWire w, int model_rate) { return std::make_unique<WireAudioOutput>(w, model_rate); }

namespace {
class OpusAudioOutput final : public MediaOutput {
 public:
  explicit OpusAudioOutput(int model_rate) : rate_(model_rate) {
    codecs::OpusFormat f;
    f.sample_rate = 48000;
    auto e = codecs::OpusFrameEncoder::create(f);
    if (e) enc_ = std::move(e).value();
  }
  MediaChunk on_delta(const actors::media_delta& d) override {
    MediaChunk c;
    if (!enc_) c.error = "opus: the encoder could not be created";
    const auto up = resample_linear(d.samples, rate_, 48000);
    pending_.insert(pending_.end(), up.begin(), up.end());
    c.frames = int(d.samples.size());
    if (d.last() && !pending_.empty()) pending_.resize((pending_.size() + 959) / 960 * 960, 0.f);
    size_t at = 0;
    for (; enc_ && at + 960 <= pending_.size(); at += 960) {
      auto packet = enc_->encode(std::span<const float>(pending_.data() + at, 960));
      if (!packet) {
        c.error = packet.error().message;
        break;
      }
      c.bytes.push_back(uint8_t(packet->size()));
      c.bytes.push_back(uint8_t(packet->size() >> 8));
      c.bytes.insert(c.bytes.end(), packet->begin(), packet->end());
    }
    pending_.erase(pending_.begin(), pending_.begin() + long(at));
    const std::string encode_error = c.error;
    finish_chunk(d, c);
    if (!encode_error.empty() && c.error.empty()) c.error = encode_error;
    return c;
  }

 private:
  int rate_;
  std::unique_ptr<codecs::OpusFrameEncoder> enc_;
  std::vector<float> pending_;
};
}  // namespace

std::unique_ptr<MediaOutput> make_opus_audio_output(int model_rate) { return std::make_unique<OpusAudioOutput>(model_rate); }

namespace {
class JpegFrameOutput final : public MediaOutput {
 public:
  MediaChunk on_delta(const actors::media_delta& d) override {
    MediaChunk c;
    if (!d.rgb.empty()) {
      auto jpeg = codecs::encode_image("jpeg", d.width, d.height, d.rgb);
      if (!jpeg) {
        c.error = jpeg.error().message;
      } else {
        for (int k = 0; k < 4; ++k) c.bytes.push_back(uint8_t(jpeg->size() >> (8 * k)));
        c.bytes.insert(c.bytes.end(), jpeg->begin(), jpeg->end());
        c.frames = 1;
      }
    }
    const std::string encode_error = c.error;
    finish_chunk(d, c);
    if (!encode_error.empty() && c.error.empty()) c.error = encode_error;
    return c;
  }
};
}  // namespace

std::unique_ptr<MediaOutput> make_jpeg_frame_output() { return std::make_unique<JpegFrameOutput>(); }

std::vector<std::string> split_length_prefixed(const std::vector<uint8_t>& b, int length_bytes) {
  std::vector<std::string> out;
  const size_t w = size_t(length_bytes);
  size_t at = 0;
  while (at + w <= b.size()) {
    size_t n = 0;
    for (size_t k = 0; k < w; ++k) n |= size_t(b[at + k]) << (8 * k);
    if (n > b.size() - at - w) break;
    out.emplace_back(reinterpret_cast<const char*>(b.data() + at + w), n);
    at += w + n;
  }
  return out;
}

}  // namespace tutti::http
