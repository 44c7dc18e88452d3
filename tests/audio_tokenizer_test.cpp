// The audio tokenizer on real signals: MDCT frames reconstruct exactly without
// quantization; RVQ codebooks trained by k-means on speech (espeak-ng) carry other speech
// (a different sentence) at a measured segmental SNR; a tone and noise too. Codes stream
// frame by frame in both directions, and vocabulary ids map to codes and back.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>

#include "codecs/audio_tokenizer.h"
#include "codecs/media_decoder.h"
#include "codecs/patch_tokenizer.h"
#include "test_support.h"

namespace tutti::codecs {
namespace {

constexpr int kRate = 24000, kFrame = 480;

// Speech made by espeak-ng (installed by tools/install-deps.sh), decoded to 24 kHz mono.
std::vector<float> speech(const std::string& name, const std::string& text) {
  const std::string dir = std::string(TUTTI_BINARY_DIR) + "/test-data";
  const std::string path = dir + "/" + name + ".wav";
  if (!std::ifstream(path).good()) {
    const std::string cmd = "mkdir -p '" + dir + "' && espeak-ng -w '" + path + ".tmp' \"" + text + "\" && mv '" + path + ".tmp' '" + path + "'";
    if (std::system(cmd.c_str()) != 0) return {};
  }
  const std::string bytes = test::read_file(path);
  auto pcm = decode_audio_bytes(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), kRate);
  return pcm ? *pcm : std::vector<float>{};
}

const char* kTrainingText =
    "The quick brown fox jumps over the lazy dog. A real time server answers in a few hundred milliseconds. "
    "Streams of audio and video are tokens of one shared vocabulary, and one copy of the weights generates them all. "
    "Every decode step reads each weight once, so batching many sessions together is how a graphics card earns its keep. "
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells. "
    "Peter Piper picked a peck of pickled peppers; how many pickled peppers did Peter Piper pick? "
    "Numbers like one hundred and twenty three, four thousand and fifty six, and seven point eight nine.";
const char* kTestText = "Hello there. This sentence was never part of the training, yet the codebooks should carry it.";

std::vector<float> mdct_frames(const std::vector<float>& pcm) {
  MdctAnalyzer a(kFrame);
  std::vector<float> all, c(kFrame);
  for (size_t at = 0; at + kFrame <= pcm.size(); at += kFrame) {
    a.push(std::span<const float>(pcm.data() + at, kFrame), c);
    all.insert(all.end(), c.begin(), c.end());
  }
  return all;
}

// Streams pcm through encoder and decoder in uneven pieces; returns the decoded signal
// (aligned with the input) and the number of codes.
std::pair<std::vector<float>, size_t> round_trip(const std::vector<float>& pcm, std::shared_ptr<const Codebooks> cb) {
  AudioEncoder enc(kFrame, cb);
  AudioDecoder dec(kFrame, cb);
  std::vector<float> out;
  size_t codes = 0;
  std::mt19937 rng(2);
  size_t at = 0;
  auto feed = [&](const std::vector<int32_t>& c) {
    codes += c.size();
    // Codes go to the decoder in pieces too, not aligned to frames.
    size_t k = 0;
    while (k < c.size()) {
      const size_t m = std::min(c.size() - k, size_t(1 + rng() % 7));
      const auto s = dec.push(std::span<const int32_t>(c.data() + k, m));
      out.insert(out.end(), s.begin(), s.end());
      k += m;
    }
  };
  while (at < pcm.size()) {
    const size_t m = std::min(pcm.size() - at, size_t(1 + rng() % 1500));
    feed(enc.push(std::span<const float>(pcm.data() + at, m)));
    at += m;
  }
  feed(enc.finish());
  return {out, codes};
}

TEST(Mdct, ReconstructsExactlyWithoutQuantization) {
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0, 0.3f);
  std::vector<float> x(kRate);
  for (auto& v : x) v = d(rng);
  MdctAnalyzer a(kFrame);
  MdctSynthesizer s(kFrame);
  std::vector<float> c(kFrame), y(kFrame), out;
  for (size_t at = 0; at + kFrame <= x.size(); at += kFrame) {
    a.push(std::span<const float>(x.data() + at, kFrame), c);
    s.push(c, y);
    out.insert(out.end(), y.begin(), y.end());
  }
  // One frame of delay: output frame j is input frame j - 1.
  double sig = 0, err = 0;
  for (size_t i = kFrame; i < out.size(); ++i) {
    sig += double(x[i - kFrame]) * x[i - kFrame];
    err += (double(out[i]) - x[i - kFrame]) * (double(out[i]) - x[i - kFrame]);
  }
  EXPECT_GT(10 * std::log10(sig / err), 80.0);
  // Orthogonal: coefficient energy equals sample energy over a frame pair (Parseval, roughly).
}

