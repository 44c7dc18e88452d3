// The HTTP server on loopback with a real client: OpenAI-style completions (whole and
// streamed as server-sent events), models, health, metrics, and bad input answered in the
// protocol's form while the server keeps serving.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <thread>

#include "http_client.h"
#include "server_support.h"

namespace tutti {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;

using test::Reply;
Reply call(uint16_t port, bhttp::verb verb, const std::string& target, const std::string& body = "") {
  return test::http_call(port, verb, target, body);
}

struct HttpFixture : ::testing::Test {
  std::unique_ptr<test::ServerUnderTest> sut;
  uint16_t port = 0;
  void SetUp() override {
    http::ServerConfig sc;
    sc.max_body_bytes = 4096;
    sut = std::make_unique<test::ServerUnderTest>(sc);
    port = sut->port;
  }
};

TEST_F(HttpFixture, ChatCompletionWholeAndStreamedAgree) {
  // ignore_eos: a random model may end at once; the test is about the two forms agreeing.
  const std::string req = R"({"model":"tutti-test","messages":[{"role":"user","content":"Hello"}],"max_tokens":12,"tutti":{"ignore_eos":true})";
  const Reply whole = call(port, bhttp::verb::post, "/v1/chat/completions", req + "}");
  ASSERT_EQ(whole.status, 200) << whole.body;
  const json w = json::parse(whole.body);
  EXPECT_EQ(w["object"], "chat.completion");
  EXPECT_EQ(w["model"], "tutti-test");
  const std::string text = w["choices"][0]["message"]["content"];
  const int completion = w["usage"]["completion_tokens"];
  EXPECT_GT(completion, 0);
  // No media codes in a text answer from a unified model.
  EXPECT_EQ(text.find("<|audio"), std::string::npos) << text;

  const Reply sse = call(port, bhttp::verb::post, "/v1/chat/completions",
                         req + R"(,"stream":true,"stream_options":{"include_usage":true}})");
  ASSERT_EQ(sse.status, 200);
  std::string streamed;
  int usage_tokens = -1;
  bool done = false, finished = false;
  size_t pos = 0;
  while ((pos = sse.body.find("data: ", pos)) != std::string::npos) {
    const size_t end = sse.body.find("\n\n", pos);
    const std::string data = sse.body.substr(pos + 6, end - pos - 6);
    pos = end;
    if (data == "[DONE]") { done = true; break; }
    const json c = json::parse(data);
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    if (c.contains("usage")) usage_tokens = c["usage"]["completion_tokens"];
    for (auto& ch : c["choices"]) {
      if (ch["delta"].contains("content")) streamed += ch["delta"]["content"].get<std::string>();
      if (!ch["finish_reason"].is_null()) finished = true;
    }
  }
  EXPECT_TRUE(done);
  EXPECT_TRUE(finished);
  EXPECT_EQ(streamed, text);  // greedy: the same answer both ways
  EXPECT_EQ(usage_tokens, completion);

  const Reply comp = call(port, bhttp::verb::post, "/v1/completions", R"({"prompt":"Once","max_tokens":4,"tutti":{"class":"realtime","rate":100}})");
  ASSERT_EQ(comp.status, 200) << comp.body;
  EXPECT_EQ(json::parse(comp.body)["object"], "text_completion");
}

TEST_F(HttpFixture, ModelsHealthAndMetrics) {
  const Reply h = call(port, bhttp::verb::get, "/health");
  EXPECT_EQ(h.status, 200);
  const Reply m = call(port, bhttp::verb::get, "/v1/models");
  EXPECT_EQ(json::parse(m.body)["data"][0]["id"], "tutti-test");
  call(port, bhttp::verb::post, "/v1/completions", R"({"prompt":"a","max_tokens":3})");
  const Reply metrics = call(port, bhttp::verb::get, "/metrics");
  EXPECT_NE(metrics.body.find("tutti_completion_tokens_total 3"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("tutti_generated_tokens_total{class=\"interactive\"} 3"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("tutti_time_to_first_token_seconds_count{class=\"interactive\"} 1"), std::string::npos);
  EXPECT_NE(metrics.body.find("tutti_inter_token_latency_seconds_count{class=\"interactive\"} 2"), std::string::npos);
  EXPECT_NE(metrics.body.find("tutti_kv_blocks_in_use 0"), std::string::npos);
  EXPECT_NE(metrics.body.find("tutti_step_batch_size_bucket{le=\"1\"}"), std::string::npos);
  // What a gateway reads to pick a replica, under tutti's names and vLLM's.
  for (const char* gauge : {"tutti_requests_waiting 0", "tutti_requests_running 0", "tutti_kv_cache_utilization 0.000000",
                            "vllm:num_requests_waiting 0", "vllm:num_requests_running 0", "vllm:kv_cache_usage_perc 0.000000"})
    EXPECT_NE(metrics.body.find(gauge), std::string::npos) << gauge;
  // One model by id; every answer names its request.
  const Reply one = call(port, bhttp::verb::get, "/v1/models/tutti-test");
  EXPECT_EQ(one.status, 200);
  EXPECT_EQ(json::parse(one.body)["id"], "tutti-test");
  const Reply none = call(port, bhttp::verb::get, "/v1/models/other");
  EXPECT_EQ(none.status, 404);
  EXPECT_EQ(json::parse(none.body)["error"]["code"], "model_not_found");
  EXPECT_EQ(one.request_id.rfind("req_", 0), 0u) << one.request_id;
  EXPECT_NE(one.request_id, none.request_id);
  EXPECT_FALSE(metrics.request_id.empty());
}

TEST_F(HttpFixture, BadInputGetsErrorsInTheProtocolsFormAndServingGoesOn) {
  auto error_of = [&](const Reply& r) { return json::parse(r.body)["error"]; };
  Reply r = call(port, bhttp::verb::post, "/v1/chat/completions", "{not json");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(error_of(r)["type"], "invalid_request_error");
  r = call(port, bhttp::verb::post, "/v1/chat/completions", R"({"model":"other","messages":[{"role":"user","content":"x"}]})");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(error_of(r)["code"], "model_not_found");
  r = call(port, bhttp::verb::post, "/v1/completions", std::string(R"({"prompt":")") + std::string(8000, 'a') + "\"}");
  EXPECT_EQ(r.status, 413);
  r = call(port, bhttp::verb::get, "/v1/chat/completions");
  EXPECT_EQ(r.status, 405);
  r = call(port, bhttp::verb::get, "/nowhere");
  EXPECT_EQ(r.status, 404);
  r = call(port, bhttp::verb::post, "/v1/completions", R"({"prompt":"x","max_tokens":100000})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(error_of(r)["param"], "max_tokens");
  r = call(port, bhttp::verb::post, "/v1/completions", std::string("{\"prompt\":\"\xc3\x28\"}"));
  EXPECT_EQ(r.status, 400);
  // Fields of the wrong type name the field.
  r = call(port, bhttp::verb::post, "/v1/completions", R"({"prompt":"x","stream":true,"stream_options":{"include_usage":"yes"}})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(error_of(r)["param"], "stream_options.include_usage");
  r = call(port, bhttp::verb::post, "/v1/chat/completions", R"({"messages":[{"role":"user","content":[{"type":5}]}]})");
  EXPECT_EQ(r.status, 400);
  r = call(port, bhttp::verb::post, "/v1/completions", R"({"prompt":"x","tutti":{"class":"realtime","rate":20,"low_watermark_ms":500,"high_watermark_ms":100}})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(error_of(r)["param"], "tutti.low_watermark_ms");
  r = call(port, bhttp::verb::post, "/v1/completions", R"({"prompt":"x","tutti":{"class":7}})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(error_of(r)["param"], "tutti.class");
  // Garbage instead of HTTP, and a client that leaves mid-stream.
  {
    net::io_context ioc;
    tcp::socket s(ioc);
    s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
    net::write(s, net::buffer(std::string("NOT HTTP AT ALL\r\n\r\n")));
    char buf[256];
    beast::error_code ec;
    const size_t n = s.read_some(net::buffer(buf), ec);
    EXPECT_NE(std::string(buf, n).find("400"), std::string::npos);
  }
  {
    net::io_context ioc;
    tcp::socket s(ioc);
    s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
    const std::string body = R"({"prompt":"x","max_tokens":900,"stream":true,"tutti":{"ignore_eos":true}})";
    const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    net::write(s, net::buffer(req));
    char buf[512];
    s.read_some(net::buffer(buf));  // the stream has started
  }  // closed mid-stream
  const Reply after = call(port, bhttp::verb::post, "/v1/completions", R"({"prompt":"still here","max_tokens":3})");
  EXPECT_EQ(after.status, 200) << after.body;
}

}  // namespace
}  // namespace tutti

namespace tutti {
namespace {

// Beyond max_connections a new connection gets 503 in OpenAI's error form; once others
// close, connections are served again.
TEST(HttpLimits, TooManyConnectionsGet503AndServingResumes) {
  http::ServerConfig sc;
  sc.max_connections = 2;
  test::ServerUnderTest sut(sc);
  net::io_context ioc;
  std::vector<std::unique_ptr<tcp::socket>> idle;
  for (int i = 0; i < 2; ++i) {
    idle.push_back(std::make_unique<tcp::socket>(ioc));
    idle.back()->connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), sut.port));
  }
  // Wait until the server has accepted both (its connection gauge says so).
  for (int i = 0; i < 100 && sut.server->http().metrics().active_connections < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const Reply refused = call(sut.port, bhttp::verb::get, "/v1/models");
  EXPECT_EQ(refused.status, 503);
  EXPECT_EQ(json::parse(refused.body)["error"]["code"], "too_many_connections");
  EXPECT_EQ(call(sut.port, bhttp::verb::get, "/health").status, 200) << "the reserve serves the health check";
  idle.clear();
  int status = 0;
  for (int i = 0; i < 100 && status != 200; ++i) {  // the server notices the closes within moments
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    status = call(sut.port, bhttp::verb::get, "/v1/models").status;
  }
  EXPECT_EQ(status, 200);
}

using test::metric;

// Flow control end to end: a client that stops reading its stream pauses its own generation
// once the socket buffers and the client window are full (the server neither buffers the
// rest nor drops it), other clients are served meanwhile, and when it reads again it gets
// every token, the same text a client that reads at once gets.
TEST(HttpFlowControl, ClientThatStopsReadingPausesOnlyItsOwnGeneration) {
  http::ServerConfig sc;
  sc.send_buffer_bytes = 4096;
  sc.max_tokens = 4000;
  actors::PipelineConfig pc = test::ServerUnderTest::default_pipeline();
  pc.scheduler.client_window = 8;
  test::ServerUnderTest sut(sc, pc);
  const std::string body =
      R"({"model":"tutti-test","prompt":"slow reader","max_tokens":3000,"temperature":0,"stream":true,)"
      R"("stream_options":{"include_usage":true},"tutti":{"ignore_eos":true}})";

  net::io_context ioc;
  tcp::socket slow(ioc);
  slow.open(tcp::v4());
  slow.set_option(net::socket_base::receive_buffer_size(4096));
  slow.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), sut.port));
  const std::string head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                           std::to_string(body.size()) + "\r\n\r\n";
  net::write(slow, net::buffer(head + body));

  // It fills the buffers, then waits for its client.
  double held = 0;
  for (int i = 0; i < 500 && held < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    held = metric(sut.port, "tutti_sequences_held_for_client");
  }
  ASSERT_EQ(held, 1) << "the unread stream never paused";
  // Writes already in flight may still drain into the socket buffers and return credit (slow
  // under sanitizers): wait until the count stands still.
  double generated = metric(sut.port, "tutti_generated_tokens_total{class=\"interactive\"}");
  for (int i = 0; i < 50; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const double now = metric(sut.port, "tutti_generated_tokens_total{class=\"interactive\"}");
    if (now == generated) break;
    generated = now;
  }
  EXPECT_GT(generated, 0);
  EXPECT_LT(generated, 3000) << "the whole answer was generated into buffers";

  // Another client is served while it waits, and the paused stream does not move meanwhile.
  const Reply other = call(sut.port, bhttp::verb::post, "/v1/completions",
                           R"({"model":"tutti-test","prompt":"another","max_tokens":12,"tutti":{"ignore_eos":true}})");
  EXPECT_EQ(other.status, 200) << other.body;
  EXPECT_EQ(json::parse(other.body)["usage"]["completion_tokens"], 12);
  EXPECT_EQ(metric(sut.port, "tutti_generated_tokens_total{class=\"interactive\"}"), generated + 12);
  EXPECT_EQ(metric(sut.port, "tutti_sequences_held_for_client"), 1);

  // Now it reads: every token arrives, then the usage and [DONE].
  std::string stream_text;
  beast::error_code ec;
  char buf[65536];
  for (;;) {
    const size_t n = slow.read_some(net::buffer(buf), ec);
    if (ec) break;
    stream_text.append(buf, n);
  }
  std::string text;
  int usage_tokens = -1;
  bool done = false;
  for (size_t at = stream_text.find("data: "); at != std::string::npos; at = stream_text.find("data: ", at + 1)) {
    const std::string line = stream_text.substr(at + 6, stream_text.find("\n\n", at) - at - 6);
    if (line == "[DONE]") { done = true; continue; }
    const json chunk = json::parse(line);
    if (chunk.contains("usage") && chunk["usage"].is_object()) usage_tokens = chunk["usage"]["completion_tokens"];
    if (!chunk["choices"].empty()) text += chunk["choices"][0].value("text", "");
  }
  EXPECT_TRUE(done);
  EXPECT_EQ(usage_tokens, 3000);
  std::string whole_body = body;
  whole_body.replace(whole_body.find("\"stream\":true"), 13, "\"stream\":false");
  const Reply whole = call(sut.port, bhttp::verb::post, "/v1/completions", whole_body);
  ASSERT_EQ(whole.status, 200) << whole.body;
  EXPECT_EQ(text, json::parse(whole.body)["choices"][0]["text"].get<std::string>()) << "tokens were lost or reordered";
  EXPECT_EQ(metric(sut.port, "tutti_sequences_held_for_client"), 0);
}

// A client that stops reading for longer than the write timeout is dropped, and its paused
// sequence is cancelled (KV freed) rather than held forever.
TEST(HttpFlowControl, StalledReaderIsDroppedAfterTheWriteTimeout) {
  http::ServerConfig sc;
  sc.send_buffer_bytes = 4096;
  sc.max_tokens = 4000;
  sc.write_timeout_s = 0.5;
  actors::PipelineConfig pc = test::ServerUnderTest::default_pipeline();
  pc.scheduler.client_window = 8;
  test::ServerUnderTest sut(sc, pc);
  const std::string body = R"({"model":"tutti-test","prompt":"stalled","max_tokens":3000,"stream":true,"tutti":{"ignore_eos":true}})";
  net::io_context ioc;
  tcp::socket stalled(ioc);
  stalled.open(tcp::v4());
  stalled.set_option(net::socket_base::receive_buffer_size(4096));
  stalled.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), sut.port));
  net::write(stalled, net::buffer("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) +
                                  "\r\n\r\n" + body));
  // It pauses, then the server gives up on it: nothing is left running or held.
  bool paused = false, released = false;
  for (int i = 0; i < 1000 && !released; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const double held = metric(sut.port, "tutti_sequences_held_for_client");
    paused = paused || held == 1;
    released = paused && held == 0 && metric(sut.port, "tutti_running_sequences") == 0;
  }
  EXPECT_TRUE(paused);
  EXPECT_TRUE(released) << "the stalled client's sequence was never released";
  EXPECT_LT(metric(sut.port, "tutti_generated_tokens_total{class=\"interactive\"}"), 3000);
}

