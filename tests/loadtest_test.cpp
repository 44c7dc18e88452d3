// The load-test harness checked against a server whose timing is known: a stand-in
// OpenAI-compatible server answers each streamed chat completion with its first token after
// 80 ms and four more 20 ms apart (chunked transfer encoding), and refuses every speech
// request with 429. The harness must count what the server saw, measure at least those
// delays (and not much more), and file the refusals under their kind. Plus scenario parsing
// and the report's forms.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "tools/loadtest/report.h"
#include "tools/loadtest/runner.h"

namespace tutti::loadtest {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;

constexpr double kFirst = 0.080, kGap = 0.020;

class FixedDelayServer {
 public:
  FixedDelayServer() : acceptor_(ioc_, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0)) {
    port = acceptor_.local_endpoint().port();
    thread_ = std::thread([this] { accept_loop(); });
  }
  ~FixedDelayServer() {
    stop_ = true;
    {  // a blocking accept() is not woken by close(): wake it with a connection
      net::io_context ioc;
      tcp::socket wake(ioc);
      beast::error_code ec;
      wake.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port), ec);
    }
    thread_.join();
    for (auto& t : sessions_) t.join();
  }
  uint16_t port = 0;
  std::atomic<int> chats{0}, speeches{0}, musics{0}, videos{0}, video_polls{0}, video_deletes{0};
  static constexpr size_t kMusicBytes = 48000;  // 1 s of 16-bit 24 kHz audio
  static constexpr size_t kVideoBytes = 1000;

 private:
  void accept_loop() {
    while (!stop_) {
      tcp::socket s(ioc_);
      beast::error_code ec;
      acceptor_.accept(s, ec);
      if (ec || stop_) return;
      sessions_.emplace_back([this, s = std::move(s)]() mutable { serve(std::move(s)); });
    }
  }
  void serve(tcp::socket s) {
    beast::flat_buffer buf;
    bhttp::request<bhttp::string_body> req;
    beast::error_code ec;
    bhttp::read(s, buf, req, ec);
    if (ec) return;
    auto reply = [&](int status, const std::string& body) {
      bhttp::response<bhttp::string_body> res{bhttp::status(status), 11};
      res.set(bhttp::field::content_type, "application/json");
      res.body() = body;
      res.prepare_payload();
      bhttp::write(s, res, ec);
    };
    if (req.target() == "/v1/models") return reply(200, R"({"object":"list","data":[{"id":"fixed","object":"model"}]})");
    if (req.target() == "/v1/audio/speech") {
      ++speeches;
      return reply(429, R"({"error":{"type":"rate_limit_error","message":"busy"}})");
    }
    if (req.target() == "/v1/music/generations") {  // the whole answer after the first-token delay
      ++musics;
      std::this_thread::sleep_for(std::chrono::microseconds(int64_t(kFirst * 1e6)));
      return reply(200, std::string(kMusicBytes, '\0'));
    }
    // Video jobs: queued when created, completed at the second status poll.
    const std::string target(req.target());
    if (target == "/v1/videos") return reply(200, json{{"id", "video_" + std::to_string(++videos)}, {"status", "queued"}}.dump());
    if (target.rfind("/v1/videos/", 0) == 0) {
      if (req.method() == bhttp::verb::delete_) return ++video_deletes, reply(200, "{}");
      if (target.size() > 8 && target.compare(target.size() - 8, 8, "/content") == 0) return reply(200, std::string(kVideoBytes, 'v'));
      std::lock_guard<std::mutex> lock(mu_);
      const int polls = ++polls_[target];
      ++video_polls;
      return reply(200, json{{"status", polls >= 2 ? "completed" : "in_progress"}}.dump());
    }
    if (req.target() != "/v1/chat/completions") return reply(404, "{}");
    ++chats;
    // Chunked SSE: headers at once, then the events at fixed times.
    const auto start = std::chrono::steady_clock::now();
    net::write(s, net::buffer(std::string("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")), ec);
    auto chunk = [&](const std::string& data) {
      char size[16];
      std::snprintf(size, sizeof size, "%zx\r\n", data.size());
      net::write(s, net::buffer(size + data + "\r\n"), ec);
    };
    for (int k = 0; k < 5; ++k) {
      std::this_thread::sleep_until(start + std::chrono::microseconds(int64_t((kFirst + k * kGap) * 1e6)));
      chunk("data: " + json{{"choices", {{{"index", 0}, {"delta", {{"content", "w" + std::to_string(k)}}}}}}}.dump() + "\n\n");
    }
    chunk("data: " + json{{"choices", json::array()}, {"usage", {{"prompt_tokens", 3}, {"completion_tokens", 5}}}}.dump() + "\n\n");
    chunk("data: [DONE]\n\n");
    net::write(s, net::buffer(std::string("0\r\n\r\n")), ec);
  }
  std::mutex mu_;
  std::map<std::string, int> polls_;  // status polls per video job
  net::io_context ioc_;
  tcp::acceptor acceptor_;
  std::thread thread_;
  std::vector<std::thread> sessions_;
  std::atomic<bool> stop_{false};
};

