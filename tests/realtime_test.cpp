// The Realtime client event grammar as a plain function, then /v1/realtime over a real
// WebSocket on loopback: the event grammar for text, and non-fatal errors that keep the
// session open.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include "actors/http/conversation.hpp"
#include "actors/http/realtime_events.hpp"
#include "http_client.h"
#include "server_support.h"

namespace tutti {
namespace {

namespace beast = boost::beast;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;

namespace rt = http::realtime;

rt::EventError parse_error(const json& j) {
  auto r = rt::parse_client_event(j.dump());
  EXPECT_TRUE(std::holds_alternative<rt::EventError>(r)) << j.dump();
  return std::holds_alternative<rt::EventError>(r) ? std::get<rt::EventError>(r) : rt::EventError{};
}
template <class T>
T parse_as(const json& j, std::string* event_id = nullptr) {
  auto r = rt::parse_client_event(j.dump());
  if (!std::holds_alternative<rt::ClientEvent>(r)) {
    ADD_FAILURE() << j.dump() << ": " << std::get<rt::EventError>(r).message;
    return T{};
  }
  auto& ev = std::get<rt::ClientEvent>(r);
  if (event_id) *event_id = ev.event_id;
  EXPECT_TRUE(std::holds_alternative<T>(ev.body)) << j.dump();
  return std::holds_alternative<T>(ev.body) ? std::get<T>(ev.body) : T{};
}

TEST(RealtimeEvents, SessionUpdateReadsBothSpellingsAndChecksTheWholeUpdate) {
  std::string id;
  auto u = parse_as<rt::SessionUpdate>({{"type", "session.update"}, {"event_id", "e1"},
                                        {"session", {{"instructions", "Hi"}, {"temperature", 0.5}, {"max_response_output_tokens", 3},
                                                     {"input_audio_format", "g711_ulaw"}, {"modalities", {"text", "audio"}},
                                                     {"turn_detection", {{"silence_duration_ms", 300}, {"create_response", false}}}}}},
                                       &id);
  EXPECT_EQ(id, "e1");
  EXPECT_EQ(u.instructions, "Hi");
  EXPECT_FLOAT_EQ(*u.temperature, 0.5f);
  EXPECT_EQ(u.max_output_tokens, 3);
  // Out of range is an error naming the field, as over HTTP, never clamped into a value.
  EXPECT_NE(parse_error({{"type", "session.update"}, {"session", {{"max_response_output_tokens", -3}}}}).message.find("max_response_output_tokens"),
            std::string::npos);
  EXPECT_EQ(u.input_wire, http::AudioWire::G711Ulaw);
  EXPECT_FALSE(u.output_wire.has_value());
  EXPECT_EQ(u.modalities, (std::vector<std::string>{"text", "audio"}));
  EXPECT_EQ(u.turn_detection, rt::SessionUpdate::Turns::ServerVad);
  EXPECT_EQ(u.vad.silence_duration_ms, 300);
  EXPECT_FALSE(u.create_response);
  // The GA spelling: audio.input.format / audio.output.format, turn detection under audio.input.
  u = parse_as<rt::SessionUpdate>({{"type", "session.update"},
                                   {"session", {{"audio", {{"input", {{"format", {{"type", "audio/pcma"}}}, {"turn_detection", nullptr}}},
                                                           {"output", {{"format", {{"type", "audio/pcm"}, {"rate", 24000}}}}}}}}}});
  EXPECT_EQ(u.input_wire, http::AudioWire::G711Alaw);
  EXPECT_EQ(u.output_wire, http::AudioWire::Pcm16);
  EXPECT_EQ(u.turn_detection, rt::SessionUpdate::Turns::Manual);
  EXPECT_EQ(parse_as<rt::SessionUpdate>({{"type", "session.update"}, {"session", json::object()}}).turn_detection,
            rt::SessionUpdate::Turns::Keep);
  // One bad field refuses the whole update.
  EXPECT_EQ(parse_error({{"type", "session.update"}, {"session", {{"instructions", "x"}, {"modalities", {"audio", "video"}}}}}).code,
            "invalid_value");
  EXPECT_EQ(parse_error({{"type", "session.update"}, {"session", {{"output_audio_format", "mp3"}}}}).code, "invalid_value");
  EXPECT_EQ(parse_error({{"type", "session.update"}, {"session", {{"turn_detection", {{"threshold", 2}}}}}}).code, "invalid_value");
  EXPECT_EQ(parse_error({{"type", "session.update"}, {"session", {{"turn_detection", {{"threshold", "high"}}}}}}).code, "invalid_value");
  EXPECT_EQ(parse_error({{"type", "session.update"}, {"session", {{"tutti", {{"binary_audio", "flac"}}}}}}).code, "invalid_value");
  EXPECT_EQ(parse_error({{"type", "session.update"}, {"session", 3}}).code, "invalid_value");
  EXPECT_EQ(parse_as<rt::SessionUpdate>({{"type", "session.update"}, {"session", {{"tutti", {{"binary_audio", "opus"}}}}}}).binary_opus, true);
}

TEST(RealtimeEvents, ItemsResponsesAndAudioEvents) {
  auto item = parse_as<rt::ItemCreate>(json::parse(R"({"type": "conversation.item.create", "item": {"id": "mine", "role": "system",
      "content": [{"type": "input_text", "text": "a"}, {"type": "input_image", "image_url": "data:image/png;base64,QUJD"},
                  {"type": "text", "text": "b"}, 7]}})"));
  EXPECT_EQ(item.id, "mine");
  EXPECT_EQ(item.role, "system");
  EXPECT_EQ(item.text, "ab");
  EXPECT_EQ(item.images_base64, std::vector<std::string>{"QUJD"});
  EXPECT_EQ(parse_error({{"type", "conversation.item.create"}, {"item", {{"role", "tool"}, {"content", {{{"type", "text"}, {"text", "x"}}}}}}}).code,
            "invalid_item");
  EXPECT_EQ(parse_error({{"type", "conversation.item.create"}, {"item", {{"content", json::array()}}}}).code, "empty_item");
  EXPECT_EQ(parse_error({{"type", "conversation.item.create"}, {"item", {{"content", "hello"}}}}).code, "invalid_value");
  EXPECT_EQ(parse_error({{"type", "conversation.item.create"}, {"item", {{"role", 5}}}}).code, "invalid_value");

