// tutti bench cluster: what going through a cluster ingress costs, against the same executor
// node served directly, in one run on this machine. It starts, as child processes on
// loopback, an ingress (`serve --role ingress`) and executor nodes (`serve --role executor`,
// each also serving its own HTTP: the in-process path), then measures:
//   - added latency per request (a one-token answer) and per token (streamed chat), the
//     ingress against the node directly, requests alternating;
//   - the ingress's CPU per 1,000 tokens streamed through it (its /proc stat), at a few
//     concurrent streams;
//   - barge-in to cancel: a Realtime response cancelled at its first audio, to response.done,
//     both ways;
//   - bytes per second per stream from the node to the ingress with the decoder where it is
//     (audio samples cross) and per token (what would cross with it at the ingress), from
//     CAF's serialization of the crossing messages at a real speech answer's rates;
//   - routing decisions per second (the RoutingPolicy alone, in this process);
//   - recovery: kill -9 of one of two nodes under load (drop, first success after, requests
//     lost), a hung node (SIGSTOP: dropped after), and rejoining.
// On a 2-core machine throughput gains cannot show; the overheads can.
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <filesystem>
#include <map>
#include <sstream>
#include <thread>

#include <caf/binary_serializer.hpp>
#include <caf/io/basp/header.hpp>

#include "actors/cluster/node.hpp"
#include "actors/cluster/routing.hpp"
#include "actors/http/realtime_audio.hpp"
#include "codecs/model_codecs.h"
#include "tools/loadtest/clients.h"
#include "tools/loadtest/report.h"
#include "tools/tutti/args.h"
#include "tools/tutti/commands.h"
#include "tools/tutti/model_loading.h"