TEST(LoadTest, MeasuresAKnownServerCorrectly) {
  FixedDelayServer server;
  auto sc = parse_scenario("[run]\ntarget = \"127.0.0.1:" + std::to_string(server.port) +
                               "\"\nname = \"fixed\"\ndrain_s = 5\n"
                               "[[stage]]\nduration_s = 1.5\ntext_rate = 8\nspeech_rate = 3\nmusic_rate = 3\nvideo_rate = 3\n"
                               "[[stage]]\nduration_s = 1.5\ntext_rate = 16\n",
                           "fixed.toml");
  ASSERT_TRUE(sc) << sc.error().message;
  auto report = run_scenario(*sc);
  ASSERT_TRUE(report) << report.error().message;
  const json& r = *report;
  const int64_t requests = r["counters"]["text.requests"]["all"];
  EXPECT_EQ(requests, server.chats.load()) << "the harness counts what the server saw";
  EXPECT_GT(requests, 10);
  EXPECT_EQ(r["counters"]["text.completed"]["all"], requests);
  EXPECT_EQ(r["counters"]["text.tokens"]["all"], 5 * requests) << "from the usage chunk";
  EXPECT_EQ(r["metrics"]["text.ttft_s"]["all"]["count"], requests);
  EXPECT_EQ(r["metrics"]["text.itl_s"]["all"]["count"], 4 * requests);
  // The delays are lower bounds the harness can never undercut; the upper bounds are loose
  // (a shared machine), but the numbers must be the server's, not the harness's noise.
  const json& ttft = r["metrics"]["text.ttft_s"]["all"];
  EXPECT_GE(ttft["p50"].get<double>(), kFirst - 0.002);
  EXPECT_LT(ttft["p50"].get<double>(), kFirst + 0.060);
  const json& itl = r["metrics"]["text.itl_s"]["all"];
  EXPECT_GE(itl["p50"].get<double>(), kGap * 0.5);
  EXPECT_LT(itl["p50"].get<double>(), kGap + 0.030);
  const json& e2e = r["metrics"]["text.e2e_s"]["all"];
  EXPECT_GE(e2e["p50"].get<double>(), kFirst + 4 * kGap - 0.002);
  // Both stages have samples; the second carries about twice the arrivals.
  const json& by = r["counters"]["text.requests"]["by_stage"];
  ASSERT_EQ(by.size(), 2u);
  EXPECT_GT(by[1].get<int64_t>(), by[0].get<int64_t>());
  // Refusals are errors of their kind, and only in the stage that sent speech.
  EXPECT_EQ(r["counters"]["speech.requests"]["all"], server.speeches.load());
  EXPECT_EQ(r["counters"]["errors.speech.http_429"]["all"], server.speeches.load());
  EXPECT_GT(server.speeches.load(), 0);
  EXPECT_FALSE(r["metrics"].contains("speech.ttfb_s")) << "a refused request has no time to first byte";
  // Music: every request answered after the delay with 1 s of audio.
  EXPECT_GT(server.musics.load(), 0);
  EXPECT_EQ(r["counters"]["music.requests"]["all"], server.musics.load());
  EXPECT_EQ(r["counters"]["music.completed"]["all"], server.musics.load());
  EXPECT_GE(r["metrics"]["music.ttfb_s"]["all"]["p50"].get<double>(), kFirst - 0.002);
  EXPECT_GE(r["metrics"]["music.rtf"]["all"]["p50"].get<double>(), kFirst - 0.002) << "e2e over 1 s of audio";
  // Video jobs: each created, polled to completion (2 polls, 100 ms apart), downloaded, deleted.
  const int64_t videos = server.videos.load();
  EXPECT_GT(videos, 0);
  EXPECT_EQ(r["counters"]["video.requests"]["all"], videos);
  EXPECT_EQ(r["counters"]["video.completed"]["all"], videos);
  EXPECT_EQ(server.video_polls.load(), 2 * videos);
  EXPECT_EQ(server.video_deletes.load(), videos);
  EXPECT_EQ(r["counters"]["video.bytes"]["all"], int64_t(FixedDelayServer::kVideoBytes) * videos);
  EXPECT_GE(r["metrics"]["video.latency_s"]["all"]["p50"].get<double>(), 0.2 - 0.002);
  // The forms people read, and a run compared with itself.
  const std::string html = html_report(r);
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("text.ttft_s"), std::string::npos);
  EXPECT_NE(terminal_summary(r).find("text.ttft_s"), std::string::npos);
  const json c = compare_reports(r, r);
  EXPECT_DOUBLE_EQ(c["metrics"]["text.ttft_s"]["p50"]["ratio"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(c["counters"]["text.requests"]["ratio"].get<double>(), 1.0);
}

TEST(LoadTest, ScenariosAreValidatedAndOnlyLoopbackIsATarget) {
  EXPECT_TRUE(parse_scenario("[[stage]]\nduration_s = 1\n", "ok.toml"));
  const std::pair<std::string, std::string> bad[] = {
      {"[run]\ntarget = \"10.0.0.5:8080\"\n[[stage]]\n", "loopback"},
      {"[run]\ntarget = \"example.com:80\"\n[[stage]]\n", "loopback"},
      {"[run]\ntarget = \"127.0.0.1\"\n[[stage]]\n", "HOST:PORT"},
      {"[run]\n", "no [[stage]]"},
      {"[[stage]]\nduration_s = 0\n", "positive"},
      {"[[stage]]\ntext_rate = \"fast\"\n", "number"},
      {"[[stage]]\n[voice]\nbarge_in = 2\n", "fraction"},
      {"[[stage]]\n[text]\nprompt_words = 5\n", "table"},
      {"[[stage]]\n[colour]\n", "unknown section"},
      {"[[stage]\n", "fixed.toml"}};
  for (const auto& [text, want] : bad) {
    auto s = parse_scenario(text, "fixed.toml");
    ASSERT_FALSE(s) << text;
    EXPECT_NE(s.error().message.find(want), std::string::npos) << s.error().message;
  }
  auto shipped = load_scenario(std::string(TUTTI_SOURCE_DIR) + "/config/loadtest-default.toml");
  ASSERT_TRUE(shipped) << shipped.error().message;
  EXPECT_EQ(shipped->stages.size(), 3u);
  EXPECT_EQ(percentiles({5, 1, 4, 2, 3}).p50, 3);
  EXPECT_EQ(percentiles({5, 1, 4, 2, 3}).max, 5);
  EXPECT_EQ(percentiles({}).count, 0);
}

}  // namespace
}  // namespace tutti::loadtest