// Reads from a raw socket until the server closes it; false if it is still open after
// `limit` (generous: this checks that the server gives up, not how fast).
bool closed_by_server(tcp::socket& s, std::chrono::seconds limit) {
  s.non_blocking(true);
  const auto until = std::chrono::steady_clock::now() + limit;
  char buf[4096];
  while (std::chrono::steady_clock::now() < until) {
    beast::error_code ec;
    s.read_some(net::buffer(buf), ec);
    if (ec == net::error::would_block) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    if (ec) return true;  // EOF or reset
  }
  return false;
}

// Slow and half-open clients: a connection that never sends its request, one that stops
// half-way through its headers, and a WebSocket peer that goes silent (answers no ping) are
// each dropped after the read timeout, while a well-behaved client is served throughout.
TEST(HttpTimeouts, SlowAndHalfOpenClientsAreDropped) {
  http::ServerConfig sc;
  sc.read_timeout_s = 0.5;
  test::ServerUnderTest sut(sc);
  net::io_context ioc;
  auto connect = [&] {
    auto s = std::make_unique<tcp::socket>(ioc);
    s->connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), sut.port));
    return s;
  };
  auto silent = connect();
  auto half = connect();
  net::write(*half, net::buffer(std::string("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")));
  auto ws_silent = connect();
  net::write(*ws_silent, net::buffer(std::string(
      "GET /v1/realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")));
  EXPECT_EQ(call(sut.port, bhttp::verb::get, "/health").status, 200);
  EXPECT_TRUE(closed_by_server(*silent, std::chrono::seconds(20)));
  EXPECT_TRUE(closed_by_server(*half, std::chrono::seconds(20)));
  // The WebSocket peer read the handshake and session.created (closed_by_server reads), but
  // never answers the server's ping.
  EXPECT_TRUE(closed_by_server(*ws_silent, std::chrono::seconds(20)));
  EXPECT_EQ(call(sut.port, bhttp::verb::get, "/health").status, 200);
  for (int i = 0; i < 100 && sut.server->http().metrics().active_connections > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(sut.server->http().metrics().active_connections, 0u);
}

}  // namespace
}  // namespace tutti
