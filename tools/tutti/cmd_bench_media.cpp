// tutti bench media: the modality tokenizers' speed on one core (real-time factor: seconds
// of media per second of CPU, encode and decode), and the speech endpoint's time to first
// audio byte and total time on the model, through the real server on loopback.
#include <boost/asio.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>

#include "codecs/audio_codec.h"
#include "codecs/audio_tokenizer.h"
#include "codecs/snac.h"
#include "codecs/snac_import.h"
#include "kernels/cpu/conv1d.h"
#include "codecs/model_codecs.h"
#include "codecs/model_pack.h"
#include "codecs/patch_tokenizer.h"
#include "tools/tutti/commands.h"
#include "tools/tutti/model_loading.h"
#include "tools/tutti/loopback_server.h"

namespace tutti::cli {

namespace {

using Clock = std::chrono::steady_clock;
namespace net = boost::asio;
using tcp = net::ip::tcp;

double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// One speech request; seconds to the first body byte and to the end.
std::pair<double, double> speech_request(uint16_t port, const std::string& text) {
  net::io_context ioc;
  tcp::socket s(ioc);
  s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
  const std::string body = R"({"input":")" + text + R"(","response_format":"pcm"})";
  const std::string req = "POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  const auto t0 = Clock::now();
  net::write(s, net::buffer(req));
  std::string got;
  char buf[8192];
  double first = -1;
  boost::system::error_code ec;
  for (;;) {
    const size_t n = s.read_some(net::buffer(buf), ec);
    got.append(buf, n);
    const size_t head = got.find("\r\n\r\n");
    // The first chunk after the headers carries the first audio bytes.
    if (first < 0 && head != std::string::npos && got.size() > head + 4 + 8) first = std::chrono::duration<double>(Clock::now() - t0).count();
    if (ec) break;
  }
  return {first, std::chrono::duration<double>(Clock::now() - t0).count()};
}

// Encode `samples` and decode the codes, on this thread: real-time factors (media seconds
// per CPU second) of each direction.
std::pair<double, double> codec_speed(const codecs::AudioCodec& codec, const std::vector<float>& samples) {
  const double seconds = double(samples.size()) / codec.sample_rate();
  double t = cpu_seconds();
  const auto codes = codec.encode(samples);
  const double enc_s = cpu_seconds() - t;
  t = cpu_seconds();
  const auto pcm = codec.decode(codes);
  const double dec_s = cpu_seconds() - t;
  return {seconds / enc_s, pcm ? seconds / dec_s : 0.0};
}

}  // namespace

int cmd_bench_media(const std::vector<std::string>& argv) {
  auto opts = engine_options();
  opts.insert("requests");
  opts.insert("snac-full");
  Args args(argv, opts, {});
  if (!args.ok()) return fail(args.error());
  const int requests = int(args.get_int("requests", 5));
  auto engine = open_engine(args, true);
  if (!engine) return 1;
  auto codecs = codecs::load_model_codecs(engine->model->file());
  if (!codecs) return fail(codecs.error().message);
  if (codecs->modalities.empty()) return fail(engine->settings.model_path + " is a text-only model (see tutti model pack)");

  std::printf("tokenizers on one core (real-time factor = seconds of media / seconds of CPU):\n");
  const auto material = codecs::generated_material(codecs->modalities, 99);
  for (const ModalityInfo& m : codecs->modalities.entries) {
    const auto& mat = material.at(m.modality);
    if (auto codec = codecs->audio(m.modality)) {
      const auto [enc_x, dec_x] = codec_speed(*codec, mat.samples);
      std::printf("  %-6s %-4s %5.1f s of media, %6.1f tokens/s: encode %6.1fx real time, decode %6.1fx\n", modality_name(m.modality),
                  codec->kind(), double(mat.samples.size()) / codec->sample_rate(), codec->tokens_per_second(), enc_x, dec_x);
      continue;
    }
    const auto books = codecs->books(m.modality);
    const codecs::PatchGeometry g{int(m.width), int(m.height), int(m.patch_size)};
    double enc_s = 0, dec_s = 0;
    for (const auto& frame : mat.frames) {
      double t = cpu_seconds();
      const auto codes = codecs::encode_frame(g, *books, frame);
      enc_s += cpu_seconds() - t;
      t = cpu_seconds();
      (void)codecs::decode_frame(g, *books, codes);
      dec_s += cpu_seconds() - t;
    }
    const double n = double(mat.frames.size());
    if (m.modality == Modality::Video)
      std::printf("  %-6s %3.0f frames %dx%d at %.0f fps, %6.0f tokens/s: encode %6.1fx real time, decode %6.1fx\n",
                  modality_name(m.modality), n, g.width, g.height, double(m.frame_rate), m.tokens_per_second(),
                  n / m.frame_rate / enc_s, n / m.frame_rate / dec_s);
    else
      std::printf("  %-6s %3.0f images %dx%d, %d tokens each: encode %6.1f images/s, decode %6.1f images/s\n",
                  modality_name(m.modality), n, g.width, g.height, g.patches() * books->stages, n / enc_s, n / dec_s);
  }

  // The published 24 kHz SNAC at full size (random weights), whatever the model's own audio
  // codec is: the figure that decides how many Orpheus-style streams a core carries.
  if (args.get("snac-full") != "off") {
    const codecs::SnacConfig full = codecs::snac_24khz_config();
    auto model = codecs::load_snac_weights(codecs::random_snac_weights(full, 7));
    if (!model) return fail(model.error().message);
    const auto codec = codecs::make_snac_codec(*model);
    ModalityTable audio_only;
    audio_only.entries.push_back(*default_modalities(0).find(Modality::Audio));
    std::vector<float> speech = codecs::generated_material(audio_only, 5).at(Modality::Audio).samples;
    speech.resize(std::min<size_t>(speech.size(), size_t(full.sampling_rate) * 6));
    const auto [enc_x, dec_x] = codec_speed(*codec, speech);
    std::printf("  snac 24 kHz, published configuration (%.1f M parameters, random weights), %.1f s: encode %6.1fx real time, decode %6.1fx"
                " (one thread, %s GEMM; streaming look-ahead %.0f ms)\n",
                double(codecs::snac_parameter_count(full)) / 1e6, double(speech.size()) / full.sampling_rate, enc_x, dec_x,
                cpu::conv::gemm_isa_name(cpu::conv::best_gemm_isa()), 1000.0 * codec->decoder_latency_samples() / full.sampling_rate);
  }

  if (!codecs->info(Modality::Audio)) return 0;
  actors::PipelineConfig pc;
  pc.kv_cache_bytes = size_t(engine->settings.kv_cache_mb) << 20;
  std::shared_ptr<const Tokenizer> tokenizer(std::move(engine->tokenizer));
  auto running = start_loopback_server(*engine->model, tokenizer, pc, engine->settings.caf_workers);
  if (!running) return fail(running.error().message);
  std::vector<double> first, total;
  for (int i = 0; i < requests; ++i) {
    const auto [f, t] = speech_request((*running)->port(), "Hello, this is tutti speaking from the default model.");
    first.push_back(f);
    total.push_back(t);
  }
  std::sort(first.begin(), first.end());
  std::sort(total.begin(), total.end());
  std::printf("/v1/audio/speech (pcm, %d requests one after another): first audio byte p50 %.1f ms (best %.1f), whole answer p50 %.0f ms\n",
              requests, first[first.size() / 2] * 1e3, first[0] * 1e3, total[total.size() / 2] * 1e3);
  return 0;
}

}  // namespace tutti::cli
