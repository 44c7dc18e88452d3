// SNAC against the reference implementation's outputs (../shared/codecs/snac-small-random):
// the decoder to float rounding (both weight-norm key styles), the encoder's codes, streamed
// against one-shot decoding, the kernels against each other, and malformed checkpoints.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>

#include "codecs/audio_codec.h"
#include "codecs/snac.h"
#include "codecs/snac_import.h"
#include "kernels/cpu/conv1d.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/test_support.h"

namespace tutti::codecs {
namespace {

std::vector<std::vector<int32_t>> read_levels(const std::string& path) {
  std::ifstream f(path);
  std::vector<std::vector<int32_t>> out;
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream ss(line);
    std::vector<int32_t> level;
    int32_t v;
    while (ss >> v) level.push_back(v);
    if (!level.empty()) out.push_back(level);
  }
  return out;
}

std::vector<float> read_f32(const std::string& path) {
  const std::string s = test::read_file(path);
  std::vector<float> v(s.size() / 4);
  std::memcpy(v.data(), s.data(), v.size() * 4);
  return v;
}

// The weights in a unified-file layout, in memory, loaded as the server loads them.
struct Loaded {
  std::vector<uint8_t> bytes;
  std::shared_ptr<const GgufFile> file;
  std::shared_ptr<const SnacModel> model;
};

Expected<Loaded> load(const SnacWeights& w) {
  GgufWriter g;
  add_snac_tensors(g, "codec.audio.", "tutti.audio.snac.", w);
  Loaded l;
  l.bytes = g.to_bytes();
  auto f = GgufFile::parse(l.bytes.data(), l.bytes.size(), "snac.gguf");
  if (!f) return f.error();
  l.file = *f;
  auto cfg = read_snac_config(*l.file, "tutti.audio.snac.");
  if (!cfg) return cfg.error();
  auto m = load_snac_model(*l.file, "codec.audio.", *cfg);
  if (!m) return m.error();
  l.model = *m;
  return l;
}

std::vector<float> decode_all(std::shared_ptr<const SnacModel> m, std::span<const int32_t> frames, size_t chunk, bool zero_noise = true) {
  SnacDecodeOptions o;
  o.zero_noise = zero_noise;
  SnacDecoder d(std::move(m), o);
  std::vector<float> out;
  for (size_t at = 0; at < frames.size(); at += chunk) {
    auto y = d.push(frames.subspan(at, std::min(chunk, frames.size() - at)));
    EXPECT_TRUE(y.ok());
    if (y) out.insert(out.end(), y->begin(), y->end());
  }
  auto tail = d.finish();
  out.insert(out.end(), tail.begin(), tail.end());
  return out;
}

double max_abs_diff(std::span<const float> a, std::span<const float> b) {
  double m = a.size() == b.size() ? 0 : INFINITY;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

class SnacReference : public ::testing::TestWithParam<const char*> {};

TEST_P(SnacReference, DecoderMatchesTheReferenceToFloatRounding) {
  TUTTI_REQUIRE_SHARED("codecs/snac-small-random/config.json", cfg_path);
  const std::string dir = std::filesystem::path(cfg_path).parent_path().string();
  std::string ckpt = dir;
  if (std::string(GetParam()) == "param") {  // the newer key style, as its own checkpoint directory
    ckpt = test::temp_path("snac-param");
    std::filesystem::create_directories(ckpt);
    std::filesystem::copy_file(dir + "/config.json", ckpt + "/config.json", std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(dir + "/pytorch_model.param.bin", ckpt + "/pytorch_model.bin", std::filesystem::copy_options::overwrite_existing);
  }
  auto w = import_snac_checkpoint(ckpt);
  ASSERT_TRUE(w.ok()) << w.error().message;
  auto l = load(*w);
  ASSERT_TRUE(l.ok()) << l.error().message;
  const SnacConfig& c = snac_model_config(*l->model);
  EXPECT_EQ(c.codes_per_frame(), 7);
  EXPECT_EQ(c.frame_samples(), 2048);
  auto frames = snac_levels_to_frames(c, read_levels(dir + "/codes.txt"));
  ASSERT_TRUE(frames.ok()) << frames.error().message;
  const std::vector<float> want = read_f32(dir + "/decoded.f32");
  const std::vector<float> got = decode_all(l->model, *frames, frames->size());
  ASSERT_EQ(got.size(), want.size());
  double rms = 0;
  for (float v : want) rms += double(v) * v;
  rms = std::sqrt(rms / double(want.size()));
  const double err = max_abs_diff(got, want);
  EXPECT_LT(err, 1e-6) << "rms of the reference " << rms;
  std::cout << "[ snac ] decoded " << got.size() << " samples; max |error| " << err << " (reference rms " << rms << ")\n";
}

INSTANTIATE_TEST_SUITE_P(KeyStyles, SnacReference, ::testing::Values("weight_g", "param"));

// The shared checkpoint, imported once per test binary.
const Loaded* shared_snac() {
  static std::optional<Loaded> l = []() -> std::optional<Loaded> {
    const std::string dir = test::shared_dir();
    if (dir.empty() || !std::filesystem::exists(dir + "/codecs/snac-small-random/config.json")) return std::nullopt;
    auto w = import_snac_checkpoint(dir + "/codecs/snac-small-random");
    if (!w) return std::nullopt;
    auto loaded = load(*w);
    if (!loaded) return std::nullopt;
    return std::move(*loaded);
  }();
  return l ? &*l : nullptr;
}

TEST(Snac, EncoderReproducesTheReferenceCodes) {
  TUTTI_REQUIRE_SHARED("codecs/snac-small-random/speech.f32", speech_path);
  const Loaded* l = shared_snac();
  ASSERT_NE(l, nullptr);
  const SnacConfig& c = snac_model_config(*l->model);
  const auto want = read_levels(std::filesystem::path(speech_path).parent_path().string() + "/speech_codes.txt");
  const std::vector<float> speech = read_f32(speech_path);
  SnacEncoder enc(l->model);
  std::vector<int32_t> frames = enc.push(speech);
  const auto tail = enc.finish();
  frames.insert(frames.end(), tail.begin(), tail.end());
  const auto got = snac_frames_to_levels(c, frames);
  ASSERT_EQ(got.size(), want.size());
  size_t same = 0, total = 0;
  for (size_t lv = 0; lv < want.size(); ++lv) {
    ASSERT_EQ(got[lv].size(), want[lv].size()) << "level " << lv;
    for (size_t i = 0; i < want[lv].size(); ++i) same += got[lv][i] == want[lv][i], ++total;
  }
  // Near-tied codebook rows may flip by rounding; anything more is a bug.
  EXPECT_GE(double(same) / double(total), 0.98) << same << " of " << total << " codes match";
  std::cout << "[ snac ] encoder: " << same << " of " << total << " reference codes reproduced\n";
}

TEST(Snac, StreamedEncodingEqualsOneShot) {
  TUTTI_REQUIRE_SHARED("codecs/snac-small-random/speech.f32", speech_path);
  const Loaded* l = shared_snac();
  ASSERT_NE(l, nullptr);
  const std::vector<float> speech = read_f32(speech_path);
  auto run = [&](size_t chunk) {
    SnacEncoder enc(l->model);
    std::vector<int32_t> out;
    for (size_t at = 0; at < speech.size(); at += chunk) {
      auto c = enc.push(std::span<const float>(speech).subspan(at, std::min(chunk, speech.size() - at)));
      out.insert(out.end(), c.begin(), c.end());
    }
    auto t = enc.finish();
    out.insert(out.end(), t.begin(), t.end());
    return out;
  };
  EXPECT_EQ(run(480), run(speech.size()));  // 20 ms pieces, as the Realtime input arrives
}

TEST(Snac, StreamedDecodingEqualsOneShotDecoding) {
  TUTTI_REQUIRE_SHARED("codecs/snac-small-random/codes.txt", codes_path);
  const Loaded* l = shared_snac();
  ASSERT_NE(l, nullptr);
  const SnacConfig& c = snac_model_config(*l->model);
  auto frames = snac_levels_to_frames(c, read_levels(codes_path));
  ASSERT_TRUE(frames.ok());
  const std::vector<float> whole = decode_all(l->model, *frames, frames->size());
  for (size_t chunk : {size_t(7), size_t(3), size_t(21)}) {  // a frame, less than a frame, three frames
    const std::vector<float> streamed = decode_all(l->model, *frames, chunk);
    EXPECT_LT(max_abs_diff(streamed, whole), 1e-6) << "pushing " << chunk << " codes at a time";
  }
  // What a stream emits after each frame: everything but the look-ahead.
  SnacDecodeOptions o;
  o.zero_noise = true;
  SnacDecoder d(l->model, o);
  size_t emitted = 0;
  for (size_t f = 0; f < frames->size() / 7; ++f) {
    auto y = d.push(std::span<const int32_t>(*frames).subspan(f * 7, 7));
    ASSERT_TRUE(y.ok());
    emitted += y->size();
  }
  const size_t covered = frames->size() / 7 * size_t(c.frame_samples());
  EXPECT_EQ(covered - emitted, size_t(snac_decoder_latency_samples(*l->model)));
  std::cout << "[ snac ] decoder look-ahead " << snac_decoder_latency_samples(*l->model) << " samples ("
            << 1000.0 * snac_decoder_latency_samples(*l->model) / c.sampling_rate << " ms)\n";
}

TEST(Snac, NoiseBlocksAddNoiseUnlessZeroed) {
  TUTTI_REQUIRE_SHARED("codecs/snac-small-random/codes.txt", codes_path);
  const Loaded* l = shared_snac();
  ASSERT_NE(l, nullptr);
  auto frames = snac_levels_to_frames(snac_model_config(*l->model), read_levels(codes_path));
  ASSERT_TRUE(frames.ok());
  const auto quiet = decode_all(l->model, *frames, frames->size(), true);
  const auto noisy = decode_all(l->model, *frames, frames->size(), false);
  ASSERT_EQ(quiet.size(), noisy.size());
  EXPECT_GT(max_abs_diff(quiet, noisy), 1e-6);
}

TEST(Snac, GemmKernelSetsAgree) {
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  const int m = 37, k = 300, n = 45;  // tails in every dimension, two k blocks
  std::vector<float> a(size_t(m) * k), bias(static_cast<size_t>(m));
  for (float& v : a) v = g(rng);
  for (float& v : bias) v = g(rng);
  const int ld = cpu::conv::padded_columns(n);
  std::vector<float> b(size_t(k) * ld);
  for (float& v : b) v = g(rng);
  const auto packed = cpu::conv::pack_matrix(a.data(), m, k, k);
  std::vector<double> want(size_t(m) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = bias[size_t(i)];
      for (int l = 0; l < k; ++l) s += double(a[size_t(i) * k + l]) * b[size_t(l) * ld + j];
      want[size_t(i) * n + j] = s;
    }
  const auto best = cpu::conv::best_gemm_isa();
  ThreadPool pool(2);
  for (auto isa : {cpu::conv::GemmIsa::Scalar, cpu::conv::GemmIsa::Avx2, cpu::conv::GemmIsa::Avx512}) {
    if (isa > best) continue;
    cpu::conv::force_gemm_isa(isa);
    for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
      std::vector<float> c(size_t(m + 12) * ld, -7.0f);
      cpu::conv::gemm(packed, b.data(), ld, n, c.data(), ld, bias.data(), p);
      double err = 0;
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) err = std::max(err, std::fabs(c[size_t(i) * ld + j] - want[size_t(i) * n + j]));
      EXPECT_LT(err, 1e-3) << cpu::conv::gemm_isa_name(isa) << (p ? " threaded" : "");
      for (int j = 0; j < ld; ++j) EXPECT_EQ(c[size_t(m + 5) * ld + j], -7.0f) << "wrote past the last row";
    }
  }
  cpu::conv::force_gemm_isa(best);
}

}  // namespace
}  // namespace tutti::codecs

