// /v1/realtime over a real WebSocket on loopback: the OpenAI Realtime event grammar for text,
// and non-fatal errors that keep the session open.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include "server_support.h"

namespace tutti {
namespace {

namespace beast = boost::beast;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;

struct RealtimeFixture : ::testing::Test {
  std::unique_ptr<test::ServerUnderTest> sut;
  net::io_context ioc;
  std::unique_ptr<beast::websocket::stream<tcp::socket>> ws;

  void SetUp() override {
    sut = std::make_unique<test::ServerUnderTest>();
    ws = std::make_unique<beast::websocket::stream<tcp::socket>>(ioc);
    ws->next_layer().connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), sut->port));
    ws->handshake("127.0.0.1", "/v1/realtime");
  }
  void TearDown() override {
    beast::error_code ec;
    ws->close(beast::websocket::close_code::normal, ec);
  }
  void send(const json& j) { ws->write(net::buffer(j.dump())); }
  void send_raw(const std::string& s) { ws->write(net::buffer(s)); }
  json next() {
    beast::flat_buffer b;
    ws->read(b);
    return json::parse(beast::buffers_to_string(b.data()));
  }
  // Reads events until one of `type` arrives; collects all on the way.
  json until(const std::string& type, std::vector<json>* seen = nullptr) {
    for (int i = 0; i < 10000; ++i) {
      json e = next();
      if (seen) seen->push_back(e);
      if (e["type"] == type) return e;
    }
    ADD_FAILURE() << "no " << type;
    return {};
  }
};

TEST_F(RealtimeFixture, TextConversationFollowsTheEventGrammar) {
  EXPECT_EQ(next()["type"], "session.created");
  send({{"type", "session.update"}, {"event_id", "c1"}, {"session", {{"instructions", "Be brief."}, {"temperature", 0.0}, {"max_response_output_tokens", 10}}}});
  const json updated = until("session.updated");
  EXPECT_EQ(updated["session"]["max_response_output_tokens"], 10);
  send({{"type", "conversation.item.create"},
        {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "Hello there"}}}}}}});
  EXPECT_EQ(until("conversation.item.created")["item"]["role"], "user");
  send({{"type", "response.create"}});
  std::vector<json> events;
  const json done = until("response.done", &events);
  std::string deltas, final_text;
  bool created = false;
  for (auto& e : events) {
    if (e["type"] == "response.created") created = true;
    if (e["type"] == "response.output_text.delta") deltas += e["delta"].get<std::string>();
    if (e["type"] == "response.output_text.done") final_text = e["text"];
  }
  EXPECT_TRUE(created);
  EXPECT_EQ(deltas, final_text);
  EXPECT_TRUE(done["response"]["status"] == "completed" || done["response"]["status"] == "incomplete");
  EXPECT_GT(done["response"]["usage"]["input_tokens"].get<int>(), 0);
  EXPECT_LE(done["response"]["usage"]["output_tokens"].get<int>(), 10);
}

TEST_F(RealtimeFixture, ErrorsAreEventsAndTheSessionStaysOpen) {
  EXPECT_EQ(next()["type"], "session.created");
  send_raw("{not json");
  json e = until("error");
  EXPECT_EQ(e["error"]["code"], "invalid_json");
  send({{"type", "no.such.event"}, {"event_id", "evt_42"}});
  e = until("error");
  EXPECT_EQ(e["error"]["code"], "unknown_event");
  EXPECT_EQ(e["error"]["event_id"], "evt_42");
  send({{"type", "response.create"}, {"event_id", "evt_43"}});
  EXPECT_EQ(until("error")["error"]["code"], "empty_conversation");
  send({{"type", "response.cancel"}});
  EXPECT_EQ(until("error")["error"]["code"], "response_cancel_not_active");
  // Fields of the wrong type are errors too, never a crash.
  send({{"type", "conversation.item.create"}, {"event_id", "evt_44"}, {"item", {{"type", "message"}, {"role", 5}}}});
  EXPECT_EQ(until("error")["error"]["type"], "invalid_request_error");
  send({{"type", "conversation.item.create"}, {"event_id", 7}, {"item", {{"role", "user"}, {"content", {{{"type", 1}}}}}}});
  EXPECT_EQ(until("error")["error"]["type"], "invalid_request_error");
  // Still serving: a long response, cancelled mid-way.
  send({{"type", "session.update"}, {"session", {{"max_response_output_tokens", 200}}}});
  until("session.updated");
  send({{"type", "conversation.item.create"}, {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "Go"}}}}}}});
  until("conversation.item.created");
  send({{"type", "response.create"}, {"event_id", "evt_45"}, {"response", {{"tutti", {{"class", "realtime"}, {"rate", "fast"}}}}}});
  e = until("error");
  EXPECT_EQ(e["error"]["event_id"], "evt_45");
  EXPECT_NE(e["error"]["message"].get<std::string>().find("tutti.rate"), std::string::npos);
  send({{"type", "response.create"}, {"response", {{"tutti", {{"class", "realtime"}, {"rate", 5}, {"low_watermark_ms", 50}, {"high_watermark_ms", 100}}}}}});
  until("response.created");
  send({{"type", "response.cancel"}});
  const json done = until("response.done");
  EXPECT_TRUE(done["response"]["status"] == "cancelled" || done["response"]["status"] == "completed");
}

}  // namespace
}  // namespace tutti