namespace tutti::cli {

namespace {

namespace beast = boost::beast;
namespace net = boost::asio;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

uint16_t free_port() {
  net::io_context ioc;
  tcp::acceptor a(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

// A child `tutti` process, its output in a file.
struct Child {
  pid_t pid = -1;
  std::string log;
  Child() = default;
  Child(const std::vector<std::string>& args, const std::string& log_path) : log(log_path) {
    pid = fork();
    if (pid == 0) {
      const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
      std::vector<char*> a;
      static char self[] = "/proc/self/exe";
      a.push_back(self);
      for (const std::string& s : args) a.push_back(const_cast<char*>(s.c_str()));
      a.push_back(nullptr);
      execv("/proc/self/exe", a.data());
      _exit(127);
    }
  }
  void signal(int sig) const {
    if (pid > 0) kill(pid, sig);
  }
  void stop() {
    if (pid <= 0) return;
    kill(pid, SIGCONT);
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    pid = -1;
  }
  // CPU seconds (user + system) the process has used.
  double cpu_seconds() const {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const size_t close = all.rfind(')');
    if (close == std::string::npos) return 0;
    std::istringstream rest(all.substr(close + 2));
    std::string field;
    double utime = 0, stime = 0;
    for (int i = 3; rest >> field; ++i) {
      if (i == 14) utime = std::stod(field);
      if (i == 15) {
        stime = std::stod(field);
        break;
      }
    }
    return (utime + stime) / double(sysconf(_SC_CLK_TCK));
  }
  ~Child() { stop(); }
};

// A connection to a loopback port, given up after `seconds`.
beast::tcp_stream connect_to(net::io_context& ioc, uint16_t port, int seconds) {
  beast::tcp_stream s(ioc);
  s.expires_after(std::chrono::seconds(seconds));
  s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
  return s;
}

struct Reply {
  int status = 0;
  std::string body, node;
};
Reply call(uint16_t port, bhttp::verb verb, const std::string& target, const std::string& body = "") {
  Reply r;
  try {
    net::io_context ioc;
    beast::tcp_stream s = connect_to(ioc, port, 60);
    bhttp::request<bhttp::string_body> req{verb, target, 11};
    req.set(bhttp::field::host, "127.0.0.1");
    req.set(bhttp::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
    bhttp::write(s, req);
    beast::flat_buffer buf;
    bhttp::response<bhttp::string_body> res;
    bhttp::read(s, buf, res);
    r.status = int(res.result_int());
    r.body = res.body();
    r.node = std::string(res["x-tutti-node"]);
  } catch (const std::exception&) {
  }
  return r;
}

// One streamed chat: time to the first token, the gaps between tokens, and how it ended.
struct StreamResult {
  double ttft = -1, total = 0;
  std::vector<double> gaps;
  int tokens = 0;
  bool ok = false, lost = false;
};
StreamResult stream_chat(uint16_t port, const std::string& content, int max_tokens) {
  StreamResult r;
  try {
    net::io_context ioc;
    beast::tcp_stream s = connect_to(ioc, port, 120);
    const std::string b = json{{"messages", {{{"role", "user"}, {"content", content}}}}, {"max_tokens", max_tokens}, {"stream", true},
                               {"stream_options", {{"include_usage", true}}}, {"tutti", {{"ignore_eos", true}}}}
                              .dump();
    const auto t0 = Clock::now();
    net::write(s, net::buffer("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                              std::to_string(b.size()) + "\r\n\r\n" + b));
    std::string got;
    size_t scanned = 0;
    Clock::time_point last = t0;
    char buf[16384];
    for (;;) {
      beast::error_code ec;
      const size_t n = s.socket().read_some(net::buffer(buf), ec);
      if (ec) break;
      got.append(buf, n);
      // Each chunk with a delta is text arriving now (a token, or a few whose text was held
      // back: half a UTF-8 character).
      int chunks = 0;
      for (size_t at; (at = got.find("\"delta\":{\"content\"", scanned)) != std::string::npos; ++chunks) scanned = at + 10;
      if (chunks > 0) {
        const auto now = Clock::now();
        if (r.ttft < 0) r.ttft = std::chrono::duration<double>(now - t0).count();
        else r.gaps.push_back(std::chrono::duration<double>(now - last).count() / chunks);
        last = now;
      }
      if (got.find("data: [DONE]") != std::string::npos) break;
    }
    // The tokens, from the usage chunk.
    if (const size_t at = got.rfind("\"completion_tokens\":"); at != std::string::npos) r.tokens = std::atoi(got.c_str() + at + 20);
    r.total = since(t0);
    r.lost = got.find("executor_lost") != std::string::npos;
    r.ok = got.find("data: [DONE]") != std::string::npos && got.find("\"error\"") == std::string::npos;
  } catch (const std::exception&) {
  }
  return r;
}

// A Realtime response cancelled at its first audio: seconds from the cancel to response.done.
double barge_in_to_cancel(uint16_t port) {
  try {
    net::io_context ioc;
    beast::websocket::stream<tcp::socket> ws(ioc);
    ws.next_layer().connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
    ws.handshake("127.0.0.1", "/v1/realtime");
    auto next = [&] {
      beast::flat_buffer b;
      ws.read(b);
      return json::parse(beast::buffers_to_string(b.data()));
    };
    auto send = [&](const json& e) { ws.write(net::buffer(e.dump())); };
    while (next()["type"] != "session.created") {
    }
    send({{"type", "session.update"}, {"session", {{"type", "realtime"}, {"output_modalities", {"audio"}}, {"max_output_tokens", 2000}}}});
    send({{"type", "conversation.item.create"},
          {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "tell me a long story"}}}}}}});
    send({{"type", "response.create"}});
    for (json e = next(); e["type"] != "response.output_audio.delta"; e = next())
      if (e["type"] == "error" || e["type"] == "response.done") return -1;
    const auto t0 = Clock::now();
    send({{"type", "response.cancel"}});
    for (json e = next(); e["type"] != "response.done"; e = next()) {
    }
    const double s = since(t0);
    beast::error_code ec;
    ws.next_layer().close(ec);
    return s;
  } catch (const std::exception&) {
    return -1;
  }
}

// One series of a server's /metrics, by its name with its labels as written (0: none).
double metric(uint16_t port, const std::string& series) {
  loadtest::Target t;
  t.host = "127.0.0.1", t.port = port, t.deadline = Clock::now() + std::chrono::seconds(60);
  const auto all = loadtest::scrape_metrics(t);
  const auto it = all.find(series);
  return it == all.end() ? 0 : it->second;
}

// A stretch of load: its wall time, and the CPU seconds the ingress and the node spent in it.
struct LoadRun {
  double wall = 0, cpu = 0, node_cpu = 0;
};

json cluster_status(uint16_t port) { return json::parse(call(port, bhttp::verb::get, "/v1/admin/cluster").body, nullptr, false); }
size_t members(uint16_t port) {
  const json s = cluster_status(port);
  return s.is_object() && s.contains("nodes") ? s["nodes"].size() : 0;
}
bool wait_for(const std::function<bool()>& done, double seconds) {
  const auto t0 = Clock::now();
  while (since(t0) < seconds) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

}  // namespace

int cmd_bench_cluster(const std::vector<std::string>& argv) {
  Args args(argv, {"model", "requests", "streams", "seconds", "heartbeat", "threads", "out"}, {"json"});
  if (!args.ok()) return fail(args.error());
  const std::string model = args.get("model", "models/default.gguf");
  const int requests = int(args.get_int("requests", 30));
  const int streams = int(args.get_int("streams", 4));
  const double seconds = args.get_double("seconds", 5);
  const double heartbeat = args.get_double("heartbeat", 2);
  const std::string threads = args.get("threads", "1");
  if (!args.ok()) return fail(args.error());
  if (!std::filesystem::exists(model)) return fail("no model at " + model + " (tutti model init --out " + model + ")");
  const std::string dir = args.get("out", std::filesystem::temp_directory_path().string() + "/tutti-bench-cluster-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream(dir + "/secret") << "bench-cluster-" << getpid() << "\n";
    std::ofstream(dir + "/cluster.toml") << "[cluster]\nheartbeat = " << heartbeat
                                          << "\n[admission]\nenabled = false\n[health]\ncanary_interval_s = 0\n[kv_cache]\nsize_mb = 128\n";
  }
  const uint16_t cluster_port = free_port(), ingress_port = free_port();
  const std::vector<std::string> common{"--config", dir + "/cluster.toml", "--cluster-secret-file", dir + "/secret", "--ledger="};
  auto node_args = [&](const std::string& name, uint16_t port) {
    std::vector<std::string> a{"serve", "--role", "executor", "--join", "127.0.0.1:" + std::to_string(cluster_port), "--model", model,
                               "--name", name, "--port", std::to_string(port), "--threads", threads};
    a.insert(a.end(), common.begin(), common.end());
    return a;
  };
  std::vector<std::string> ingress_args{"serve", "--role", "ingress", "--cluster-port", std::to_string(cluster_port), "--port",
                                        std::to_string(ingress_port)};
  ingress_args.insert(ingress_args.end(), common.begin(), common.end());
  Child ingress(ingress_args, dir + "/ingress.log");
  const uint16_t port_a = free_port();
  Child node_a(node_args("node-a", port_a), dir + "/node-a.log");
  if (!wait_for([&] { return members(ingress_port) == 1; }, 60)) return fail("the cluster did not come up; see " + dir);
  json report;
  std::fprintf(stderr, "bench cluster: model %s, heartbeat %.1f s, logs in %s\n", model.c_str(), heartbeat, dir.c_str());

  // ---- latency per request and per token: the same node, directly and through the ingress
  {
    std::vector<double> whole_direct, whole_ingress, ttft_direct, ttft_ingress, gap_direct, gap_ingress;
    for (int i = 0; i < 3; ++i) stream_chat(ingress_port, "warm up", 8), stream_chat(port_a, "warm up", 8);
    for (int i = 0; i < requests; ++i) {
      const std::string prompt = "request " + std::to_string(i) + ": say something";
      const json one = {{"messages", {{{"role", "user"}, {"content", prompt}}}}, {"max_tokens", 1}};
      for (int side = 0; side < 2; ++side) {  // alternating, so drift hits both alike
        const bool through = (i + side) % 2 == 0;
        const auto t0 = Clock::now();
        const Reply r = call(through ? ingress_port : port_a, bhttp::verb::post, "/v1/chat/completions", one.dump());
        if (r.status == 200) (through ? whole_ingress : whole_direct).push_back(since(t0));
        const StreamResult s = stream_chat(through ? ingress_port : port_a, prompt + " at length", 32);
        if (s.ok) {
          (through ? ttft_ingress : ttft_direct).push_back(s.ttft);
          auto& gaps = through ? gap_ingress : gap_direct;
          gaps.insert(gaps.end(), s.gaps.begin(), s.gaps.end());
        }
      }
    }
    const loadtest::Percentiles whole_d = loadtest::percentiles(whole_direct), whole_i = loadtest::percentiles(whole_ingress);
    const loadtest::Percentiles ttft_d = loadtest::percentiles(ttft_direct), ttft_i = loadtest::percentiles(ttft_ingress);
    const loadtest::Percentiles gap_d = loadtest::percentiles(gap_direct), gap_i = loadtest::percentiles(gap_ingress);
    report["latency"] = {
        {"requests", requests},
        {"one_token_request_p50_ms", {{"direct", 1e3 * whole_d.p50}, {"ingress", 1e3 * whole_i.p50}}},
        {"one_token_request_p90_ms", {{"direct", 1e3 * whole_d.p90}, {"ingress", 1e3 * whole_i.p90}}},
        {"ttft_p50_ms", {{"direct", 1e3 * ttft_d.p50}, {"ingress", 1e3 * ttft_i.p50}}},
        {"inter_token_mean_ms", {{"direct", 1e3 * gap_d.mean}, {"ingress", 1e3 * gap_i.mean}}},
        {"inter_token_p50_ms", {{"direct", 1e3 * gap_d.p50}, {"ingress", 1e3 * gap_i.p50}}},
        {"added_per_request_ms", 1e3 * (whole_i.p50 - whole_d.p50)},
        {"added_per_token_ms", 1e3 * (gap_i.mean - gap_d.mean)}};
  }

  // ---- the ingress's CPU: per token streamed, per one-token request, per second of speech,
  // each from `streams` concurrent clients for `seconds`
  auto under_load = [&](const std::function<void(int client, int i)>& work) {
    std::atomic<bool> stop{false};
    LoadRun run;
    const double cpu0 = ingress.cpu_seconds(), node_cpu0 = node_a.cpu_seconds();
    const auto t0 = Clock::now();
    std::vector<std::thread> load;
    for (int c = 0; c < streams; ++c)
      load.emplace_back([&, c] {
        for (int i = 0; !stop; ++i) work(c, i);
      });
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop = true;
    for (auto& t : load) t.join();
    run.wall = since(t0), run.cpu = ingress.cpu_seconds() - cpu0, run.node_cpu = node_a.cpu_seconds() - node_cpu0;
    return run;
  };
  {
    std::atomic<int64_t> tokens{0};
    const LoadRun r = under_load([&](int c, int i) {
      tokens += stream_chat(ingress_port, "stream " + std::to_string(c) + "." + std::to_string(i), 64).tokens;
    });
    report["ingress_cpu"] = {{"streams", streams},
                             {"tokens", tokens.load()},
                             {"seconds", r.wall},
                             {"tokens_per_second", double(tokens) / r.wall},
                             {"ingress_cpu_ms_per_1000_tokens", 1e6 * r.cpu / double(std::max<int64_t>(1, tokens))},
                             {"node_cpu_ms_per_1000_tokens", 1e6 * r.node_cpu / double(std::max<int64_t>(1, tokens))},
                             {"ingress_cpu_share", r.cpu / r.wall}};
  }
  {
    std::atomic<int64_t> done{0};
    const LoadRun r = under_load([&](int c, int i) {
      const json one = {{"messages", {{{"role", "user"}, {"content", "short " + std::to_string(c) + "." + std::to_string(i)}}}}, {"max_tokens", 1}};
      if (call(ingress_port, bhttp::verb::post, "/v1/chat/completions", one.dump()).status == 200) done++;
    });
    report["ingress_cpu_requests"] = {{"clients", streams},
                                      {"requests", done.load()},
                                      {"requests_per_second", double(done) / r.wall},
                                      {"ingress_cpu_ms_per_request", 1e3 * r.cpu / double(std::max<int64_t>(1, done))},
                                      {"ingress_cpu_share", r.cpu / r.wall}};
  }
  {
    // Speech: the ingress's sinks encode the wire format (PCM here).
    std::atomic<int64_t> pcm_bytes{0};
    const LoadRun r = under_load([&](int c, int) {
      const json speech = {{"input", "stream " + std::to_string(c) + " says something of a reasonable length now"}, {"voice", "alloy"},
                           {"response_format", "pcm"}};
      pcm_bytes += int64_t(call(ingress_port, bhttp::verb::post, "/v1/audio/speech", speech.dump()).body.size());
    });
    const double audio_s = double(pcm_bytes) / 2 / 24000;
    report["ingress_cpu_speech"] = {{"streams", streams},
                                    {"audio_seconds", audio_s},
                                    {"seconds", r.wall},
                                    {"ingress_cpu_ms_per_audio_second", 1e3 * r.cpu / std::max(1e-9, audio_s)},
                                    {"ingress_cpu_share", r.cpu / r.wall}};
  }

  // ---- barge-in to cancel, both ways
  {
    std::vector<double> direct, through;
    for (int i = 0; i < 8; ++i) {
      if (double s = barge_in_to_cancel(port_a); s >= 0) direct.push_back(s);
      if (double s = barge_in_to_cancel(ingress_port); s >= 0) through.push_back(s);
    }
    const loadtest::Percentiles d = loadtest::percentiles(direct), i = loadtest::percentiles(through);
    report["barge_in_to_cancel_ms"] = {{"direct_p50", 1e3 * d.p50}, {"ingress_p50", 1e3 * i.p50}, {"direct_max", 1e3 * d.max},
                                       {"ingress_max", 1e3 * i.max}, {"runs", through.size()}};
  }

  // ---- bytes per second per stream, node to ingress: samples (the decoder on the node, as
  // built) against tokens (what would cross with the decoder at the ingress). The rates are a
  // real speech answer's (through the ingress); the bytes per message are CAF's own
  // serialization of the messages that cross, plus BASP's header.
  {
    const json speech = {{"input", "the quick brown fox jumps over the lazy dog and keeps on running for a while"},
                         {"voice", "alloy"}, {"response_format", "pcm"}};
    const std::string generated = "tutti_generated_tokens_total{class=\"interactive\"}";
    const double tokens0 = metric(port_a, generated);
    const Reply sp = call(ingress_port, bhttp::verb::post, "/v1/audio/speech", speech.dump());
    const double audio_tokens = metric(port_a, generated) - tokens0;
    const double samples = double(sp.body.size()) / 2;  // pcm: 16-bit at 24 kHz
    const double audio_s = samples / 24000;
    const double tps = audio_s > 0 ? audio_tokens / audio_s : 0;
    caf::actor_system_config cfg;
    cluster::configure_cluster_node(cfg, heartbeat, {});
    caf::actor_system sys{cfg};
    auto wire = [&](caf::message m) {
      std::vector<char> buf;
      caf::binary_serializer sink{sys, buf};
      std::vector<caf::strong_actor_ptr> stack;  // BASP sends the forwarding stack, then the message
      (void)sink(stack, m);
      return double(buf.size() + caf::io::basp::header_size);
    };
    actors::media_delta empty;
    empty.request = int64_t(1) << 40, empty.token = 4242, empty.prompt_tokens = 40, empty.completion_tokens = 300;
    const double delta_bytes = wire(caf::make_message(actors::media_atom::value, empty));
    actors::media_delta one_sample = empty;
    one_sample.samples = {0.5f};
    const double per_sample = wire(caf::make_message(actors::media_atom::value, one_sample)) - delta_bytes;
    actors::step_events ev;
    ev.request = {int64_t(1) << 40}, ev.token = {4242}, ev.finish = {FinishReason::None}, ev.code = {ErrorCode::none}, ev.error = {""};
    const double event_bytes = wire(caf::make_message(actors::events_atom::value, ev));
    actors::text_delta td;
    td.request = int64_t(1) << 40, td.text = " word", td.prompt_tokens = 40, td.completion_tokens = 300;
    const double text_bytes = wire(caf::make_message(actors::delta_atom::value, td));
    const double samples_per_s = audio_s > 0 ? samples / audio_s : 0;
    // What the decoder would cost the ingress: the model's own audio decoder on 5 s of codes,
    // in this thread's CPU time.
    double decode_ms_per_audio_second = 0;
    if (auto file = GgufFile::open(model))
      if (auto mc = codecs::load_model_codecs(**file))
        if (auto codec = mc->audio(Modality::Audio)) {
          const ModalityInfo& info = *mc->info(Modality::Audio);
          auto decoder = codec->decoder({});
          std::vector<int32_t> codes(size_t(codec->tokens_per_second() * 5));
          for (size_t i = 0; i < codes.size(); ++i) codes[i] = int32_t((i * 2654435761u) % info.codebook_size);
          timespec a{}, b{};
          clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
          size_t out = 0;
          for (size_t i = 0; i < codes.size(); ++i)
            if (auto got = decoder->push(std::span<const int32_t>(&codes[i], 1))) out += got->size();
          out += decoder->finish().size();
          clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
          const double cpu = double(b.tv_sec - a.tv_sec) + 1e-9 * double(b.tv_nsec - a.tv_nsec);
          decode_ms_per_audio_second = 1e3 * cpu / (double(out) / codec->sample_rate());
        }
    report["decoder_placement"] = {{"speech_audio_seconds", audio_s},
                                   {"decoder_cpu_ms_per_audio_second", decode_ms_per_audio_second},
                                   {"audio_tokens_per_second", tps},
                                   {"samples_per_second", samples_per_s},
                                   {"media_delta_bytes", delta_bytes},
                                   {"bytes_per_sample", per_sample},
                                   {"step_event_bytes", event_bytes},
                                   {"text_delta_bytes", text_bytes},
                                   {"samples_bytes_per_audio_second", tps * delta_bytes + samples_per_s * per_sample},
                                   {"tokens_bytes_per_audio_second", tps * event_bytes}};
  }

  // ---- routing decisions per second (the policy alone, here)
  {
    json rates = json::object();
    for (int n : {4, 16, 64}) {
      cluster::RoutingPolicy p;
      for (int i = 0; i < n; ++i) {
        cluster::NodeLoad l;
        l.node = "node-" + std::to_string(i), l.models = {"m"}, l.free_kv_blocks = l.total_kv_blocks = 1000, l.step_seconds = 0.01;
        p.update(l);
      }
      std::vector<std::string> prompts;
      for (int i = 0; i < 256; ++i) prompts.push_back("system: you are helpful. user " + std::to_string(i) + ": " + std::string(300, 'x'));
      const auto t0 = Clock::now();
      int64_t decisions = 0;
      while (since(t0) < 0.5)
        for (int i = 0; i < 1000; ++i, ++decisions) {
          if (i % 4 == 3) (void)p.route_session("m", "s" + std::to_string(i % 64));
          else (void)p.route_text("m", prompts[size_t(i) % prompts.size()]);
          if (i % 100 == 0)  // heartbeats arrive meanwhile
            for (int k = 0; k < n; k += 8) {
              cluster::NodeLoad l = *p.node("node-" + std::to_string(k));
              l.waiting = 0;
              p.update(l);
            }
        }
      rates[std::to_string(n) + "_nodes"] = double(decisions) / since(t0);
    }
    report["routing_decisions_per_second"] = rates;
  }

  // ---- recovery: a second node, kill -9 of the first under load; a hang; rejoining
  {
    const uint16_t port_b = free_port();
    Child node_b(node_args("node-b", port_b), dir + "/node-b.log");
    if (!wait_for([&] { return members(ingress_port) == 2; }, 60)) return fail("node-b did not join; see " + dir);
    std::atomic<bool> stop{false}, killed{false};
    std::atomic<int> lost{0}, failed_after{0}, sent{0};
    std::atomic<double> first_success_after{-1};
    Clock::time_point kill_at;
    std::vector<std::thread> load;
    for (int t = 0; t < 2; ++t)
      load.emplace_back([&, t] {
        for (int i = 0; !stop; ++i) {
          sent++;
          const StreamResult s = stream_chat(ingress_port, "recovery " + std::to_string(t) + "." + std::to_string(i), 24);
          if (s.lost) lost++;
          if (killed && s.ok) {
            double none = -1;
            first_success_after.compare_exchange_strong(none, since(kill_at));
          }
        }
      });
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    kill_at = Clock::now();
    node_a.signal(SIGKILL);
    killed = true;
    wait_for([&] { return members(ingress_port) == 1; }, 30);
    const double dropped = since(kill_at);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    stop = true;
    for (auto& t : load) t.join();
    node_a.stop();
    // Rejoining: the node starts again (model load included) and is routed to.
    const auto restart = Clock::now();
    Child again(node_args("node-a", port_a), dir + "/node-a-again.log");
    wait_for([&] { return members(ingress_port) == 2; }, 60);
    const double rejoin = since(restart);
    // A hang: SIGSTOP, dropped after the heartbeat; SIGCONT, back.
    const auto stop_at = Clock::now();
    node_b.signal(SIGSTOP);
    wait_for([&] { return members(ingress_port) == 1; }, 10 * heartbeat);
    const double hung_dropped = since(stop_at);
    node_b.signal(SIGCONT);
    const auto cont_at = Clock::now();
    wait_for([&] { return members(ingress_port) == 2; }, 30);
    const double resumed = since(cont_at);
    report["recovery"] = {{"kill9_dropped_s", dropped},
                          {"kill9_first_success_after_s", first_success_after.load()},
                          {"kill9_requests_lost", lost.load()},
                          {"kill9_requests_sent", sent.load()},
                          {"restart_to_rejoined_s", rejoin},
                          {"sigstop_dropped_s", hung_dropped},
                          {"sigcont_to_rejoined_s", resumed},
                          {"heartbeat_s", heartbeat}};
  }

  if (args.has("json")) {
    std::printf("%s\n", report.dump(2).c_str());
    return 0;
  }
  const json& l = report["latency"];
  std::printf("latency, the same node direct | through the ingress (%d requests each):\n", requests);
  std::printf("  one-token request p50   %8.2f | %8.2f ms   (added %.2f ms)\n", l["one_token_request_p50_ms"]["direct"].get<double>(),
              l["one_token_request_p50_ms"]["ingress"].get<double>(), l["added_per_request_ms"].get<double>());
  std::printf("  streamed TTFT p50       %8.2f | %8.2f ms\n", l["ttft_p50_ms"]["direct"].get<double>(), l["ttft_p50_ms"]["ingress"].get<double>());
  std::printf("  inter-token mean        %8.3f | %8.3f ms   (added %.3f ms per token)\n", l["inter_token_mean_ms"]["direct"].get<double>(),
              l["inter_token_mean_ms"]["ingress"].get<double>(), l["added_per_token_ms"].get<double>());
  const json& c = report["ingress_cpu"];
  std::printf("ingress CPU: %.1f ms per 1,000 tokens streamed (node: %.1f ms), %.0f tokens/s over %d streams, ingress busy %.1f%% of a core\n",
              c["ingress_cpu_ms_per_1000_tokens"].get<double>(), c["node_cpu_ms_per_1000_tokens"].get<double>(),
              c["tokens_per_second"].get<double>(), streams, 100 * c["ingress_cpu_share"].get<double>());
  const json& rq = report["ingress_cpu_requests"];
  std::printf("ingress CPU: %.3f ms per one-token request, %.0f requests/s from %d clients (ingress busy %.1f%% of a core)\n",
              rq["ingress_cpu_ms_per_request"].get<double>(), rq["requests_per_second"].get<double>(), streams,
              100 * rq["ingress_cpu_share"].get<double>());
  const json& sc = report["ingress_cpu_speech"];
  std::printf("ingress CPU: %.2f ms per second of speech streamed (pcm) at %d streams, %.1f s of audio in %.1f s\n",
              sc["ingress_cpu_ms_per_audio_second"].get<double>(), streams, sc["audio_seconds"].get<double>(), sc["seconds"].get<double>());
  const json& b = report["barge_in_to_cancel_ms"];
  std::printf("barge-in to cancel (response.cancel to response.done) p50: direct %.2f ms, through the ingress %.2f ms\n",
              b["direct_p50"].get<double>(), b["ingress_p50"].get<double>());
  const json& d = report["decoder_placement"];
  std::printf("node to ingress per second of speech: %.0f bytes as samples (the decoder on the node: %.0f deltas of %.0f bytes + %.0f\n"
              "  samples of %.0f bytes), %.0f bytes as tokens (the decoder at the ingress: %.0f events of %.0f bytes); a text token: %.0f bytes\n",
              d["samples_bytes_per_audio_second"].get<double>(), d["audio_tokens_per_second"].get<double>(), d["media_delta_bytes"].get<double>(),
              d["samples_per_second"].get<double>(), d["bytes_per_sample"].get<double>(), d["tokens_bytes_per_audio_second"].get<double>(),
              d["audio_tokens_per_second"].get<double>(), d["step_event_bytes"].get<double>(), d["text_delta_bytes"].get<double>());
  std::printf("the model's audio decoder: %.2f ms CPU per second of audio (what each stream would add to the ingress with it there)\n",
              d["decoder_cpu_ms_per_audio_second"].get<double>());
  const json& r = report["routing_decisions_per_second"];
  std::printf("routing decisions per second: %.0f (4 nodes), %.0f (16), %.0f (64)\n", r["4_nodes"].get<double>(), r["16_nodes"].get<double>(),
              r["64_nodes"].get<double>());
  const json& v = report["recovery"];
  std::printf("recovery: kill -9 dropped after %.3f s, first success after %.3f s, %d of %d requests lost; restart to rejoined %.2f s;\n"
              "          SIGSTOP dropped after %.2f s (heartbeat %.1f s), SIGCONT to rejoined %.2f s\n",
              v["kill9_dropped_s"].get<double>(), v["kill9_first_success_after_s"].get<double>(), v["kill9_requests_lost"].get<int>(),
              v["kill9_requests_sent"].get<int>(), v["restart_to_rejoined_s"].get<double>(), v["sigstop_dropped_s"].get<double>(), heartbeat,
              v["sigcont_to_rejoined_s"].get<double>());
  return 0;
}

}  // namespace tutti::cli
