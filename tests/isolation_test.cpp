// Isolation between customers and between sessions, through the real server: a key sees
// only its own jobs (unguessable ids; 404 otherwise; an admin key sees all), stream jobs use
// only allowed hosts, one key cannot hold every job slot, odd bytes in a path are answered,
// and session fields are validated like the HTTP ones.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <fstream>
#include <regex>
#include <thread>

#include "actors/http/media.hpp"
#include "actors/http/stream_job.hpp"
#include "http_client.h"
#include "server_support.h"

namespace tutti {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;

const std::string kAlice = "sk-alice-0123456789", kBob = "sk-bob-0123456789", kAdmin = "sk-admin-0123456789";
using Headers = std::vector<std::pair<std::string, std::string>>;
Headers as(const std::string& key) { return {{"Authorization", "Bearer " + key}}; }

http::ServerConfig three_keys() {
  http::ServerConfig sc;
  EXPECT_TRUE(sc.api_keys.add(kAlice, "alice").ok());
  EXPECT_TRUE(sc.api_keys.add(kBob, "bob").ok());
  EXPECT_TRUE(sc.api_keys.add(kAdmin, "admin", true).ok());
  return sc;
}

uint16_t free_port() {
  net::io_context ioc;
  tcp::acceptor a(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

std::string stream_body(uint16_t in, uint16_t out, const std::string& host = "127.0.0.1") {
  return json{{"input", "zmq:tcp://" + host + ":" + std::to_string(in)}, {"output", "zmq:tcp://127.0.0.1:" + std::to_string(out)},
              {"modality", "text"}}
      .dump();
}

int64_t metric(uint16_t port, const std::string& key, const std::string& name) {
  const std::string body = test::http_call(port, bhttp::verb::get, "/metrics", "", as(key)).body;
  const size_t at = body.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::stoll(body.substr(at + name.size() + 2));
}

TEST(Isolation, AKeySeesOnlyItsOwnJobs) {
  test::ServerUnderTest sut(three_keys());
  const auto created = test::http_call(sut.port, bhttp::verb::post, "/v1/videos", R"({"prompt":"x","seconds":1,"size":"64x64"})", as(kAlice));
  ASSERT_EQ(created.status, 200) << created.body;
  const std::string video = json::parse(created.body)["id"];
  EXPECT_TRUE(std::regex_match(video, std::regex("video_[0-9a-f]{32}"))) << video << ": 128 random bits, not a counter";
  const auto stream = test::http_call(sut.port, bhttp::verb::post, "/v1/streams", stream_body(free_port(), free_port()), as(kAlice));
  ASSERT_EQ(stream.status, 200) << stream.body;
  const std::string job = json::parse(stream.body)["id"];
  EXPECT_TRUE(std::regex_match(job, std::regex("stream_[0-9a-f]{32}"))) << job;
  for (const std::string& path : {"/v1/videos/" + video, "/v1/videos/" + video + "/content", "/v1/streams/" + job}) {
    const auto other = test::http_call(sut.port, bhttp::verb::get, path, "", as(kBob));
    EXPECT_EQ(other.status, 404) << path << ": another key's job does not exist for bob";
    EXPECT_EQ(other.body.find("alice"), std::string::npos);
    EXPECT_NE(test::http_call(sut.port, bhttp::verb::get, path, "", as(kAdmin)).status, 404) << path;
  }
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::delete_, "/v1/videos/" + video, "", as(kBob)).status, 404);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::delete_, "/v1/streams/" + job, "", as(kBob)).status, 404);
  EXPECT_EQ(json::parse(test::http_call(sut.port, bhttp::verb::get, "/v1/videos", "", as(kBob)).body)["data"].size(), 0u);
  EXPECT_EQ(json::parse(test::http_call(sut.port, bhttp::verb::get, "/v1/streams", "", as(kBob)).body)["data"].size(), 0u);
  EXPECT_EQ(json::parse(test::http_call(sut.port, bhttp::verb::get, "/v1/videos", "", as(kAlice)).body)["data"].size(), 1u);
  EXPECT_EQ(json::parse(test::http_call(sut.port, bhttp::verb::get, "/v1/streams", "", as(kAdmin)).body)["data"].size(), 1u);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::get, "/v1/videos/" + video, "", as(kAlice)).status, 200);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::delete_, "/v1/streams/" + job, "", as(kAlice)).status, 200);
}

