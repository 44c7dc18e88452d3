// Access, accounting and shutdown through the real server: keys on every endpoint but
// /health and the page (bearer, or a subprotocol for browsers' WebSockets), per-key limits as
// 429 with Retry-After or realtime error events, one ledger record per request whatever its
// end, and a drain that lets running generations finish and refuses new ones.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <thread>

#include "actors/access/ledger.hpp"
#include "http_client.h"
#include "server_support.h"

namespace tutti {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;

const std::string kKey = "sk-test-0123456789";
const std::vector<std::pair<std::string, std::string>> kAuth = {{"Authorization", "Bearer " + kKey}};
const std::string kCompletion = R"({"prompt":"hello","max_tokens":4})";

http::ServerConfig with_key() {
  http::ServerConfig sc;
  EXPECT_TRUE(sc.api_keys.add(kKey, "tests").ok());
  return sc;
}

TEST(Access, KeysAreRequiredEverywhereButHealthAndThePage) {
  test::ServerUnderTest sut(with_key());
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::get, "/health").status, 200);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::get, "/").status, 200);
  for (const char* path : {"/v1/models", "/metrics"}) {
    const auto none = test::http_call(sut.port, bhttp::verb::get, path);
    EXPECT_EQ(none.status, 401) << path;
    EXPECT_EQ(none.www_authenticate, "Bearer");
    EXPECT_EQ(json::parse(none.body)["error"]["code"], "invalid_api_key");
    EXPECT_EQ(test::http_call(sut.port, bhttp::verb::get, path, "", {{"Authorization", "Bearer sk-wrong-0123456789"}}).status, 401);
    EXPECT_EQ(test::http_call(sut.port, bhttp::verb::get, path, "", kAuth).status, 200) << path;
  }
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/completions", kCompletion).status, 401);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/completions", kCompletion, kAuth).status, 200);
  // The key is never echoed, not even in the refusal of a wrong one.
  const auto wrong = test::http_call(sut.port, bhttp::verb::post, "/v1/completions", kCompletion, {{"Authorization", "Bearer sk-secret-999999"}});
  EXPECT_EQ(wrong.body.find("sk-secret"), std::string::npos);
  // WebSockets: refused without a key; a bearer header or the browser's subprotocol form.
  EXPECT_EQ(test::RealtimeWs(sut.port, "").refused, 401);
  EXPECT_EQ(test::RealtimeWs(sut.port, "", kKey).refused, 0);
  test::RealtimeWs browser(sut.port, "realtime, openai-insecure-api-key." + kKey);
  EXPECT_EQ(browser.refused, 0);
  EXPECT_EQ(browser.protocol, "realtime") << "the chosen subprotocol is never the key's";
  EXPECT_EQ(browser.next()["type"], "session.created");
  const std::string metrics = test::http_call(sut.port, bhttp::verb::get, "/metrics", "", kAuth).body;
  EXPECT_NE(metrics.find("tutti_auth_failures_total"), std::string::npos);
  EXPECT_EQ(metrics.find(kKey), std::string::npos);
}

TEST(Access, LimitsAreHttp429WithRetryAfterAndRealtimeErrorEvents) {
  http::ServerConfig sc = with_key();
  sc.key_limits.requests_per_minute = 4;
  sc.key_limits.concurrent_sessions = 1;
  test::ServerUnderTest sut(sc);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/completions", kCompletion, kAuth).status, 200);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/completions", kCompletion, kAuth).status, 200);
  // The WebSocket session is the key's one concurrent session; a second is refused.
  test::RealtimeWs session(sut.port, "", kKey);
  ASSERT_EQ(session.refused, 0);
  session.next();
  EXPECT_EQ(test::RealtimeWs(sut.port, "", kKey).refused, 429);
  // The session was the minute's third request, its first response the fourth; the next
  // response is an error event.
  session.send({{"type", "conversation.item.create"},
                {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "hi"}}}}}}});
  session.send({{"type", "response.create"}});
  EXPECT_EQ(session.until("response.done")["response"]["status"].is_string(), true);
  session.send({{"type", "response.create"}, {"event_id", "ev-9"}});
  const json refused = session.until("error");
  EXPECT_EQ(refused["error"]["code"], "rate_limit_exceeded");
  EXPECT_EQ(refused["error"]["event_id"], "ev-9");
  EXPECT_GT(refused["error"]["retry_after_s"].get<double>(), 0);
  const auto limited = test::http_call(sut.port, bhttp::verb::post, "/v1/completions", kCompletion, kAuth);
  EXPECT_EQ(limited.status, 429);
  EXPECT_EQ(json::parse(limited.body)["error"]["code"], "rate_limit_exceeded");
  EXPECT_GE(std::stoi(limited.retry_after), 1);
  EXPECT_LE(std::stoi(limited.retry_after), 60);
}

