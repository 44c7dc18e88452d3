// Real time under mixed load against a real server whose steps are given a fake cost that
// depends on what is in them (slept inside each step through the step fault-injection hook),
// so the machine is the same on any host; the server learns that cost as it would a real
// one. Checked on outcomes the server counts (underruns, yields, refusals), not on
// wall-clock limits.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "http_client.h"
#include "server_support.h"

namespace tutti {
namespace {

namespace bhttp = boost::beast::http;
using json = nlohmann::json;
using test::metric;

// A step costs base + per_row for each sequence in it (prefill tokens a little more).
std::function<void(const StepPlan&)> fake_step_cost(double base_s, double per_row_s) {
  return [=](const StepPlan& p) {
    const double s = base_s + per_row_s * p.shape.rows + 1e-5 * p.shape.prefill_tokens;
    std::this_thread::sleep_for(std::chrono::duration<double>(s));
  };
}

// Chat requests of different lengths, so the cost model has seen enough varied steps.
void warm_up(uint16_t port) {
  for (int i = 0; i < 4; ++i) {
    std::string prompt;
    for (int w = 0; w < 5 + 20 * i; ++w) prompt += "word ";
    const auto r = test::http_call(port, bhttp::verb::post, "/v1/completions",
                                   json{{"prompt", prompt}, {"max_tokens", 6 + 4 * i}}.dump());
    ASSERT_EQ(r.status, 200) << r.body;
  }
}

// One voice answer (2 s of audio) on its own Realtime session; its final status.
std::string voice_answer(uint16_t port) {
  test::RealtimeWs ws(port);
  if (ws.refused) return "refused " + std::to_string(ws.refused);
  ws.next();
  ws.send({{"type", "session.update"}, {"session", {{"modalities", {"audio"}}, {"max_response_output_tokens", 400}}}});
  ws.until("session.updated");
  ws.send({{"type", "conversation.item.create"},
           {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "hello"}}}}}}});
  ws.send({{"type", "response.create"}});
  for (;;) {
    const json e = ws.next();
    if (e["type"] == "error") return "error " + e["error"]["code"].get<std::string>();
    if (e["type"] == "response.done") return e["response"]["status"].get<std::string>();
  }
}

// Two voice answers at 200 tokens/s (5 ms a token) beside four 2048-token images. A step
// costs 1 ms + 1 ms a sequence: the streams alone need 60% of the time, the images make
// every step 7 ms. With admission and the step allowance the images yield whenever a stream
// runs short and the streams never underrun; without them the streams stutter. Either way
// the images are what waits.
TEST(RealtimeLoad, ImageFloodBesideTwoVoiceSessionsLeavesThemWithNoUnderruns) {
  std::map<bool, double> underruns, batch_tokens;
  for (bool shaping : {true, false}) {
    actors::PipelineConfig pc = test::ServerUnderTest::default_pipeline();
    pc.kv_cache_bytes = 16 << 20;
    pc.scheduler.admission.enabled = shaping;
    pc.step_fault_injection = fake_step_cost(0.001, 0.001);
    std::vector<std::thread> images;  // joined once the server is gone (it closes their sockets)
    auto sut = std::make_unique<test::ServerUnderTest>(http::ServerConfig{}, pc);
    warm_up(sut->port);
    for (int i = 0; i < 4; ++i)
      images.emplace_back([port = sut->port] {
        try {  // the server stops before they finish; what they get then does not matter
          test::http_call(port, bhttp::verb::post, "/v1/images/generations", R"({"prompt":"a red circle","size":"64x64"})");
        } catch (...) {
        }
      });
    // The images are decoding before the voices start.
    for (int i = 0; i < 500 && metric(sut->port, "tutti_generated_tokens_total{class=\"batch\"}") < 40; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::string status[2];
    std::thread voices[2];
    for (int v = 0; v < 2; ++v) voices[v] = std::thread([&, v] { status[v] = voice_answer(sut->port); });
    for (auto& t : voices) t.join();
    for (const std::string& s : status) EXPECT_EQ(s, "completed") << (shaping ? "with" : "without") << " the allowance";
    underruns[shaping] = metric(sut->port, "tutti_realtime_underruns_total");
    batch_tokens[shaping] = metric(sut->port, "tutti_generated_tokens_total{class=\"batch\"}");
    if (shaping) {
      EXPECT_GT(metric(sut->port, "tutti_batch_yields_total"), 0);
      EXPECT_GT(metric(sut->port, "tutti_batch_tokens_deferred_total"), 0);
      EXPECT_GT(metric(sut->port, "tutti_step_cost_seconds{term=\"per_row\"}"), 0.0005) << "the fake cost was learned";
    }
    sut.reset();
    for (auto& t : images) t.join();
  }
  std::printf("voice underruns: %.0f with the allowance, %.0f without; image tokens by then: %.0f, %.0f\n", underruns[true],
              underruns[false], batch_tokens[true], batch_tokens[false]);
  EXPECT_EQ(underruns[true], 0);
  EXPECT_GT(underruns[false], 0);
  EXPECT_LT(batch_tokens[true], batch_tokens[false]) << "the images are what got slower";
}

// A machine too slow for even one stream (10 ms a step against 5 ms a token): a voice session
// is refused before its upgrade, a realtime chat stream at once, both with a retry hint, and
// counted; text still gets through.
TEST(RealtimeLoad, StreamTheCapacityCannotHoldIsRefusedAtOnce) {
  actors::PipelineConfig pc = test::ServerUnderTest::default_pipeline();
  pc.scheduler.admission.enabled = true;
  pc.step_fault_injection = fake_step_cost(0.01, 0.0005);
  test::ServerUnderTest sut({}, pc);
  warm_up(sut.port);
  test::RealtimeWs ws(sut.port);
  EXPECT_EQ(ws.refused, 429);
  EXPECT_EQ(metric(sut.port, "tutti_voice_sessions_refused_total"), 1);
  const auto r = test::http_call(sut.port, bhttp::verb::post, "/v1/completions",
                                 R"({"prompt":"count","max_tokens":50,"tutti":{"class":"realtime","rate":200}})");
  EXPECT_EQ(r.status, 429);
  const json body = json::parse(r.body);
  EXPECT_EQ(body["error"]["code"], "server_busy");
  EXPECT_NE(body["error"]["message"].get<std::string>().find("realtime streams"), std::string::npos) << r.body;
  EXPECT_GE(std::stoi(r.retry_after), 1);
  EXPECT_EQ(metric(sut.port, "tutti_admission_total{class=\"realtime\",outcome=\"capacity\"}"), 1);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/completions", R"({"prompt":"x","max_tokens":2})").status, 200);
}

}  // namespace
}  // namespace tutti