TEST(Isolation, StreamJobsUseOnlyAllowedHosts) {
  const std::string ok_out = "zmq:tcp://127.0.0.1:18391";
  auto refused = [](const std::string& body) {
    auto r = http::parse_stream_job(body);
    return std::holds_alternative<http::ApiError>(r) ? std::get<http::ApiError>(r) : http::ApiError(ErrorCode::none);
  };
  for (const char* out : {"zmq:tcp://0.0.0.0:18390", "zmq:tcp://*:18390", "zmq:tcp://eth0:18390", "zmq:tcp://[::]:18390",
                          "zmq:tcp://10.1.2.3:18390"}) {
    const http::ApiError e = refused(json{{"input", "zmq:tcp://127.0.0.1:18392"}, {"output", out}}.dump());
    EXPECT_EQ(e.code, ErrorCode::invalid_request) << out;
    EXPECT_EQ(e.param, "output") << out;
  }
  for (const char* in : {"zmq:tcp://8.8.8.8:5555", "zmq:tcp://10.0.0.1:5555", "zmq:tcp://[2001:db8::1]:5555"}) {
    const http::ApiError e = refused(json{{"input", in}, {"output", ok_out}}.dump());
    EXPECT_EQ(e.param, "input") << in << ": the server never connects out to another host";
    EXPECT_NE(e.message.find("allowed_hosts"), std::string::npos) << e.message;
  }
  // Ports are numbers: :018391 is :18391.
  EXPECT_EQ(refused(json{{"input", "zmq:tcp://127.0.0.1:018391"}, {"output", ok_out}}.dump()).param, "output");
  EXPECT_EQ(refused(json{{"input", "zmq:tcp://localhost:18391"}, {"output", ok_out}}.dump()).param, "output");
  auto allowed = http::parse_stream_job(json{{"input", "zmq:tcp://localhost:18392"}, {"output", ok_out}}.dump());
  ASSERT_TRUE(std::holds_alternative<http::StreamJobRequest>(allowed));
  EXPECT_EQ(std::get<http::StreamJobRequest>(allowed).output_address.endpoint, "tcp://127.0.0.1:18391");
  // Configured ranges widen it; a bad entry is an error naming it.
  auto lan = http::parse_host_ranges({"10.0.0.0/8", "::1"});
  ASSERT_TRUE(lan);
  EXPECT_TRUE(std::holds_alternative<http::StreamJobRequest>(
      http::parse_stream_job(json{{"input", "zmq:tcp://10.1.2.3:5555"}, {"output", "zmq:tcp://10.9.9.9:5556"}}.dump(), *lan)));
  EXPECT_FALSE(http::parse_host_ranges({"10.0.0.0/33"}));
  EXPECT_FALSE(http::parse_host_ranges({"eth0"}));
  // Through the server: a 400 with the reason.
  test::ServerUnderTest sut;
  const auto r = test::http_call(sut.port, bhttp::verb::post, "/v1/streams", stream_body(free_port(), free_port(), "0.0.0.0"));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(json::parse(r.body)["error"]["param"], "input");
}