TEST(Rvq, EachStageLowersTheErrorAndDecodeInvertsEncode) {
  std::mt19937 rng(4);
  std::normal_distribution<float> d(0, 1);
  const int dim = 16, n = 3000;
  std::vector<float> data(size_t(n * dim));
  for (auto& v : data) v = d(rng);
  auto cb = train_rvq(data, dim, 32, 3, {6, 1, {}});
  ASSERT_TRUE(cb) << cb.error().message;
  ASSERT_TRUE(cb->validate().ok());
  double err_by_stages[4] = {0, 0, 0, 0};
  for (int i = 0; i < 200; ++i) {
    std::span<const float> x(data.data() + size_t(i) * dim, dim);
    for (int stages = 0; stages <= 3; ++stages) {
      Codebooks part = *cb;
      part.stages = stages;
      part.books.resize(size_t(stages));
      std::vector<int32_t> codes(static_cast<size_t>(stages));
      std::vector<float> r(dim), y(dim);
      rvq_encode(part, x, codes, r);
      rvq_decode(part, codes, y);
      for (int k = 0; k < dim; ++k) {
        ASSERT_NEAR(y[size_t(k)] + r[size_t(k)], x[size_t(k)], 1e-4);
        err_by_stages[stages] += double(r[size_t(k)]) * r[size_t(k)];
      }
    }
  }
  EXPECT_LT(err_by_stages[1], err_by_stages[0]);
  EXPECT_LT(err_by_stages[2], err_by_stages[1]);
  EXPECT_LT(err_by_stages[3], err_by_stages[2]);
  EXPECT_FALSE(train_rvq(std::span<const float>(data.data(), 10 * dim), dim, 32, 1));
}

