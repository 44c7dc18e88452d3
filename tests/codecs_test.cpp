// Media at the edges: Opus frames (round trip quality, packet-loss concealment, bad packets)
// and FFmpeg input from a byte stream that arrives in pieces (every container the tests can
// make with the ffmpeg command line, truncated and corrupt input, an aborted stream).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>
#include <thread>

#include "codecs/media_decoder.h"
#include "codecs/opus_codec.h"
#include "http_client.h"
#include "test_support.h"

namespace tutti::codecs {
namespace {

constexpr double kPi = 3.14159265358979323846;

std::vector<float> two_tones(int rate, double seconds) {
  std::vector<float> s(size_t(rate * seconds));
  for (size_t i = 0; i < s.size(); ++i)
    s[i] = float(0.4 * std::sin(2 * kPi * 440 * double(i) / rate) + 0.2 * std::sin(2 * kPi * 1000 * double(i) / rate));
  return s;
}

// Power of `x` at `freq` (Goertzel), normalised by length.
double tone_power(std::span<const float> x, int rate, double freq) {
  const double w = 2 * kPi * freq / rate, c = 2 * std::cos(w);
  double s1 = 0, s2 = 0;
  for (float v : x) {
    const double s0 = v + c * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  return (s1 * s1 + s2 * s2 - c * s1 * s2) / double(x.size() * x.size());
}

// SNR of `got` against `ref` at the best alignment (a codec delays its output).
double aligned_snr_db(const std::vector<float>& ref, const std::vector<float>& got, int max_lag) {
  double best = -1e9;
  const size_t begin = 2000, end = ref.size() - size_t(max_lag) - 2000;
  for (int lag = 0; lag <= max_lag; ++lag) {
    double sig = 0, err = 0;
    for (size_t i = begin; i < end; ++i) {
      const double d = double(got[i + size_t(lag)]) - ref[i];
      sig += double(ref[i]) * ref[i];
      err += d * d;
    }
    best = std::max(best, 10 * std::log10(sig / std::max(err, 1e-20)));
  }
  return best;
}

TEST(Opus, RoundTripKeepsTheSignalAtBothRates) {
  for (int rate : {48000, 24000}) {
    OpusFormat f;
    f.sample_rate = rate;
    f.bitrate = 48000;
    auto enc = OpusFrameEncoder::create(f);
    auto dec = OpusFrameDecoder::create(f);
    ASSERT_TRUE(enc && dec);
    const auto in = two_tones(rate, 1.0);
    std::vector<float> out;
    for (size_t at = 0; at + size_t(f.frame_samples()) <= in.size(); at += size_t(f.frame_samples())) {
      auto packet = (*enc)->encode(std::span<const float>(in.data() + at, size_t(f.frame_samples())));
      ASSERT_TRUE(packet) << packet.error().message;
      EXPECT_LT(packet->size(), 400u);
      auto pcm = (*dec)->decode(*packet);
      ASSERT_TRUE(pcm) << pcm.error().message;
      ASSERT_EQ(int(pcm->size()), f.frame_samples());
      out.insert(out.end(), pcm->begin(), pcm->end());
    }
    const double snr = aligned_snr_db(in, out, rate / 50);
    std::printf("opus %d Hz, 48 kbit/s: SNR %.1f dB\n", rate, snr);
    EXPECT_GT(snr, 12.0) << rate;
  }
}

TEST(Opus, ConcealsALostPacketAndGoesOn) {
  OpusFormat f;
  auto enc = OpusFrameEncoder::create(f);
  auto dec = OpusFrameDecoder::create(f);
  ASSERT_TRUE(enc && dec);
  const auto in = two_tones(f.sample_rate, 1.0);
  const size_t n = size_t(f.frame_samples());
  double concealed_rms = -1, signal_rms = 0;
  for (size_t k = 0; k < 40; ++k) {
    auto packet = (*enc)->encode(std::span<const float>(in.data() + k * n, n));
    ASSERT_TRUE(packet);
    if (k == 25) {  // lost in transit
      auto pcm = (*dec)->conceal();
      ASSERT_TRUE(pcm) << pcm.error().message;
      ASSERT_EQ(pcm->size(), n);
      double e = 0;
      for (float v : *pcm) {
        ASSERT_TRUE(std::isfinite(v));
        e += double(v) * v;
      }
      concealed_rms = std::sqrt(e / double(n));
      continue;
    }
    auto pcm = (*dec)->decode(*packet);
    ASSERT_TRUE(pcm) << pcm.error().message;
    if (k == 24) {
      double e = 0;
      for (float v : *pcm) e += double(v) * v;
      signal_rms = std::sqrt(e / double(n));
    }
  }
  EXPECT_GT(concealed_rms, 0.25 * signal_rms) << "concealment should continue the tone, not drop to silence";
}

TEST(Opus, BadPacketsAndFormatsAreErrors) {
  OpusFormat bad;
  bad.sample_rate = 44100;
  auto e = OpusFrameEncoder::create(bad);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("44100"), std::string::npos);
  auto dec = OpusFrameDecoder::create(OpusFormat{});
  ASSERT_TRUE(dec);
  const uint8_t code3_without_count[] = {0xFF};
  auto r = (*dec)->decode(code3_without_count);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("opus"), std::string::npos);
  auto enc = OpusFrameEncoder::create(OpusFormat{});
  ASSERT_TRUE(enc);
  std::vector<float> short_frame(100);
  EXPECT_FALSE((*enc)->encode(short_frame));
  // The decoder still works after the bad packet.
  std::vector<float> frame(960, 0.1f);
  auto p = (*enc)->encode(frame);
  ASSERT_TRUE(p);
  EXPECT_TRUE((*dec)->decode(*p));
}

// Media files made with the ffmpeg command line (installed by tools/install-deps.sh).
std::string make_media(const std::string& name, const std::string& ffmpeg_args) {
  const std::string path = std::string(TUTTI_BINARY_DIR) + "/test-data/" + name;
  std::ifstream exists(path);
  if (exists.good()) return path;
  const std::string cmd = "mkdir -p '" + std::string(TUTTI_BINARY_DIR) + "/test-data' && ffmpeg -nostdin -loglevel error -y " +
                          ffmpeg_args + " '" + path + ".tmp' && mv '" + path + ".tmp' '" + path + "'";
  if (std::system(cmd.c_str()) != 0) return "";
  return path;
}
std::string tone_file(const std::string& ext, const std::string& codec_args) {
  return make_media("tone." + ext, "-f lavfi -i 'sine=frequency=440:sample_rate=44100:duration=1' -ac 2 " + codec_args + " -f " +
                                       (ext == "ogg" ? "ogg" : ext == "mp3" ? "mp3" : ext == "flac" ? "flac" : ext == "opus" ? "ogg" : "wav"));
}

// Feeds a file through a small ByteQueue in random-sized pieces from another thread, as a
// socket would, while the decoder runs.
Status decode_in_pieces(const std::vector<uint8_t>& bytes, int rate, std::vector<float>& out, size_t abort_after = SIZE_MAX) {
  ByteQueue q(4096);
  std::thread producer([&] {
    std::mt19937 rng(5);
    size_t at = 0;
    while (at < bytes.size()) {
      if (at >= abort_after) {
        q.abort();
        return;
      }
      const size_t n = std::min(bytes.size() - at, size_t(1 + rng() % 3000));
      if (!q.push(std::span<const uint8_t>(bytes.data() + at, n))) return;
      at += n;
    }
    q.close();
  });
  Status s = decode_audio(q, rate, [&](std::span<const float> c) { out.insert(out.end(), c.begin(), c.end()); });
  q.abort();  // the decoder may stop early (an error): let the producer go
  producer.join();
  return s;
}

TEST(MediaDecoder, DecodesEveryAudioContainerFromAStreamInPieces) {
  const std::pair<std::string, std::string> formats[] = {
      {"wav", "-c:a pcm_s16le"}, {"mp3", "-c:a libmp3lame -b:a 128k"}, {"ogg", "-c:a libvorbis"},
      {"flac", "-c:a flac"}, {"opus", "-c:a libopus -b:a 64k"}};
  for (const auto& [ext, args] : formats) {
    const std::string path = tone_file(ext, args);
    ASSERT_FALSE(path.empty()) << "ffmpeg could not make a ." << ext << " file";
    const std::string data = test::read_file(path);
    const std::vector<uint8_t> bytes(data.begin(), data.end());
    std::vector<float> pcm;
    Status s = decode_in_pieces(bytes, 24000, pcm);
    ASSERT_TRUE(s.ok()) << ext << ": " << s.message();
    // One second of 440 Hz, resampled to 24 kHz mono (lossy codecs pad a little).
    EXPECT_NEAR(double(pcm.size()) / 24000, 1.0, 0.06) << ext;
    const std::span<const float> middle(pcm.data() + 4000, 12000);
    EXPECT_GT(tone_power(middle, 24000, 440), 100 * tone_power(middle, 24000, 1000)) << ext;
    EXPECT_GT(tone_power(middle, 24000, 440), 0.001) << ext;
  }
}

TEST(MediaDecoder, CorruptTruncatedAndAbortedStreamsEndWithErrorsOnly) {
  const std::string path = tone_file("mp3", "-c:a libmp3lame -b:a 128k");
  ASSERT_FALSE(path.empty());
  const std::string data = test::read_file(path);
  const std::vector<uint8_t> mp3(data.begin(), data.end());
  // Garbage: a clear FFmpeg error.
  std::vector<uint8_t> garbage(20000);
  std::mt19937 rng(3);
  for (auto& b : garbage) b = uint8_t(rng());
  std::vector<float> pcm;
  Status s = decode_in_pieces(garbage, 24000, pcm);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("FFmpeg"), std::string::npos) << s.message();
  // Truncated half-way: whatever came before the cut, no crash.
  pcm.clear();
  const std::vector<uint8_t> half(mp3.begin(), mp3.begin() + long(mp3.size() / 2));
  s = decode_in_pieces(half, 24000, pcm);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_NEAR(double(pcm.size()) / 24000, 0.5, 0.1);
  // Cut inside the header, and bytes flipped all over: errors or partial audio, never a crash.
  for (size_t cut : {size_t(10), size_t(100), size_t(700)}) {
    pcm.clear();
    (void)decode_in_pieces(std::vector<uint8_t>(mp3.begin(), mp3.begin() + long(cut)), 24000, pcm);
  }
  for (int trial = 0; trial < 30; ++trial) {
    std::vector<uint8_t> flipped = mp3;
    for (int k = 0; k < 40; ++k) flipped[rng() % flipped.size()] ^= uint8_t(1 + rng() % 255);
    pcm.clear();
    (void)decode_in_pieces(flipped, 24000, pcm);
    EXPECT_LT(pcm.size(), size_t(2 * 24000));
  }
  // The session ends mid-stream: the decoder stops with the reason.
  pcm.clear();
  s = decode_in_pieces(mp3, 24000, pcm, mp3.size() / 3);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("abort"), std::string::npos) << s.message();
  // Audio asked of a file without any: said so.
  const std::string png = make_media("pattern.png", "-f lavfi -i testsrc=size=64x48:rate=1 -frames:v 1 -c:v png -f image2");
  ASSERT_FALSE(png.empty());
  const std::string img = test::read_file(png);
  auto none = decode_audio_bytes(std::vector<uint8_t>(img.begin(), img.end()), 24000);
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().message.find("no audio stream"), std::string::npos) << none.error().message;
}