TEST(Isolation, AKeyCannotHoldEveryJobSlotAndIdleJobsEnd) {
  const std::string ledger = test::fresh_ledger("isolation-jobs.db");
  http::ServerConfig sc = three_keys();
  sc.key_limits.jobs_per_key = 1;
  sc.stream_idle_timeout_s = 1;
  sc.ledger_path = ledger;
  test::ServerUnderTest sut(sc);
  const auto first = test::http_call(sut.port, bhttp::verb::post, "/v1/streams", stream_body(free_port(), free_port()), as(kAlice));
  ASSERT_EQ(first.status, 200) << first.body;
  const auto second = test::http_call(sut.port, bhttp::verb::post, "/v1/streams", stream_body(free_port(), free_port()), as(kAlice));
  EXPECT_EQ(second.status, 429);
  EXPECT_EQ(json::parse(second.body)["error"]["type"], "rate_limit_error");
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/videos", R"({"prompt":"x","seconds":1})", as(kAlice)).status, 429)
      << "video and stream jobs count together";
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/streams", stream_body(free_port(), free_port()), as(kBob)).status, 200)
      << "bob's slots are his own";
  // Nothing publishes: the job ends after the idle timeout, and says why.
  const std::string id = json::parse(first.body)["id"];
  json state;
  for (int i = 0; i < 200; ++i) {
    state = json::parse(test::http_call(sut.port, bhttp::verb::get, "/v1/streams/" + id, "", as(kAlice)).body);
    if (state["status"] != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(state["status"], "ended") << state.dump();
  bool said = false;
  for (const json& e : state["events"]) said |= e["type"] == "idle_timeout";
  EXPECT_TRUE(said) << state.dump();
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/streams", stream_body(free_port(), free_port()), as(kAlice)).status, 200)
      << "the slot is free again";
  int refusals = 0;
  for (const auto& r : test::ledger_rows(ledger)) refusals += r.outcome == "refused";
  EXPECT_EQ(refusals, 2) << "every refusal in the ledger, stream jobs' too";
}

TEST(Isolation, OddBytesInAPathAreAnsweredNeverThrown) {
  test::ServerUnderTest sut(three_keys());
  net::io_context ioc;
  tcp::socket s(ioc);
  s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), sut.port));
  net::write(s, net::buffer("GET /v1/videos/\xff\xfe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + kAlice + "\r\nConnection: close\r\n\r\n"));
  std::string got;
  char buf[4096];
  beast::error_code ec;
  for (size_t n; (n = s.read_some(net::buffer(buf), ec)) > 0 && !ec;) got.append(buf, n);
  ASSERT_FALSE(got.empty()) << "an answer, not a dropped connection";
  EXPECT_TRUE(got.rfind("HTTP/1.1 404", 0) == 0 || got.rfind("HTTP/1.1 400", 0) == 0) << got.substr(0, 200);
  EXPECT_FALSE(json::parse(got.substr(got.find("\r\n\r\n") + 4), nullptr, false).is_discarded()) << got;
  EXPECT_EQ(metric(sut.port, kAlice, "tutti_io_thread_exceptions_total"), 0);
}

TEST(Isolation, SessionFieldsAreValidatedAndClientTextNeverCollidesWithMarkers) {
  test::ServerUnderTest sut;
  test::RealtimeWs ws(sut.port, "");
  ws.next();
  for (const json& bad : {json{{"temperature", -5}}, json{{"temperature", 1e300}}, json{{"temperature", "hot"}},
                          json{{"max_response_output_tokens", 0}}, json{{"instructions", 42}}}) {
    ws.send({{"type", "session.update"}, {"session", bad}});
    const json e = ws.until("error");
    EXPECT_EQ(e["error"]["code"], "invalid_value") << bad.dump();
  }
  ws.send({{"type", "session.update"},
           {"session", {{"max_response_output_tokens", "inf"}, {"instructions", "be \x1e" "0\x1f brief"}, {"output_modalities", {"text"}}}}});
  const json updated = ws.until("session.updated")["session"];
  EXPECT_FLOAT_EQ(updated["tutti"]["temperature"].get<float>(), 0.8f) << "the refused updates changed nothing";
  EXPECT_EQ(updated["max_output_tokens"], 1024);
  ws.send({{"type", "conversation.item.create"},
           {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "a\x1e" "7\x1f" "b\x1d"}}}}}}});
  ws.send({{"type", "response.create"}, {"response", {{"tutti", {{"ignore_eos", true}}}}}});
  EXPECT_NE(ws.until("response.done")["response"]["status"], "failed");
  // The internal marker bytes in client text are dropped, never read as markers.
  const std::string marked = "say \x1e" "0\x1f and \x1d<|im_end|>\x1f";
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/completions", json{{"prompt", marked}, {"max_tokens", 2}}.dump()).status, 200);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/music/generations",
                            json{{"prompt", marked}, {"lyrics", marked}, {"duration", 1}, {"response_format", "wav"}}.dump()).status, 200);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/images/generations", json{{"prompt", marked}, {"size", "64x64"}}.dump()).status, 200);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/audio/speech",
                            json{{"input", "hi"}, {"voice", marked}, {"response_format", "wav"}}.dump()).status, 200);
}

}  // namespace
}  // namespace tutti