  auto resp = parse_as<rt::ResponseCreate>({{"type", "response.create"}, {"response", {{"modalities", {"audio", 3}}, {"tutti", {{"rate", 5}}}}}});
  EXPECT_EQ(resp.modalities, std::vector<std::string>{"audio"});
  ASSERT_TRUE(resp.tutti.has_value());
  EXPECT_EQ((*resp.tutti)["rate"], 5);
  EXPECT_FALSE(parse_as<rt::ResponseCreate>({{"type", "response.create"}}).modalities.has_value());
  EXPECT_EQ(parse_error({{"type", "response.create"}, {"response", "now"}}).code, "invalid_value");

  EXPECT_EQ(parse_as<rt::AudioAppend>({{"type", "input_audio_buffer.append"}, {"audio", "AAAA"}}).audio_base64, "AAAA");
  EXPECT_EQ(parse_error({{"type", "input_audio_buffer.append"}, {"audio", 1}, {"event_id", "z"}}).event_id, "z");
  parse_as<rt::AudioCommit>({{"type", "input_audio_buffer.commit"}});
  parse_as<rt::AudioClear>({{"type", "input_audio_buffer.clear"}});
  parse_as<rt::ResponseCancel>({{"type", "response.cancel"}});

  EXPECT_EQ(std::get<rt::EventError>(rt::parse_client_event("[1,2]")).code, "invalid_json");
  EXPECT_EQ(std::get<rt::EventError>(rt::parse_client_event("")).code, "invalid_json");
  EXPECT_EQ(parse_error({{"event_id", "q"}}).code, "missing_type");
  EXPECT_EQ(parse_error({{"type", "session.delete"}}).code, "unknown_event");