// Found by the fuzz target: a Cryo APC header that claims 2^31 Hz made the resampler ask
// for 2 GB. Declared rates and channel counts are checked before anything is sized.
TEST(MediaDecoder, AHeaderClaimingAnAbsurdRateIsRefusedBeforeAnythingIsSized) {
  const std::string apc = "CRYO_APCrmat\":\"mp3\".\021:\"hellose_format\":\"mp3\",\"speed\":2.5}\n";
  auto r = decode_audio_bytes(std::vector<uint8_t>(apc.begin(), apc.end()), 24000);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("sample rate"), std::string::npos) << r.error().message;
}

TEST(MediaDecoder, DecodesVideoAndImagesScaledToTheModelsSize) {
  const std::string ts = make_media("pattern.ts", "-f lavfi -i testsrc=size=160x120:rate=10 -t 1 -c:v libx264 -pix_fmt yuv420p -f mpegts");
  const std::string png = make_media("pattern.png", "-f lavfi -i testsrc=size=64x48:rate=1 -frames:v 1 -c:v png -f image2");
  ASSERT_FALSE(ts.empty());
  ASSERT_FALSE(png.empty());
  for (const auto& [path, frames] : {std::pair{ts, 10}, std::pair{png, 1}}) {
    const std::string data = test::read_file(path);
    ByteQueue q(data.size() + 1);
    ASSERT_TRUE(q.push(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size())));
    q.close();
    int count = 0;
    double spread = 0;
    Status s = decode_video(q, 32, 24, [&](const VideoFrame& f) {
      ++count;
      ASSERT_EQ(f.rgb.size(), size_t(32 * 24 * 3));
      const auto [lo, hi] = std::minmax_element(f.rgb.begin(), f.rgb.end());
      spread = std::max(spread, double(*hi - *lo));
    });
    ASSERT_TRUE(s.ok()) << path << ": " << s.message();
    EXPECT_EQ(count, frames) << path;
    EXPECT_GT(spread, 100) << "a test pattern has strong colours";
  }
}

}  // namespace
}  // namespace tutti::codecs