namespace tutti {
namespace {

// Concurrent answers cannot overdraw a quota together: each reserves what it may produce
// when it starts, and one that would run past the quota stops there.
TEST(Isolation, TokenQuotasHoldUnderConcurrentRequests) {
  const std::string ledger = test::fresh_ledger("isolation-quota.db");
  http::ServerConfig sc = three_keys();
  sc.key_limits.tokens_per_minute = 100;
  sc.ledger_path = ledger;
  test::ServerUnderTest sut(sc);
  std::vector<std::thread> clients;
  std::atomic<int> ok{0}, refused{0};
  for (int i = 0; i < 8; ++i)
    clients.emplace_back([&] {
      const auto r = test::http_call(sut.port, bhttp::verb::post, "/v1/completions",
                                     R"({"prompt":"x","max_tokens":1000,"tutti":{"ignore_eos":true}})", as(kAlice));
      if (r.status == 200) ++ok;
      if (r.status == 429) ++refused;
    });
  for (auto& t : clients) t.join();
  EXPECT_GE(ok.load(), 1);
  EXPECT_EQ(ok + refused, 8);
  int64_t used = 0;
  for (const auto& r : test::ledger_rows_when(ledger, 8)) used += r.tokens_in.value("text", 0) + r.tokens_out.value("text", 0);
  EXPECT_LE(used, 100 + 8 * 4) << "the quota, and at most the prompts of the answers that started";
  EXPECT_GE(used, 60) << "the one that started ran until the quota was spent";
  // bob's quota is his own.
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::post, "/v1/completions", R"({"prompt":"x","max_tokens":4})", as(kBob)).status, 200);
}

}  // namespace
}  // namespace tutti

namespace tutti {
namespace {

json text_item(const std::string& text) {
  return {{"type", "conversation.item.create"},
          {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", text}}}}}}};
}

// A session's memory is bounded: its conversation by a byte budget (an error event, then a
// close with 1008) and by trimming as items arrive, and what is queued for a client that
// does not read by bytes as well as events.
TEST(Isolation, ASessionsMemoryIsBounded) {
  http::ServerConfig sc;
  sc.max_session_bytes = 64 << 10;
  sc.max_pending_bytes = 256 << 10;
  sc.send_buffer_bytes = 32768;  // what the kernel holds for a client that does not read
  test::ServerUnderTest sut(sc);
  {
    test::RealtimeWs ws(sut.port, "");
    ws.next();
    for (int i = 0; i < 20; ++i) {  // 20 x 30 kB: trimmed as they arrive, never over the budget
      ws.send(text_item(std::string(30000, 'a' + i % 26)));
      ASSERT_EQ(ws.until("conversation.item.added")["type"], "conversation.item.added") << i;
    }
    ws.send(text_item(std::string(100000, 'z')));  // one item over the whole budget
    const json e = ws.until("error");
    EXPECT_EQ(e["error"]["code"], "session_budget_exceeded");
    beast::flat_buffer b;
    beast::error_code ec;
    ws.ws.read(b, ec);
    EXPECT_EQ(ws.ws.reason().code, beast::websocket::close_code::policy_error) << ec.message();
  }
  {
    // A client that sends and never reads: each item is echoed back (100 kB each, 6 MB in
    // all, more than the sockets buffer), and the queue is cut at 256 kB, long before 1,024
    // events.
    test::RealtimeWs ws(sut.port, "");
    ws.ws.next_layer().set_option(net::socket_base::receive_buffer_size(16384));
    beast::error_code ec;
    for (int i = 0; i < 60 && !ec; ++i) ws.ws.write(net::buffer(text_item(std::string(100000, 'q')).dump()), ec);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    int events = 0;
    beast::flat_buffer b;
    while (!ec && events < 61) {  // session.created and 60 echoes if nothing were cut
      ws.ws.read(b, ec);
      b.consume(b.size());
      ++events;
    }
    EXPECT_TRUE(ec) << "the connection was cut";
    EXPECT_LT(events, 61) << "not every echo was queued";
  }
  const std::string health = test::http_call(sut.port, bhttp::verb::get, "/health").body;
  EXPECT_EQ(nlohmann::json::parse(health)["status"], "ok") << health;
}

}  // namespace
}  // namespace tutti

namespace tutti {
namespace {

// Clients with no key cannot lock everyone out: trickled requests hold a connection only for
// the head deadline, the reserve serves /health and keyed requests past max_connections, and
// one address may hold only so many connections.
TEST(Isolation, TrickledRequestsDoNotLockOutHealthOrKeyedClients) {
  http::ServerConfig sc = three_keys();
  sc.max_connections = 40;
  sc.head_timeout_s = 1;
  test::ServerUnderTest sut(sc);
  net::io_context ioc;
  std::vector<std::unique_ptr<tcp::socket>> trickles;
  for (int i = 0; i < 45; ++i) {
    trickles.push_back(std::make_unique<tcp::socket>(ioc));
    trickles.back()->connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), sut.port));
    net::write(*trickles.back(), net::buffer(std::string("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")));
  }
  for (int i = 0; i < 100 && sut.server->http().metrics().active_connections < 45; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::get, "/health").status, 200);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::get, "/v1/models", "", as(kBob)).status, 200) << "a keyed request";
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::get, "/v1/models", "", as("sk-wrong-0123456789")).status, 503);
  // The head deadline: the trickles are dropped after 1 s, and serving resumes for all.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_LT(sut.server->http().metrics().active_connections.load(), 40u);
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::get, "/v1/models", "", as("sk-wrong-0123456789")).status, 401);
}