TEST(AudioTokenizer, TrainedCodebooksCarrySpeechToneAndNoise) {
  const auto train = speech("speech-train", kTrainingText);
  const auto test_speech = speech("speech-test", kTestText);
  ASSERT_GT(train.size(), size_t(10 * kRate)) << "espeak-ng made no training speech";
  ASSERT_GT(test_speech.size(), size_t(2 * kRate));
  // Training material: the speech, plus tones and noise so those signals have codes too.
  std::vector<float> material = train;
  std::mt19937 rng(9);
  std::normal_distribution<float> noise(0, 0.05f);
  for (double f : {220.0, 440.0, 880.0, 1500.0})
    for (int i = 0; i < kRate; ++i) material.push_back(float(0.3 * std::sin(2 * 3.14159265358979 * f * i / kRate)));
  for (int i = 0; i < kRate; ++i) material.push_back(noise(rng));
  const auto frames = mdct_frames(material);
  const auto t0 = std::chrono::steady_clock::now();
  auto trained = train_rvq(frames, kFrame, 256, 4, {8, 1, {}});
  ASSERT_TRUE(trained) << trained.error().message;
  std::printf("trained 4 x 256 codes on %zu frames in %.1f s\n", frames.size() / kFrame,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  auto cb = std::make_shared<const Codebooks>(std::move(trained).value());

  auto measure = [&](const char* what, const std::vector<float>& pcm, double min_snr) {
    const auto t = std::chrono::steady_clock::now();
    const auto [out, codes] = round_trip(pcm, cb);
    const double cpu = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    ASSERT_GE(out.size(), pcm.size());
    EXPECT_EQ(codes, (pcm.size() / kFrame + (pcm.size() % kFrame ? 1 : 0) + 1) * 4);
    const double snr = segmental_snr_db(pcm, std::span<const float>(out.data(), pcm.size()), kFrame);
    std::printf("%-12s segmental SNR %5.2f dB at 200 tokens/s (encode+decode %.0fx real time)\n", what, snr,
                double(pcm.size()) / kRate / cpu);
    EXPECT_GT(snr, min_snr) << what;
  };
  // Thresholds a little under what these codebooks measured (see the printed figures).
  measure("new speech", test_speech, 1.0);
  std::vector<float> tone(kRate);
  for (int i = 0; i < kRate; ++i) tone[size_t(i)] = float(0.3 * std::sin(2 * 3.14159265358979 * 440 * i / kRate));
  measure("440 Hz tone", tone, 8.0);
  // A silent input stays (nearly) silent: no codebook noise floor.
  std::vector<float> quiet(kRate / 2, 0.f);
  const auto [q, unused] = round_trip(quiet, cb);
  double e = 0;
  for (float v : q) e += double(v) * v;
  EXPECT_LT(std::sqrt(e / double(q.size())), 0.02);
}

TEST(AudioTokenizer, VocabularyIdsMapToCodesAndBack) {
  ModalityInfo m;
  m.modality = Modality::Audio;
  m.token_offset = 1000;
  m.codebook_size = 256;
  m.num_stages = 4;
  const std::vector<int32_t> codes = {0, 255, 7, 100, 3, 3, 3, 3};
  const auto tokens = codes_to_tokens(m, codes);
  EXPECT_EQ(tokens[0], 1000);
  EXPECT_EQ(tokens[1], 1000 + 256 + 255);
  EXPECT_EQ(tokens[3], 1000 + 3 * 256 + 100);
  auto back = tokens_to_codes(m, tokens);
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, codes);
  std::vector<int32_t> wrong_slot = tokens;
  std::swap(wrong_slot[0], wrong_slot[1]);  // a stage-1 code where stage 0 belongs
  EXPECT_FALSE(tokens_to_codes(m, wrong_slot));
  EXPECT_FALSE(tokens_to_codes(m, std::vector<int32_t>{5}));
}

}  // namespace
}  // namespace tutti::codecs