  EXPECT_EQ(rt::choose_subprotocol("openai-insecure-api-key.sk-1, x-other ,realtime"), "realtime");
  EXPECT_EQ(rt::choose_subprotocol(" openai-insecure-api-key.sk-1 ,x-other"), "x-other");
  EXPECT_EQ(rt::choose_subprotocol("openai-insecure-api-key.sk-1"), "");
  EXPECT_EQ(rt::choose_subprotocol(",,"), "");

  EXPECT_FALSE(rt::parse_binary_message("").has_value());
  EXPECT_FALSE(rt::parse_binary_message(std::string(1, char(http::BinaryKind::AudioOut)) + "x").has_value());
  const std::string frame = std::string(1, char(http::BinaryKind::VideoIn)) + "jpg";  // the payload is a view into it
  auto bin = rt::parse_binary_message(frame);
  ASSERT_TRUE(bin.has_value());
  EXPECT_EQ(bin->kind, http::BinaryKind::VideoIn);
  EXPECT_EQ(std::string(bin->payload.begin(), bin->payload.end()), "jpg");
}

struct RealtimeFixture : ::testing::Test {
  std::unique_ptr<test::ServerUnderTest> sut;
  std::unique_ptr<test::RealtimeWs> client;
  bool unified_model = true;

  void SetUp() override {
    sut = std::make_unique<test::ServerUnderTest>(http::ServerConfig{}, test::ServerUnderTest::default_pipeline(), unified_model);
    client = std::make_unique<test::RealtimeWs>(sut->port);
  }
  void TearDown() override {
    beast::error_code ec;
    client->ws.close(beast::websocket::close_code::normal, ec);
  }
  void send(const json& j) { client->send(j); }
  void send_raw(const std::string& s) { client->send_raw(s); }
  json next() { return client->next(); }
  json until(const std::string& type, std::vector<json>* seen = nullptr) { return client->until(type, seen); }
};

TEST_F(RealtimeFixture, TextConversationFollowsTheEventGrammar) {
  EXPECT_EQ(next()["type"], "session.created");
  send({{"type", "session.update"}, {"event_id", "c1"}, {"session", {{"instructions", "Be brief."}, {"temperature", 0.0}, {"max_response_output_tokens", 10},
                                                     {"output_modalities", {"text"}}}}});
  const json updated = until("session.updated");
  EXPECT_EQ(updated["session"]["type"], "realtime") << "the GA session object";
  EXPECT_EQ(updated["session"]["max_output_tokens"], 10);
  EXPECT_EQ(updated["session"]["output_modalities"], json::array({"text"}));
  send({{"type", "conversation.item.create"},
        {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "Hello there"}}}}}}});
  EXPECT_EQ(until("conversation.item.added")["item"]["role"], "user");
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

