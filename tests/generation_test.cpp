// One generation lifecycle for every transport (actors/http/generation.hpp), through the
// real server: answers cut short are billed with every token their client was sent and count
// against the key's quota, the token metrics count every transport, a refused Realtime
// request leaves nothing behind, and every error code reaches both protocols in their form.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <thread>

#include "actors/http/conversation.hpp"
#include "actors/http/errors.hpp"
#include "actors/http/server_state.hpp"
#include "pipeline/model_builder.h"
#include "http_client.h"
#include "server_support.h"

namespace tutti {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;

// A generation's sink (an actor) may handle a delta while its server is being destroyed:
// it posts through the server's IoGate, which runs what comes before close and drops what
// comes after, never touching the I/O context that is gone.
TEST(IoGate, PostsBeforeCloseRunAndPostsAfterItAreDropped) {
  auto ioc = std::make_unique<net::io_context>();
  auto gate = std::make_shared<http::IoGate>(*ioc);
  auto ran = std::make_shared<int>(0);
  gate->post([ran] { ++*ran; });
  ioc->run();
  EXPECT_EQ(*ran, 1);
  gate->close();
  ioc.reset();  // without the gate, the next post would write into freed memory
  gate->post([ran] { ++*ran; });
  EXPECT_EQ(*ran, 1);
  EXPECT_EQ(ran.use_count(), 1) << "the dropped handler was destroyed, not kept";
}

const std::string kKey = "sk-generation-0123456789";
const std::vector<std::pair<std::string, std::string>> kAuth = {{"Authorization", "Bearer " + kKey}};

http::ServerConfig keyed(const std::string& ledger) {
  http::ServerConfig sc;
  EXPECT_TRUE(sc.api_keys.add(kKey, "tests").ok());
  sc.ledger_path = ledger;
  return sc;
}

int64_t metric(uint16_t port, const std::string& name) {
  const std::string body = test::http_call(port, bhttp::verb::get, "/metrics", "", kAuth).body;
  const size_t at = body.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::stoll(body.substr(at + name.size() + 2));
}

void text_item(test::RealtimeWs& ws, const std::string& text) {
  ws.send({{"type", "conversation.item.create"},
           {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", text}}}}}}});
  ws.until("conversation.item.added");
}

TEST(Generation, AnSseAnswerCutByItsClientIsBilledEveryTokenSentAndCountsAgainstTheQuota) {
  const std::string ledger = test::fresh_ledger("generation-sse-cut.db");
  http::ServerConfig sc = keyed(ledger);
  sc.key_limits.tokens_per_minute = 200;
  test::ServerUnderTest sut(sc);
  int chunks = 0;
  {
    net::io_context ioc;
    tcp::socket s(ioc);
    s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), sut.port));
    const std::string body = R"({"prompt":"x","max_tokens":1000,"stream":true,"tutti":{"class":"realtime","rate":400,"ignore_eos":true}})";
    net::write(s, net::buffer("POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + kKey +
                              "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body));
    std::string got;
    char buf[4096];
    while (chunks < 150) {  // a paced stream: one chunk per token
      got.append(buf, s.read_some(net::buffer(buf)));
      for (size_t at; (at = got.find("data: ")) != std::string::npos; got.erase(0, at + 6)) ++chunks;
    }
  }  // the client hangs up
  const auto rows = test::ledger_rows_when(ledger, 1);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].outcome, "cancelled");
  EXPECT_GE(rows[0].tokens_out.value("text", 0), chunks - 1) << "every token the client was sent (the first chunk carries none)";
  EXPECT_GT(rows[0].tokens_in.value("text", 0), 0);
  // What is left of the key's 200 tokens is what the next answer may produce.
  const auto next = test::http_call(sut.port, bhttp::verb::post, "/v1/completions", R"({"prompt":"x","max_tokens":1000,"tutti":{"ignore_eos":true}})", kAuth);
  if (next.status == 200) {
    EXPECT_LE(json::parse(next.body)["usage"]["completion_tokens"].get<int>(), 200 - (chunks - 1)) << next.body;
  } else {
    EXPECT_EQ(json::parse(next.body)["error"]["code"], "token_quota_exceeded") << next.body;
  }
}

TEST(Generation, ARealtimeAnswerCutByItsClientIsBilledEveryTokenSentAndCountsAgainstTheQuota) {
  const std::string ledger = test::fresh_ledger("generation-realtime-cut.db");
  http::ServerConfig sc = keyed(ledger);
  sc.key_limits.tokens_per_minute = 200;
  test::ServerUnderTest sut(sc);
  int deltas = 0;
  {
    test::RealtimeWs ws(sut.port, "", kKey);
    ASSERT_EQ(ws.refused, 0);
    ws.next();
    ws.send({{"type", "session.update"}, {"session", {{"max_response_output_tokens", 1000}, {"output_modalities", {"text"}}}}});
    text_item(ws, "tell me everything");
    ws.send({{"type", "response.create"}, {"response", {{"tutti", {{"class", "realtime"}, {"rate", 400}, {"ignore_eos", true}}}}}});
    while (deltas < 150) deltas += ws.next()["type"] == "response.output_text.delta";
    beast::error_code ignored;
    ws.ws.next_layer().close(ignored);  // the client hangs up
  }
  const auto rows = test::ledger_rows_when(ledger, 1);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].endpoint, "/v1/realtime");
  EXPECT_EQ(rows[0].outcome, "cancelled");
  EXPECT_GE(rows[0].tokens_out.value("text", 0), deltas) << rows[0].tokens_out.dump();
  // What is left of the key's 200 tokens is what the next answer may produce.
  const auto next = test::http_call(sut.port, bhttp::verb::post, "/v1/completions", R"({"prompt":"x","max_tokens":1000,"tutti":{"ignore_eos":true}})", kAuth);
  if (next.status == 200) {
    EXPECT_LE(json::parse(next.body)["usage"]["completion_tokens"].get<int>(), 200 - deltas) << next.body;
  } else {
    EXPECT_EQ(json::parse(next.body)["error"]["code"], "token_quota_exceeded") << next.body;
  }
}