TEST(Isolation, OneAddressHoldsOnlySoManyConnections) {
  http::ServerConfig sc;
  sc.max_connections_per_peer = 3;
  test::ServerUnderTest sut(sc);
  net::io_context ioc;
  std::vector<std::unique_ptr<tcp::socket>> idle;
  for (int i = 0; i < 3; ++i) {
    idle.push_back(std::make_unique<tcp::socket>(ioc));
    idle.back()->connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), sut.port));
  }
  for (int i = 0; i < 100 && sut.server->http().metrics().active_connections < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const auto refused = test::http_call(sut.port, bhttp::verb::get, "/health");
  EXPECT_EQ(refused.status, 503);
  EXPECT_NE(refused.body.find("this address"), std::string::npos) << refused.body;
  idle.clear();
  int status = 0;
  for (int i = 0; i < 100 && status != 200; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    status = test::http_call(sut.port, bhttp::verb::get, "/health").status;
  }
  EXPECT_EQ(status, 200);
}

}  // namespace
}  // namespace tutti

namespace tutti {
namespace {

// One WebSocket message does not freeze the others: an input_image is decoded on a media
// worker, first frame only. A 70 s H.264 stream sent as an image was once decoded whole on
// the I/O thread (and refused for its length at the end); now its first frame is the image.
TEST(Isolation, AnImageInputIsItsFirstFrameDecodedOffTheIoThread) {
  const std::string dir = std::string(TUTTI_BINARY_DIR) + "/test-data";
  const std::string bomb = dir + "/bomb.h264";
  ASSERT_EQ(std::system(("ffmpeg -nostdin -loglevel error -y -f lavfi -i testsrc=size=160x120:rate=25 -t 70 -c:v libx264 "
                         "-preset ultrafast -crf 51 -g 1000 -f h264 '" + bomb + "'").c_str()), 0);
  std::ifstream f(bomb, std::ios::binary);
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), {});
  ASSERT_GT(bytes.size(), 1000u);
  test::ServerUnderTest sut;
  test::RealtimeWs ws(sut.port, "");
  ws.next();
  ws.send({{"type", "conversation.item.create"},
           {"item", {{"type", "message"}, {"role", "user"},
                     {"content", {{{"type", "input_image"}, {"image", http::base64_encode(bytes)}}, {{"type", "input_text"}, {"text", "what is it"}}}}}}});
  const json created = ws.next();
  EXPECT_EQ(created["type"], "conversation.item.added") << created.dump();
  EXPECT_EQ(test::http_call(sut.port, bhttp::verb::get, "/health").status, 200);
  // Events of the session keep their order: a response asked for after the image sees it.
  ws.send({{"type", "response.create"}, {"response", {{"tutti", {{"ignore_eos", true}}}}}});
  EXPECT_GE(ws.until("response.done")["response"]["usage"]["input_tokens"].get<int>(), 256);
}

}  // namespace
}  // namespace tutti