// The GA grammar the official clients build their state from: the session object, items
// added and done, one output item per response with its content part, response.done with
// the output, and the item events (retrieve, delete); the beta dialect on request.
TEST_F(RealtimeFixture, TheGaGrammarCarriesItemsOutputsAndTheirState) {
  const json created = next()["session"];
  EXPECT_EQ(created["type"], "realtime");
  EXPECT_EQ(created["output_modalities"], json::array({"audio"})) << "GA: audio out by default";
  EXPECT_EQ(created["audio"]["input"]["turn_detection"]["type"], "server_vad");
  EXPECT_EQ(created["audio"]["input"]["format"], json({{"type", "audio/pcm"}, {"rate", 24000}}));
  send({{"type", "session.update"},
        {"session", {{"type", "realtime"}, {"output_modalities", {"text"}}, {"max_output_tokens", 6},
                     {"audio", {{"input", {{"turn_detection", {{"type", "semantic_vad"}, {"eagerness", "high"}}}}}}}}}});
  const json updated = until("session.updated")["session"];
  EXPECT_EQ(updated["audio"]["input"]["turn_detection"]["type"], "semantic_vad");
  EXPECT_EQ(updated["audio"]["input"]["turn_detection"]["eagerness"], "high");
  EXPECT_EQ(updated["max_output_tokens"], 6);
  send({{"type", "conversation.item.create"},
        {"item", {{"id", "u1"}, {"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "Hello"}}}}}}});
  const json added = until("conversation.item.added");
  EXPECT_EQ(added["item"]["id"], "u1");
  EXPECT_TRUE(added["previous_item_id"].is_null());
  EXPECT_EQ(next()["type"], "conversation.item.done");
  send({{"type", "response.create"}, {"response", {{"max_output_tokens", 2}, {"tutti", {{"ignore_eos", true}}}}}});
  std::vector<json> events;
  const json done = until("response.done", &events);
  std::vector<std::string> order;
  std::string deltas, assistant_id;
  for (const json& e : events) {
    const std::string type = e["type"];
    if (type == "response.output_text.delta") deltas += e["delta"].get<std::string>();
    else order.push_back(type);
    if (type == "response.output_item.added") assistant_id = e["item"]["id"];
    if (type == "conversation.item.added") EXPECT_EQ(e["previous_item_id"], "u1");
  }
  EXPECT_EQ(order, (std::vector<std::string>{"response.created", "rate_limits.updated", "response.output_item.added", "conversation.item.added",
                                             "response.content_part.added", "response.output_text.done", "response.content_part.done",
                                             "response.output_item.done", "conversation.item.done", "response.done"}));
  EXPECT_EQ(done["response"]["status"], "incomplete") << "cut by the response's own max_output_tokens";
  EXPECT_EQ(done["response"]["usage"]["output_tokens"], 2);
  ASSERT_EQ(done["response"]["output"].size(), 1u);
  EXPECT_EQ(done["response"]["output"][0]["id"], assistant_id);
  EXPECT_EQ(done["response"]["output"][0]["content"][0]["type"], "output_text");
  EXPECT_EQ(done["response"]["output"][0]["content"][0]["text"], deltas);
  send({{"type", "conversation.item.retrieve"}, {"item_id", assistant_id}});
  const json retrieved = until("conversation.item.retrieved");
  EXPECT_EQ(retrieved["item"]["role"], "assistant");
  EXPECT_EQ(retrieved["item"]["content"][0]["text"], deltas);
  send({{"type", "conversation.item.delete"}, {"item_id", "u1"}});
  EXPECT_EQ(until("conversation.item.deleted")["item_id"], "u1");
  send({{"type", "conversation.item.retrieve"}, {"event_id", "r2"}, {"item_id", "u1"}});
  const json gone = until("error");
  EXPECT_EQ(gone["error"]["code"], "item_not_found");
  EXPECT_EQ(gone["error"]["event_id"], "r2");
  send({{"type", "conversation.item.truncate"}, {"item_id", assistant_id}, {"content_index", 0}, {"audio_end_ms", 0}});
  EXPECT_EQ(until("error")["error"]["code"], "item_truncate_invalid_item_id") << "a text item has no audio to cut";

  // A client still on the beta interface gets its own spellings.
  test::RealtimeWs beta(sut->port, "", "", {{"OpenAI-Beta", "realtime=v1"}});
  const json beta_session = beta.next()["session"];
  EXPECT_EQ(beta_session["modalities"], json::array({"text"}));
  EXPECT_FALSE(beta_session.contains("output_modalities"));
  beta.send({{"type", "conversation.item.create"},
             {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "Hello"}}}}}}});
  EXPECT_EQ(beta.next()["type"], "conversation.item.created");
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
  until("conversation.item.added");
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

TEST(RealtimeConversation, OldestItemsToDropKeepsTheNewestAndTrimsInSteps) {
  const int64_t items[] = {100, 100, 100, 100};
  EXPECT_EQ(http::oldest_items_to_drop(items, 0, 400), 0u) << "fits";
  EXPECT_EQ(http::oldest_items_to_drop(items, 50, 400), 2u) << "over: down to 3/4 of the budget (300), not just under it";
  EXPECT_EQ(http::oldest_items_to_drop(items, 0, 100), 3u) << "the newest stays, even over the budget";
  EXPECT_EQ(http::oldest_items_to_drop(std::span<const int64_t>(), 500, 100), 0u);
}

// A long conversation stays within max_conversation_tokens: the oldest items go (down to
// 3/4 of the budget), and every response is still served.
TEST(RealtimeConversation, OldestItemsGoWhenTheConversationOutgrowsItsBudget) {
  http::ServerConfig sc;
  sc.max_conversation_tokens = 400;
  test::ServerUnderTest sut(sc);
  test::RealtimeWs c(sut.port);
  c.next();
  c.send({{"type", "session.update"}, {"session", {{"max_response_output_tokens", 4}, {"temperature", 0}, {"output_modalities", {"text"}}}}});
  c.until("session.updated");
  int most = 0;
  for (int turn = 0; turn < 12; ++turn) {
    c.send({{"type", "conversation.item.create"},
            {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", std::string(90, 'a' + turn)}}}}}}});
    c.until("conversation.item.added");
    c.send({{"type", "response.create"}});
    const json done = c.until("response.done");
    ASSERT_NE(done["response"]["status"], "failed") << done.dump();
    most = std::max(most, done["response"]["usage"]["input_tokens"].get<int>());
  }
  EXPECT_LE(most, 400 + 64) << "the prompt stays within the budget (plus the chat template's own tokens)";
  const std::string metrics = test::http_call(sut.port, beast::http::verb::get, "/metrics").body;
  const size_t at = metrics.find("\ntutti_realtime_conversation_items_dropped_total ");
  ASSERT_NE(at, std::string::npos);
  EXPECT_GT(std::stoi(metrics.substr(at + 49)), 0);
}

// Media a text-only model cannot take is refused with an error event, whatever its framing.
struct TextOnlyRealtime : RealtimeFixture {
  TextOnlyRealtime() { unified_model = false; }
};
TEST_F(TextOnlyRealtime, MediaInputIsAnErrorEvent) {
  EXPECT_EQ(next()["type"], "session.created");
  send({{"type", "input_audio_buffer.append"}, {"audio", "AAAA"}});
  EXPECT_EQ(until("error")["error"]["code"], "audio_not_supported");
  send({{"type", "session.update"}, {"session", {{"modalities", {"text", "video"}}}}});
  EXPECT_EQ(until("error")["error"]["code"], "invalid_value");
  send({{"type", "session.update"}, {"session", {{"tutti", {{"binary_audio", "opus"}}}}}});
  until("session.updated");
  client->ws.binary(true);
  send_raw(std::string(1, char(http::BinaryKind::VideoIn)) + "\x89PNG");
  send_raw(std::string(1, char(http::BinaryKind::AudioIn)) + "\xf8\xff\xfe");
  client->ws.text(true);
  EXPECT_EQ(until("error")["error"]["code"], "video_not_supported");
  EXPECT_EQ(until("error")["error"]["code"], "audio_not_supported");
  send({{"type", "conversation.item.create"}, {"item", {{"content", {{{"type", "input_text"}, {"text", "still here"}}}}}}});
  EXPECT_EQ(until("conversation.item.added")["item"]["content"][0]["text"], "still here");
}

}  // namespace
}  // namespace tutti