TEST(Generation, TokenMetricsCountEveryTransport) {
  test::ServerUnderTest sut(keyed(""));
  const json http_done = json::parse(test::http_call(sut.port, bhttp::verb::post, "/v1/completions", R"({"prompt":"hello","max_tokens":5})", kAuth).body);
  int64_t out = http_done["usage"]["completion_tokens"].get<int64_t>(), in = http_done["usage"]["prompt_tokens"].get<int64_t>();
  {
    test::RealtimeWs ws(sut.port, "", kKey);
    ws.next();
    ws.send({{"type", "session.update"}, {"session", {{"max_response_output_tokens", 5}, {"output_modalities", {"text"}}}}});
    text_item(ws, "hello");
    ws.send({{"type", "response.create"}});
    const json usage = ws.until("response.done")["response"]["usage"];
    out += usage["output_tokens"].get<int64_t>(), in += usage["input_tokens"].get<int64_t>();
  }
  const json job = json::parse(test::http_call(sut.port, bhttp::verb::post, "/v1/videos", R"({"prompt":"x","seconds":1,"size":"64x64"})", kAuth).body);
  json state;
  for (int i = 0; i < 600; ++i) {
    state = json::parse(test::http_call(sut.port, bhttp::verb::get, "/v1/videos/" + job["id"].get<std::string>(), "", kAuth).body);
    if (state["status"] != "queued" && state["status"] != "in_progress") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(state["status"], "completed") << state.dump();
  out += state["usage"]["output_tokens"].get<int64_t>(), in += state["usage"]["input_tokens"].get<int64_t>();
  EXPECT_EQ(metric(sut.port, "tutti_completion_tokens_total"), out) << "HTTP, Realtime and video jobs alike";
  EXPECT_EQ(metric(sut.port, "tutti_prompt_tokens_total"), in);
  EXPECT_EQ(metric(sut.port, "tutti_generations_running"), 0);
}

TEST(Generation, ARealtimeRequestWithABadFieldLeavesNoPhantom) {
  const std::string ledger = test::fresh_ledger("generation-phantom.db");
  http::ServerConfig sc = keyed(ledger);
  sc.key_limits.requests_per_minute = 3;  // the session, and two responses
  auto sut = std::make_unique<test::ServerUnderTest>(sc);
  {
    test::RealtimeWs ws(sut->port, "", kKey);
    ASSERT_EQ(ws.refused, 0);
    ws.next();
    ws.send({{"type", "session.update"}, {"session", {{"output_modalities", {"text"}}}}});
    text_item(ws, "hello");
    ws.send({{"type", "response.create"}, {"event_id", "bad-1"}, {"response", {{"tutti", {{"class", "warp"}}}}}});
    const json error = ws.until("error");
    EXPECT_EQ(error["error"]["event_id"], "bad-1");
    EXPECT_EQ(error["error"]["param"], "tutti.class");
    EXPECT_EQ(metric(sut->port, "tutti_generations_running"), 0) << "the refused request holds nothing";
    for (int i = 0; i < 2; ++i) {  // neither counts the bad one against the key's minute
      ws.send({{"type", "response.create"}, {"response", {{"tutti", {{"ignore_eos", true}}}}}});
      EXPECT_NE(ws.until("response.done")["response"]["status"], "failed") << i;
    }
  }
  // The session's connection goes (the /metrics call is one connection of its own).
  for (int i = 0; i < 100 && metric(sut->port, "tutti_http_connections") > 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  // Recorded after the socket closed: no row without an id, and none lost as a duplicate.
  EXPECT_EQ(test::http_call(sut->port, bhttp::verb::post, "/v1/completions", R"({"prompt":"x","max_tokens":2})", kAuth).status, 429);
  sut.reset();
  const auto rows = test::ledger_rows(ledger);
  ASSERT_EQ(rows.size(), 3u) << "two responses and the refused completion";
  std::set<std::string> ids;
  for (const auto& r : rows) {
    EXPECT_EQ(r.request_id.back() == ':', false) << r.request_id;
    ids.insert(r.request_id);
  }
  EXPECT_EQ(ids.size(), rows.size());
  EXPECT_EQ(rows[0].outcome, "incomplete");
  EXPECT_EQ(rows[2].outcome, "refused");
}

TEST(Generation, BusyReachesBothProtocolsInTheirOwnForm) {
  actors::PipelineConfig pc = test::ServerUnderTest::default_pipeline();
  pc.scheduler.max_waiting = 0;  // every request finds the queue full
  test::ServerUnderTest sut(http::ServerConfig{}, pc);
  const auto busy = test::http_call(sut.port, bhttp::verb::post, "/v1/completions", R"({"prompt":"x","max_tokens":2})");
  EXPECT_EQ(busy.status, 429);
  EXPECT_EQ(json::parse(busy.body)["error"]["code"], "server_busy");
  EXPECT_EQ(json::parse(busy.body)["error"]["type"], "rate_limit_error");
  EXPECT_GE(std::stoi(busy.retry_after), 1);
  test::RealtimeWs ws(sut.port, "");
  ws.next();
  text_item(ws, "hello");
  ws.send({{"type", "response.create"}, {"event_id", "e-1"}});
  const json error = ws.until("error");
  EXPECT_EQ(error["error"]["code"], "server_busy");
  EXPECT_EQ(error["error"]["type"], "rate_limit_error");
  EXPECT_EQ(error["error"]["event_id"], "e-1");
  EXPECT_GT(error["error"]["retry_after_s"].get<double>(), 0);
  // Refused before it started (the front door saw the full queue): no response was created,
  // and the session takes the next request.
  ws.send({{"type", "response.create"}, {"event_id", "e-2"}});
  EXPECT_EQ(ws.until("error")["error"]["event_id"], "e-2");
}

// Every code has its HTTP form (a status, OpenAI's error object) and its Realtime form (an
// error event with a type and a code), from the one table.
TEST(Generation, EveryErrorCodeHasBothProtocolForms) {
  std::set<std::string> names;
  for (int c = 1; c <= int(ErrorCode::executor_unavailable); ++c) {
    const http::ApiError e{ErrorCode(c), "what happened"};
    names.insert(error_code_name(e.code));
    EXPECT_GE(e.status(), 400) << error_code_name(e.code);
    EXPECT_LT(e.status(), 600);
    const json body = json::parse(e.body());
    EXPECT_EQ(body["error"]["message"], "what happened");
    EXPECT_TRUE(body["error"]["type"].is_string());
    EXPECT_TRUE(body["error"]["code"].is_string() || c == int(ErrorCode::invalid_request)) << error_code_name(e.code);
    const json event = e.realtime_event("ev");
    EXPECT_EQ(event["type"], "error");
    EXPECT_EQ(event["error"]["type"], body["error"]["type"]);
    EXPECT_TRUE(event["error"]["code"].is_string() && !event["error"]["code"].get<std::string>().empty()) << error_code_name(e.code);
    EXPECT_EQ(event["error"]["event_id"], "ev");
  }
  EXPECT_EQ(names.size(), size_t(ErrorCode::executor_unavailable)) << "every code its own name";
  EXPECT_EQ(http::ApiError(ErrorCode::unauthorized).status(), 401);
  EXPECT_EQ(http::ApiError(ErrorCode::rate_limited).wire_code(), "rate_limit_exceeded");
  EXPECT_EQ(http::ApiError(ErrorCode::context_length_exceeded).wire_code(), "context_length_exceeded");
  EXPECT_EQ(http::ApiError(ErrorCode::shutting_down).status(), 503);
  EXPECT_GT(http::ApiError(ErrorCode::shutting_down).retry_after(), 0);
  EXPECT_EQ(http::ApiError(ErrorCode::not_found, "", "", 0, "video_not_found").wire_code(), "video_not_found");
}

// The request for an answer of each modality, as realtime sessions and stream jobs build it.
TEST(Conversation, AnswerRequestShapesEachModality) {
  const ModalityTable table = default_modalities(1000);
  http::Conversation c;
  c.instructions = "be brief";
  c.items.push_back({"user", "hi", {}});
  c.items.push_back({"user", "", {7, 8, 9}, Modality::Audio});
  const actors::text_request base = c.request(http::ChatTemplate::Plain);
  EXPECT_EQ(base.prompt, "system: be brief\nuser: hi\nuser: \x1e" "0\x1f\nassistant:");
  ASSERT_EQ(base.media_parts.size(), 1u);
  EXPECT_EQ(c.media_tokens().at(Modality::Audio), 3);

  http::AnswerShape text;
  text.max_tokens = 12;
  text.temperature = 0.2f;
  auto t = std::get<actors::text_request>(http::answer_request(base, text, table));
  EXPECT_EQ(t.modality, Modality::Text);
  EXPECT_EQ(t.request_class, RequestClass::Interactive);
  EXPECT_EQ(t.max_tokens, 12);
  EXPECT_FLOAT_EQ(t.temperature, 0.2f);

  const ModalityInfo& audio = *table.find(Modality::Audio);
  http::AnswerShape speech{Modality::Audio, 0.2f, 0, 3.0};
  auto a = std::get<actors::text_request>(http::answer_request(base, speech, table));
  EXPECT_EQ(a.request_class, RequestClass::Realtime);
  EXPECT_DOUBLE_EQ(a.tokens_per_second, audio.tokens_per_second());
  EXPECT_EQ(a.max_tokens, int(std::ceil(3.0 * audio.tokens_per_second())));
  EXPECT_FLOAT_EQ(a.temperature, 0.7f) << "never greedy for codes";
  speech.max_tokens = 50;
  EXPECT_EQ(std::get<actors::text_request>(http::answer_request(base, speech, table)).max_tokens, 50);

  const ModalityInfo& video = *table.find(Modality::Video);
  const int per_frame = int(std::lround(video.tokens_per_second() / std::max(1.0, double(video.frame_rate))));
  http::AnswerShape frames{Modality::Video, 0.8f, per_frame * 2 + 1, 2.0};
  EXPECT_EQ(std::get<actors::text_request>(http::answer_request(base, frames, table)).max_tokens, per_frame * 2) << "whole frames";
  frames.max_tokens = 0;
  EXPECT_EQ(std::get<actors::text_request>(http::answer_request(base, frames, table)).max_tokens,
            per_frame * std::max(1, int(std::lround(2.0 * video.frame_rate))));

  auto missing = http::answer_request(base, speech, ModalityTable{});
  ASSERT_TRUE(std::holds_alternative<http::ApiError>(missing));
  EXPECT_EQ(std::get<http::ApiError>(missing).code, ErrorCode::unsupported_modality);
}

}  // namespace
}  // namespace tutti