namespace tutti::codecs {
namespace {

// Frames of FFmpeg's test patterns at the image modality's 256x256.
std::vector<std::vector<uint8_t>> pattern_frames(const std::string& source, int count) {
  const std::string dir = std::string(TUTTI_BINARY_DIR) + "/test-data";
  std::string safe = source;
  for (char& c : safe)
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  const std::string path = dir + "/" + safe + ".ts";
  if (!std::ifstream(path).good()) {
    const std::string cmd = "mkdir -p '" + dir + "' && ffmpeg -nostdin -loglevel error -y -f lavfi -i '" + source +
                            "' -frames:v " + std::to_string(count) + " -c:v libx264 -qp 0 -pix_fmt yuv444p -f mpegts '" + path +
                            ".tmp' && mv '" + path + ".tmp' '" + path + "'";
    if (std::system(cmd.c_str()) != 0) return {};
  }
  const std::string bytes = test::read_file(path);
  ByteQueue q(bytes.size() + 1);
  (void)q.push(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  q.close();
  std::vector<std::vector<uint8_t>> frames;
  (void)decode_video(q, 256, 256, [&](const VideoFrame& f) { frames.push_back(f.rgb); });
  return frames;
}

TEST(PatchTokenizer, TrainedCodebooksReconstructTestPatterns) {
  const PatchGeometry g;  // 256x256, 8x8 patches
  // Identity first: patches to frame and back loses only rounding.
  const auto testsrc = pattern_frames("testsrc=size=320x240:rate=5", 8);
  ASSERT_EQ(testsrc.size(), 8u);
  const auto exact = patches_to_frame(g, frame_to_patches(g, testsrc[0]));
  EXPECT_GT(psnr_db(testsrc[0], exact), 45.0);
  // Train on two patterns, measure on frames of them and on a third never seen.
  const auto bars = pattern_frames("smptebars=size=320x240:rate=5", 2);
  const auto mandel = pattern_frames("mandelbrot=size=320x240:rate=5", 3);
  const auto unseen = pattern_frames("rgbtestsrc=size=320x240:rate=5", 1);
  ASSERT_FALSE(bars.empty() || mandel.empty() || unseen.empty());
  std::vector<float> data;
  for (const auto* set : {&testsrc, &bars, &mandel})
    for (size_t i = 0; i + 1 < set->size() || set->size() == 1; ++i) {  // the last testsrc/mandel frame is held out
      const auto p = frame_to_patches(g, (*set)[i]);
      data.insert(data.end(), p.begin(), p.end());
      if (set->size() == 1) break;
    }
  auto trained = train_rvq(data, g.dim(), 256, 2, {6, 3, {}});
  ASSERT_TRUE(trained) << trained.error().message;
  auto measure = [&](const char* what, const std::vector<uint8_t>& frame, double min_db) {
    const auto codes = encode_frame(g, *trained, frame);
    ASSERT_EQ(codes.size(), size_t(g.patches() * 2));  // 2048 tokens per image
    auto back = decode_frame(g, *trained, codes);
    ASSERT_TRUE(back) << back.error().message;
    const double db = psnr_db(frame, *back);
    std::printf("%-22s PSNR %5.2f dB at 2048 tokens per 256x256 image\n", what, db);
    EXPECT_GT(db, min_db) << what;
  };
  measure("testsrc (held out)", testsrc.back(), 35.0);
  measure("mandelbrot (held out)", mandel.back(), 22.0);
  measure("rgbtestsrc (unseen)", unseen[0], 20.0);
  EXPECT_FALSE(decode_frame(g, *trained, std::vector<int32_t>(10, 0)));
}

}  // namespace
}  // namespace tutti::codecs

#include "codecs/model_codecs.h"
#include "codecs/model_pack.h"
#include "pipeline/model.h"
#include "pipeline/quantize.h"
#include "pipeline/tokenizer.h"

namespace tutti::codecs {
namespace {

// tutti model pack: a text backbone plus speech files and generated frames becomes one
// unified file whose vocabulary, matrices and codebooks all fit, and whose audio codebooks
// carry speech they were not trained on.
TEST(ModelPack, BuildsAUnifiedModelWhoseCodebooksCarryNewSpeech) {
  RandomModelSpec spec;
  spec.dim = 64; spec.layers = 1; spec.heads = 4; spec.kv_heads = 2; spec.ffn = 128; spec.type = TensorType::Q8_0;
  const std::string backbone = test::random_model(spec, "pack-backbone.gguf");
  ASSERT_FALSE(speech("speech-train", kTrainingText).empty());
  const std::string train_wav = std::string(TUTTI_BINARY_DIR) + "/test-data/speech-train.wav";
  std::map<Modality, PackMaterial> material;
  material[Modality::Audio].files = {train_wav};
  auto generated = generated_material(default_modalities(1000), 3);
  material[Modality::Image] = generated.at(Modality::Image);
  const std::string out = std::string(TUTTI_BINARY_DIR) + "/test-data/packed.gguf";
  PackOptions o;
  o.kmeans_iterations = 6;
  ASSERT_TRUE(pack_unified_model(backbone, material, out, o).ok());

  auto file = GgufFile::open(out);
  ASSERT_TRUE(file) << file.error().message;
  auto codecs = load_model_codecs(**file);
  ASSERT_TRUE(codecs) << codecs.error().message;
  ASSERT_EQ(codecs->modalities.entries.size(), 2u);  // audio and image, in that order
  const ModalityInfo* audio = codecs->info(Modality::Audio);
  ASSERT_NE(audio, nullptr);
  auto backbone_file = GgufFile::open(backbone);
  const uint32_t n_text = uint32_t((*backbone_file)->find("tokenizer.ggml.tokens")->count);
  EXPECT_EQ(audio->begin_token, n_text);
  EXPECT_EQ(audio->token_offset, n_text + 2);
  // The model loads (vocabulary, token_embd and output grown alike) and runs.
  auto backend = make_cpu_backend({1});
  auto model = Model::load(out, *backend);
  ASSERT_TRUE(model) << model.error().message;
  EXPECT_EQ((*model)->hparams().n_vocab, codecs->info(Modality::Image)->token_end());
  auto tok = Tokenizer::from_gguf((*model)->file());
  ASSERT_TRUE(tok);
  EXPECT_EQ((*tok)->token_text(int32_t(audio->begin_token)), "<|audio_begin|>");
  // The packed audio codebooks on a sentence they never saw.
  const auto test_speech = speech("speech-test", kTestText);
  auto books = load_codebooks(**file, *codecs->info(Modality::Audio));
  ASSERT_TRUE(books.ok()) << books.error().message;
  const auto [decoded, codes] = round_trip(test_speech, std::make_shared<const Codebooks>(std::move(*books)));
  const double snr = segmental_snr_db(test_speech, std::span<const float>(decoded.data(), test_speech.size()), kFrame);
  std::printf("packed audio codebooks: segmental SNR %.2f dB on new speech\n", snr);
  EXPECT_GT(snr, 1.0);
  // Errors: a unified file is not a backbone; no media at all.
  EXPECT_FALSE(pack_unified_model(out, material, out + ".2", o).ok());
  EXPECT_FALSE(pack_unified_model(backbone, {}, out + ".2", o).ok());
  std::map<Modality, PackMaterial> missing;
  missing[Modality::Audio].files = {"/nonexistent.wav"};
  Status s = pack_unified_model(backbone, missing, out + ".2", o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("/nonexistent.wav"), std::string::npos);
}

// Backbones of any tensor type pack: the new vocabulary rows of token_embd (Q4_K) and output
// (Q6_K) are written in each matrix's own type, whose blocks always fit the rows (every row of
// a matrix has the same width).
TEST(ModelPack, PacksKQuantBackbones) {
  RandomModelSpec spec;
  spec.dim = 256; spec.layers = 1; spec.heads = 4; spec.kv_heads = 2; spec.ffn = 512; spec.architecture = "qwen2";
  const std::string f32 = test::random_model(spec, "pack-kq-f32.gguf");
  const std::string backbone = std::string(TUTTI_BINARY_DIR) + "/test-data/pack-kq-q4_k_m.gguf";
  ASSERT_TRUE(quantize_model(f32, backbone, QuantizeMix::Q4_K_M));
  std::map<Modality, PackMaterial> material;
  material[Modality::Image] = generated_material(default_modalities(1000), 4).at(Modality::Image);
  const std::string out = std::string(TUTTI_BINARY_DIR) + "/test-data/packed-kq.gguf";
  PackOptions o;
  o.kmeans_iterations = 2;
  ASSERT_TRUE(pack_unified_model(backbone, material, out, o).ok());
  auto file = GgufFile::open(out);
  ASSERT_TRUE(file) << file.error().message;
  EXPECT_EQ((*file)->find_tensor("token_embd.weight")->type, TensorType::Q4_K);
  EXPECT_EQ((*file)->find_tensor("output.weight")->type, TensorType::Q6_K);
  auto backend = make_cpu_backend({1});
  auto model = Model::load(out, *backend);
  ASSERT_TRUE(model) << model.error().message;
  auto kv = std::move((*model)->make_kv_cache(4 << 20)).value();
  Batch b;
  b.chunks = {{0, 0, {1, 2, int32_t((*model)->hparams().n_vocab - 1)}, false}};  // the last new token too
  StepLogits logits;
  ASSERT_TRUE((*model)->forward(b, *kv, logits).ok());
  for (int v = 0; v < logits.n_vocab; ++v) ASSERT_TRUE(std::isfinite(logits.row(0)[v]));
}

}  // namespace
}  // namespace tutti::codecs