namespace tutti::codecs {
namespace {

// Malformed tensors in a unified file are one-line errors at load, naming the tensor.
TEST(Snac, MalformedTensorsAreRefusedAtLoad) {
  SnacConfig small;
  small.encoder_dim = 4;
  small.decoder_dim = 16;
  small.codebook_size = 64;
  const SnacWeights good = random_snac_weights(small, 2);
  ASSERT_TRUE(load(good).ok()) << load(good).error().message;
  auto refused = [&](SnacWeights w, const std::string& name) {
    auto l = load(w);
    if (l.ok()) return std::string("loaded");
    EXPECT_EQ(l.error().message.find('\n'), std::string::npos);
    EXPECT_NE(l.error().message.find(name), std::string::npos) << l.error().message;
    return l.error().message;
  };
  SnacWeights nan = good;
  nan.tensors[3].values[0] = std::nanf("");
  EXPECT_NE(refused(nan, nan.tensors[3].name), "loaded");
  SnacWeights shape = good;
  shape.tensors[5].shape[0] += 1;
  shape.tensors[5].values.resize(shape.tensors[5].values.size() * 2);
  EXPECT_NE(refused(shape, shape.tensors[5].name), "loaded");
  SnacWeights missing = good;
  const std::string gone = missing.tensors[7].name;
  missing.tensors.erase(missing.tensors.begin() + 7);
  EXPECT_NE(refused(missing, gone), "loaded");
  SnacWeights extra = good;
  extra.tensors.push_back({"decoder.model.99.weight", {1}, {0.0f}});
  EXPECT_NE(refused(extra, "decoder.model.99.weight"), "loaded");
  // A decoder refuses codes outside the codebook, and stays an error, not a crash.
  auto l = load(good);
  SnacDecoder d(l->model, {});
  const std::vector<int32_t> bad = {0, 1, 2, 3, 4, 5, 64};
  EXPECT_FALSE(d.push(bad).ok());
}

}  // namespace
}  // namespace tutti::codecs