TEST(Ledger, EveryRequestIsRecordedOnceWhateverItsEnd) {
  const std::string path = std::string(TUTTI_BINARY_DIR) + "/test-data/ledger-server.db";
  for (const char* ext : {"", "-wal", "-shm"}) std::remove((path + ext).c_str());
  http::ServerConfig sc = with_key();
  sc.ledger_path = path;
  sc.key_limits.requests_per_minute = 4;
  auto sut = std::make_unique<test::ServerUnderTest>(sc);
  const uint16_t port = sut->port;
  // Completed: whole and streamed.
  EXPECT_EQ(test::http_call(port, bhttp::verb::post, "/v1/completions", kCompletion, kAuth).status, 200);
  EXPECT_EQ(test::http_call(port, bhttp::verb::post, "/v1/completions", R"({"prompt":"x","max_tokens":3,"stream":true})", kAuth).status, 200);
  // Speech: audio tokens out.
  EXPECT_EQ(test::http_call(port, bhttp::verb::post, "/v1/audio/speech", R"({"input":"hi","response_format":"wav"})", kAuth).status, 200);
  // A client that leaves mid-generation: cancelled (a paced stream, so it is still running).
  {
    net::io_context ioc;
    tcp::socket s(ioc);
    s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
    const std::string body = R"({"prompt":"x","max_tokens":400,"stream":true,"tutti":{"class":"realtime","rate":50}})";
    net::write(s, net::buffer("POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + kKey +
                              "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body));
    char buf[256];
    (void)s.read_some(net::buffer(buf));  // the answer has begun
  }
  // Over the limit: refused, and recorded as such (a video job too, though it never starts).
  EXPECT_EQ(test::http_call(port, bhttp::verb::post, "/v1/completions", kCompletion, kAuth).status, 429);
  EXPECT_EQ(test::http_call(port, bhttp::verb::post, "/v1/videos", R"({"prompt":"x","seconds":1})", kAuth).status, 429);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the cancellation reaches the session
  sut.reset();  // the server stops: everything is recorded
  auto ledger = std::move(access::UsageLedger::open(path)).value();
  EXPECT_EQ(*ledger->count(), 6);
  auto totals = std::move(ledger->totals("all")).value();
  ASSERT_EQ(totals.size(), 1u);
  EXPECT_EQ(totals[0].key, "tests");
  EXPECT_EQ(totals[0].requests, 6);
  EXPECT_EQ(totals[0].failed, 2) << "the refused ones";
  EXPECT_EQ(totals[0].tokens_out["text"], 4 + 3 + totals[0].tokens_out["text"] - 7);  // plus what the cancelled one produced
  EXPECT_GE(totals[0].tokens_out["text"], 7);
  EXPECT_GT(totals[0].tokens_out["audio"], 0);
  EXPECT_GT(totals[0].tokens_in["text"], 0);
}

TEST(Drain, RunningGenerationsFinishNewOnesAreRefused) {
  const std::string path = std::string(TUTTI_BINARY_DIR) + "/test-data/ledger-drain.db";
  for (const char* ext : {"", "-wal", "-shm"}) std::remove((path + ext).c_str());
  http::ServerConfig sc;
  sc.ledger_path = path;
  test::ServerUnderTest sut(sc);
  test::RealtimeWs idle(sut.port, "");  // a WebSocket with no response running: closed with "going away"
  ASSERT_EQ(idle.refused, 0);
  idle.next();
  // A realtime-paced stream of 40 tokens at 50/s: under a second, still running when the
  // drain starts.
  std::string got;
  std::thread client([&] {
    got = test::http_call(sut.port, bhttp::verb::post, "/v1/completions",
                          R"({"prompt":"x","max_tokens":40,"stream":true,"tutti":{"class":"realtime","rate":50}})").body;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  int cut = -1;
  std::thread drainer([&] { cut = sut.server->drain(10); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // No new work while draining: the listener is closed.
  net::io_context ioc;
  tcp::socket s(ioc);
  beast::error_code ec;
  s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), sut.port), ec);
  EXPECT_TRUE(ec) << "connected during the drain";
  drainer.join();
  client.join();
  EXPECT_EQ(cut, 0);
  EXPECT_NE(got.find("\"finish_reason\":\"length\""), std::string::npos) << got.substr(got.size() > 400 ? got.size() - 400 : 0);
  EXPECT_NE(got.find("data: [DONE]"), std::string::npos);
  auto ledger = std::move(access::UsageLedger::open(path)).value();
  EXPECT_EQ(*ledger->count(), 1);
  beast::flat_buffer b;
  beast::error_code read_ec;
  idle.ws.read(b, read_ec);  // the close frame (the server may be gone before our reply: any error)
  EXPECT_TRUE(read_ec);
  EXPECT_EQ(idle.ws.reason().code, beast::websocket::close_code::going_away) << read_ec.message();
}

}  // namespace
}  // namespace tutti