#include "codecs/media_encoder.h"

namespace tutti::codecs {
namespace {

// What ffprobe (FFmpeg's own tool, not our decoder) says of a file: "codec,rate" or similar.
std::string ffprobe(const std::vector<uint8_t>& bytes, const std::string& name, const std::string& entries) {
  return test::ffprobe(std::string(bytes.begin(), bytes.end()), "out-" + name, entries);
}

TEST(MediaEncoder, StreamsEveryAudioFormatThatFfprobeAndOurDecoderRead) {
  const auto tone = two_tones(24000, 1.0);
  const std::pair<AudioFormat, std::string> expect[] = {
      {AudioFormat::Wav, "pcm_s16le,24000"}, {AudioFormat::Opus, "opus,48000"}, {AudioFormat::Mp3, "mp3,24000"},
      {AudioFormat::Aac, "aac,24000"}, {AudioFormat::Flac, "flac,24000"}};
  for (const auto& [format, probe] : expect) {
    std::vector<uint8_t> bytes;
    size_t before_finish = 0;
    auto enc = make_audio_encoder(format, 24000, [&](std::span<const uint8_t> b) { bytes.insert(bytes.end(), b.begin(), b.end()); });
    ASSERT_TRUE(enc) << enc.error().message;
    std::mt19937 rng(1);
    for (size_t at = 0; at < tone.size();) {
      const size_t n = std::min(tone.size() - at, size_t(1 + rng() % 2000));
      ASSERT_TRUE((*enc)->push(std::span<const float>(tone.data() + at, n)).ok());
      at += n;
    }
    before_finish = bytes.size();
    ASSERT_TRUE((*enc)->finish().ok()) << audio_format_name(format);
    EXPECT_GT(before_finish, bytes.size() / 4) << audio_format_name(format) << ": bytes should leave while encoding";
    EXPECT_EQ(ffprobe(bytes, std::string("a.") + audio_format_name(format), "stream=codec_name,sample_rate"), probe);
    auto back = decode_audio_bytes(bytes, 24000);
    ASSERT_TRUE(back) << audio_format_name(format) << ": " << back.error().message;
    EXPECT_NEAR(double(back->size()) / 24000, 1.0, 0.08) << audio_format_name(format);
    const std::span<const float> mid(back->data() + 4000, 12000);
    EXPECT_GT(tone_power(mid, 24000, 440), 0.01) << audio_format_name(format);
  }
  // Raw PCM: 16-bit little-endian samples, exactly.
  std::vector<uint8_t> pcm;
  auto enc = make_audio_encoder(AudioFormat::Pcm, 24000, [&](std::span<const uint8_t> b) { pcm.insert(pcm.end(), b.begin(), b.end()); });
  ASSERT_TRUE(enc);
  ASSERT_TRUE((*enc)->push(tone).ok());
  ASSERT_TRUE((*enc)->finish().ok());
  ASSERT_EQ(pcm.size(), tone.size() * 2);
  const int16_t s100 = int16_t(pcm[200] | (pcm[201] << 8));
  EXPECT_NEAR(s100 / 32767.0, tone[100], 1e-4);
  EXPECT_FALSE(parse_audio_format("ogg-vorbis"));
}

TEST(MediaEncoder, ImagesAndVideoThatFfprobeReads) {
  std::vector<uint8_t> rgb(64 * 48 * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = uint8_t((i * 7) % 251);
  auto png = encode_image("png", 64, 48, rgb);
  ASSERT_TRUE(png) << png.error().message;
  EXPECT_EQ(ffprobe(*png, "i.png", "stream=codec_name,width,height"), "png,64,48");
  ByteQueue q(png->size() + 1);
  ASSERT_TRUE(q.push(*png));
  q.close();
  std::vector<uint8_t> decoded;
  ASSERT_TRUE(decode_video(q, 64, 48, [&](const VideoFrame& f) { decoded = f.rgb; }).ok());
  EXPECT_EQ(decoded, rgb) << "PNG is lossless";
  auto jpeg = encode_image("jpeg", 64, 48, rgb);
  ASSERT_TRUE(jpeg) << jpeg.error().message;
  EXPECT_EQ(ffprobe(*jpeg, "i.jpg", "stream=codec_name,width,height"), "mjpeg,64,48");
  EXPECT_FALSE(encode_image("gif", 64, 48, rgb));
  EXPECT_FALSE(encode_image("png", 64, 47, rgb));
  for (const std::string container : {"mp4", "mpegts"}) {
    std::vector<uint8_t> bytes;
    auto v = make_video_encoder(container, 128, 128, 4, [&](std::span<const uint8_t> b) { bytes.insert(bytes.end(), b.begin(), b.end()); });
    ASSERT_TRUE(v) << v.error().message;
    for (int f = 0; f < 8; ++f) {
      std::vector<uint8_t> frame(128 * 128 * 3);
      for (size_t i = 0; i < frame.size(); ++i) frame[i] = uint8_t((i / 3 + size_t(f) * 16) % 256);
      ASSERT_TRUE((*v)->push(frame).ok());
    }
    ASSERT_TRUE((*v)->finish().ok());
    EXPECT_EQ(ffprobe(bytes, "v." + container, "stream=codec_name,width,height"), "h264,128,128") << container;
    ByteQueue vq(bytes.size() + 1);
    ASSERT_TRUE(vq.push(bytes));
    vq.close();
    int frames = 0;
    ASSERT_TRUE(decode_video(vq, 128, 128, [&](const VideoFrame&) { ++frames; }).ok());
    EXPECT_EQ(frames, 8) << container;
  }
  EXPECT_FALSE(make_video_encoder("avi", 128, 128, 4, [](std::span<const uint8_t>) {}));
}

}  // namespace
}  // namespace tutti::codecs
