// tutti codec decode|encode: a unified model's audio codec on files.
//   decode --model F.gguf --codes CODES.txt --out OUT.f32 [--zero-noise] [--modality audio|music] [--threads N]
//   encode --model F.gguf --in IN.f32 --out CODES.txt [--modality audio|music]
// CODES.txt has one line per level (codes separated by spaces), as ../shared's codes.txt;
// .f32 files are raw little-endian float32 mono at the codec's rate.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "codecs/model_codecs.h"
#include "codecs/snac.h"
#include "kernels/cpu/thread_pool.h"
#include "tools/tutti/args.h"
#include "tools/tutti/commands.h"

namespace tutti::cli {

namespace {

int fail(const std::string& m) {
  std::fprintf(stderr, "tutti: %s\n", m.c_str());
  return 1;
}

Expected<std::vector<std::vector<int32_t>>> read_levels(const std::string& path) {
  std::ifstream f(path);
  if (!f) return Error{path + ": cannot open"};
  std::vector<std::vector<int32_t>> out;
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    ++n;
    std::istringstream ss(line);
    std::vector<int32_t> level;
    std::string word;
    while (ss >> word) {
      char* end = nullptr;
      const long v = std::strtol(word.c_str(), &end, 10);
      if (*end || v < 0 || v > (1 << 24)) return Error{path + ":" + std::to_string(n) + ": '" + word + "' is not a code"};
      level.push_back(int32_t(v));
    }
    if (!level.empty()) out.push_back(std::move(level));
  }
  return out;
}

// Frame-order codes of the codec to one line per level, and back.
std::vector<std::vector<int32_t>> to_levels(const codecs::AudioCodec& c, std::span<const int32_t> frames) {
  const auto order = c.frame_levels();
  std::vector<std::vector<int32_t>> out(size_t(c.levels()));
  const size_t whole = frames.size() / order.size() * order.size();
  for (size_t i = 0; i < whole; ++i) out[size_t(order[i % order.size()])].push_back(frames[i]);
  return out;
}

Expected<std::vector<int32_t>> to_frames(const codecs::AudioCodec& c, const std::vector<std::vector<int32_t>>& levels) {
  const auto order = c.frame_levels();
  std::vector<size_t> per_frame(size_t(c.levels()));
  for (int l : order) per_frame[size_t(l)]++;
  if (levels.size() != per_frame.size())
    return Error{"the codes have " + std::to_string(levels.size()) + " levels; this codec has " + std::to_string(per_frame.size())};
  const size_t frames = levels[0].size() / per_frame[0];
  for (size_t l = 0; l < levels.size(); ++l)
    if (levels[l].size() != frames * per_frame[l])
      return Error{"level " + std::to_string(l) + " has " + std::to_string(levels[l].size()) + " codes; " + std::to_string(frames) +
                   " frames need " + std::to_string(frames * per_frame[l])};
  std::vector<int32_t> out;
  std::vector<size_t> next(levels.size());
  for (size_t f = 0; f < frames; ++f)
    for (int l : order) out.push_back(levels[size_t(l)][next[size_t(l)]++]);
  return out;
}

Expected<std::shared_ptr<const codecs::AudioCodec>> open_codec(Args& args, std::shared_ptr<const GgufFile>& file) {
  auto f = GgufFile::open(args.get("model"));
  if (!f) return f.error();
  file = *f;
  auto cfg = read_model_config(*file);
  if (!cfg) return cfg.error();
  const std::string name = args.get("modality", "audio");
  const auto m = parse_modality(name);
  if (!m || (*m != Modality::Audio && *m != Modality::Music)) return Error{"--modality must be audio or music"};
  const ModalityInfo* info = cfg->modalities.find(*m);
  if (!info) return Error{args.get("model") + " has no " + name + " modality"};
  return codecs::make_audio_codec(*file, *info);
}

}  // namespace

int cmd_codec(const std::vector<std::string>& argv) {
  if (argv.empty() || (argv[0] != "decode" && argv[0] != "encode"))
    return fail("usage: tutti codec decode --model F.gguf --codes CODES.txt --out OUT.f32 [--zero-noise] | "
                "tutti codec encode --model F.gguf --in IN.f32 --out CODES.txt");
  const bool decode = argv[0] == "decode";
  Args args(std::vector<std::string>(argv.begin() + 1, argv.end()), {"model", "codes", "in", "out", "modality", "threads", "seed"}, {"zero-noise"});
  if (!args.ok()) return fail(args.error());
  for (auto r : {"model", "out", decode ? "codes" : "in"})
    if (!args.require(r)) return fail(args.error());
  const int threads = int(args.get_int("threads", 1));
  const uint64_t seed = uint64_t(args.get_int("seed", 0));
  if (!args.ok()) return fail(args.error());
  std::shared_ptr<const GgufFile> file;
  auto codec = open_codec(args, file);
  if (!codec) return fail(codec.error().message);
  std::unique_ptr<ThreadPool> pool;
  if (threads > 1) pool = std::make_unique<ThreadPool>(threads);
  const auto t0 = std::chrono::steady_clock::now();
  if (decode) {
    auto levels = read_levels(args.get("codes"));
    if (!levels) return fail(levels.error().message);
    auto frames = to_frames(**codec, *levels);
    if (!frames) return fail(args.get("codes") + ": " + frames.error().message);
    codecs::AudioDecodeOptions o;
    o.zero_noise = args.has("zero-noise");
    o.seed = seed;
    o.pool = pool.get();
    auto pcm = (*codec)->decode(*frames, o);
    if (!pcm) return fail(args.get("codes") + ": " + pcm.error().message);
    std::ofstream out(args.get("out"), std::ios::binary);
    out.write(reinterpret_cast<const char*>(pcm->data()), std::streamsize(pcm->size() * 4));
    if (!out) return fail(args.get("out") + ": cannot write");
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "decoded %zu frames to %zu samples (%.2f s of audio at %d Hz) in %.3f s\n", frames->size() / size_t((*codec)->codes_per_frame()),
                 pcm->size(), double(pcm->size()) / (*codec)->sample_rate(), (*codec)->sample_rate(), s);
    return 0;
  }
  std::ifstream in(args.get("in"), std::ios::binary);
  if (!in) return fail(args.get("in") + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  if (bytes.size() % 4) return fail(args.get("in") + ": not whole float32 samples (" + std::to_string(bytes.size()) + " bytes)");
  std::vector<float> pcm(bytes.size() / 4);
  std::memcpy(pcm.data(), bytes.data(), bytes.size());
  for (float& v : pcm)
    if (!std::isfinite(v)) return fail(args.get("in") + ": holds NaN or infinite samples");
  const auto frames = (*codec)->encode(pcm, pool.get());
  std::ofstream out(args.get("out"));
  for (const auto& level : to_levels(**codec, frames)) {
    for (size_t i = 0; i < level.size(); ++i) out << (i ? " " : "") << level[i];
    out << "\n";
  }
  if (!out) return fail(args.get("out") + ": cannot write");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "encoded %.2f s of audio to %zu frames in %.3f s\n", double(pcm.size()) / (*codec)->sample_rate(),
               frames.size() / size_t((*codec)->codes_per_frame()), s);
  return 0;
}

}  // namespace tutti::cli
