// tutti bench media: the modality tokenizers' speed on one core (real-time factor: seconds
// of media per second of CPU, encode and decode), and the speech endpoint's time to first
// audio byte and total time on the model, through the real server on loopback.
#include <boost/asio.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>

#include "codecs/audio_tokenizer.h"
#include "codecs/model_codecs.h"
#include "codecs/model_pack.h"
#include "codecs/patch_tokenizer.h"
#include "tools/tutti/commands.h"
#include "tools/tutti/engine.h"
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

}  // namespace

int cmd_bench_media(const std::vector<std::string>& argv) {
  auto opts = engine_options();
  opts.insert("requests");
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
    const auto books = codecs->books(m.modality);
    const auto& mat = material.at(m.modality);
    if (m.transform == "mdct") {
      const double seconds = double(mat.samples.size()) / m.sample_rate;
      codecs::AudioEncoder enc(int(m.frame_size), books);
      codecs::AudioDecoder dec(int(m.frame_size), books);
      double t = cpu_seconds();
      auto codes = enc.push(mat.samples);
      const auto tail = enc.finish();
      codes.insert(codes.end(), tail.begin(), tail.end());
      const double enc_s = cpu_seconds() - t;
      t = cpu_seconds();
      const auto pcm = dec.push(codes);
      const double dec_s = cpu_seconds() - t;
      std::printf("  %-6s %5.1f s of media, %6.0f tokens/s: encode %6.1fx real time, decode %6.1fx (%zu samples out)\n",
                  modality_name(m.modality), seconds, m.tokens_per_second(), seconds / enc_s, seconds / dec_s, pcm.size());
    } else {
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
  }

  if (!codecs->info(Modality::Audio)) return 0;
  actors::PipelineConfig pc;
  pc.kv_cache_bytes = size_t(engine->settings.kv_cache_mb) << 20;
  std::shared_ptr<const Tokenizer> tokenizer(std::move(engine->tokenizer));
  auto running = RunningServer::start(*engine->model, tokenizer, pc, engine->settings.caf_workers);
  if (!running) return fail(running.error().message);
  std::vector<double> first, total;
  for (int i = 0; i < requests; ++i) {
    const auto [f, t] = speech_request((*running)->port, "Hello, this is tutti speaking from the default model.");
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
