// FFmpeg streams over ZeroMQ through a stream job: the real ffmpeg publishes a spoken turn
// as MPEG-TS on a zmq: address, tutti answers, and the real ffmpeg reads the answer from the
// job's output address; garbage on the input only counts gaps; bad jobs get errors.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <zmq.hpp>

#include <cmath>
#include <csignal>
#include <fstream>
#include <random>
#include <set>
#include <thread>

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

std::pair<int, json> call(uint16_t port, bhttp::verb verb, const std::string& target, const std::string& body = "") {
  const test::Reply r = test::http_call(port, verb, target, body);
  return {r.status, json::parse(r.body, nullptr, false)};
}

uint16_t free_port() {
  net::io_context ioc;
  tcp::acceptor a(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

// A WAV of a spoken-like turn: silence, a voiced sound, silence.
// A voiced tone of `speech_s` after 0.3 s of silence, then `silence_s` more of it.
std::string turn_wav(double speech_s = 0.8, double silence_s = 1.5) {
  const std::string path = std::string(TUTTI_BINARY_DIR) + "/test-data/turn-" + std::to_string(int(speech_s * 1000)) + "-" +
                           std::to_string(int(silence_s * 1000)) + ".wav";
  std::vector<int16_t> s(size_t(24000 * 0.3), 0);
  for (int i = 0; i < int(24000 * speech_s); ++i) {
    double v = 0;
    for (int h = 1; h <= 6; ++h) v += std::sin(2 * 3.14159265358979 * 150 * h * i / 24000.0) / h;
    s.push_back(int16_t(v / 2 * 0.3 * 32767));
  }
  s.resize(s.size() + size_t(24000 * silence_s), 0);
  std::ofstream f(path, std::ios::binary);
  auto u32 = [&](uint32_t v) { f.write(reinterpret_cast<const char*>(&v), 4); };
  auto u16 = [&](uint16_t v) { f.write(reinterpret_cast<const char*>(&v), 2); };
  f.write("RIFF", 4); u32(uint32_t(36 + s.size() * 2)); f.write("WAVEfmt ", 8); u32(16); u16(1); u16(1); u32(24000); u32(48000);
  u16(2); u16(16); f.write("data", 4); u32(uint32_t(s.size() * 2));
  f.write(reinterpret_cast<const char*>(s.data()), long(s.size() * 2));
  return path;
}

TEST(StreamJobs, RequestsAreValidated) {
  EXPECT_TRUE(std::holds_alternative<http::StreamJobRequest>(
      http::parse_stream_job(R"({"input":"zmq:tcp://127.0.0.1:5555","output":"zmq:tcp://127.0.0.1:5556","task":"respond"})")));
  for (const auto& [body, p] : {std::pair<std::string, std::string>{R"({"input":"http://x","output":"zmq:tcp://127.0.0.1:1"})", "input"},
                                {R"({"input":"zmq:tcp://127.0.0.1:1","output":"zmq:tcp://host:notaport"})", "output"},
                                {R"({"input":"zmq:tcp://127.0.0.1:1","output":"zmq:tcp://127.0.0.1:2","task":"dance"})", "task"},
                                {R"({"input":"zmq:tcp://127.0.0.1:1","output":"zmq:tcp://127.0.0.1:2","modality":"smell"})", "modality"},
                                {R"({"input":"zmq:tcp://127.0.0.1:1","output":"zmq:tcp://127.0.0.1:1"})", "output"},
                                {"[]", ""}}) {
    auto r = http::parse_stream_job(body);
    ASSERT_TRUE(std::holds_alternative<http::ApiError>(r)) << body;
    EXPECT_EQ(std::get<http::ApiError>(r).param, p) << body;
  }
}

// A stream job answering one spoken turn that the real ffmpeg publishes in real time, with
// the real ffmpeg reading the job's output (for media answers) into a file. Returns the job's
// state after its first answer, and the codec ffprobe finds in what the reader got.
struct TurnThroughJob {
  std::string id;
  json state;
  std::string codec;
};
TurnThroughJob turn_through_job(test::ServerUnderTest& sut, const std::string& modality, uint16_t in, uint16_t out,
                                const std::string& wav = turn_wav(), int responses = 1) {
  TurnThroughJob r;
  auto [status, job] = call(sut.port, bhttp::verb::post, "/v1/streams",
                            json{{"input", "zmq:tcp://127.0.0.1:" + std::to_string(in)}, {"output", "zmq:tcp://127.0.0.1:" + std::to_string(out)},
                                 {"task", "respond"}, {"max_response_seconds", 3}, {"modality", modality}}.dump());
  EXPECT_EQ(status, 200) << job.dump();
  if (status != 200) return r;
  r.id = job["id"];
  const std::string& id = r.id;
  EXPECT_EQ(job["status"], "running");
  EXPECT_EQ(job["modality"], modality);
  const bool media = modality != "text";
  // The reader: ffmpeg subscribed to the job's output, copying what comes to a file.
  const std::string dir = std::string(TUTTI_BINARY_DIR) + "/test-data";
  const std::string answer = dir + "/zmq-answer-" + std::to_string(out) + ".ts";
  std::remove(answer.c_str());
  std::thread reader([&] {
    if (!media) return;
    (void)std::system(("timeout -s INT 25 ffmpeg -nostdin -loglevel info -y -probesize 4096 -analyzeduration 200000 -i zmq:tcp://127.0.0.1:" + std::to_string(out) +
                       " -c copy -flush_packets 1 -f mpegts '" + answer + "' >'" + answer + ".log' 2>&1").c_str());
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // The publisher: ffmpeg playing a spoken turn in real time as MPEG-TS.
  std::thread publisher([&] {
    (void)std::system(("ffmpeg -nostdin -loglevel error -re -i '" + wav + "' -c:a aac -f mpegts zmq:tcp://127.0.0.1:" +
                       std::to_string(in) + " >/dev/null 2>&1").c_str());
  });
  json state;
  for (int i = 0; i < 300; ++i) {  // generous: this checks that the answer comes, not how fast
    state = call(sut.port, bhttp::verb::get, "/v1/streams/" + id).second;
    if (state["responses"].get<int>() >= responses) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  publisher.join();
  r.state = state;
  EXPECT_GE(state["turns"].get<int>(), 1) << state.dump();
  EXPECT_GE(state["responses"].get<int>(), 1) << state.dump();
  EXPECT_GT(state["bytes_in"].get<int>(), 0);
  if (!media) {
    reader.join();
    return r;
  }
  EXPECT_GT(state["bytes_out"].get<int>(), 0);
  // Let the reader write what it received (ffmpeg writes once it has probed the stream).
  for (int i = 0; i < 100; ++i) {
    std::ifstream f(answer, std::ios::binary | std::ios::ate);
    if (f.good() && f.tellg() > 4096) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  (void)std::system(("pkill -INT -f 'zmq:tcp://127.0.0.1:" + std::to_string(out) + "'").c_str());
  reader.join();
  std::string probe;
  if (FILE* p = popen(("ffprobe -v error -show_entries stream=codec_name -of csv=p=0 '" + answer + "' 2>&1").c_str(), "r")) {
    char buf[128];
    while (fgets(buf, sizeof buf, p)) probe += buf;
    pclose(p);
  }
  std::string reader_log;
  if (std::ifstream lf(answer + ".log"); lf) reader_log.assign(std::istreambuf_iterator<char>(lf), {});
  r.codec = probe.substr(0, probe.find('\n'));
  if (r.codec.empty())
    ADD_FAILURE() << "the reader got no playable answer; its log:\n" << reader_log.substr(reader_log.size() > 1500 ? reader_log.size() - 1500 : 0);
  return r;
}

TEST(StreamJobs, FfmpegInZeroMqOutAndGarbageOnlyCountsGaps) {
  test::ServerUnderTest sut;
  const uint16_t in = free_port(), out = free_port();
  TurnThroughJob turn = turn_through_job(sut, "audio", in, out);
  ASSERT_FALSE(turn.id.empty());
  EXPECT_EQ(turn.codec, "aac");
  const std::string id = turn.id;
  json state;

  // Garbage from another publisher on the same address: gaps, and the job keeps running.
  {
    zmq::context_t ctx;
    zmq::socket_t pub(ctx, zmq::socket_type::pub);
    pub.bind("tcp://127.0.0.1:" + std::to_string(in));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // subscribers join
    std::mt19937 rng(1);
    for (int k = 0; k < 40; ++k) {
      std::vector<uint8_t> junk(4096);
      for (auto& b : junk) b = uint8_t(rng());
      pub.send(zmq::buffer(junk), zmq::send_flags::none);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  state = call(sut.port, bhttp::verb::get, "/v1/streams/" + id).second;
  EXPECT_EQ(state["status"], "running");
  EXPECT_GT(state["bytes_in"].get<int>(), 40 * 4096);
  auto [del_status, deleted] = call(sut.port, bhttp::verb::delete_, "/v1/streams/" + id);
  EXPECT_EQ(del_status, 200);
  EXPECT_EQ(deleted["status"], "stopped");
  EXPECT_EQ(call(sut.port, bhttp::verb::get, "/v1/streams/" + id).first, 404);
  // An output address already taken: a clear error.
  net::io_context ioc;
  tcp::acceptor busy(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  auto [s2, e2] = call(sut.port, bhttp::verb::post, "/v1/streams",
                       json{{"input", "zmq:tcp://127.0.0.1:" + std::to_string(in)},
                            {"output", "zmq:tcp://127.0.0.1:" + std::to_string(busy.local_endpoint().port())}}.dump());
  EXPECT_EQ(s2, 400);
  EXPECT_NE(e2["error"]["message"].get<std::string>().find("cannot publish"), std::string::npos) << e2.dump();
}

// Video answers are H.264 in MPEG-TS on the output; text answers are events on the job.
// Speech that never pauses is committed every max_turn, and speech the input cuts off (the
// feed ends mid-sentence: no pause, and ZeroMQ has no end of stream) once the input has been
// quiet for turn_idle: both are answered.
TEST(StreamJobs, SpeechWithoutAPauseAndSpeechCutOffMidSentenceAreAnswered) {
  http::ServerConfig sc;
  sc.stream_max_turn_s = 2;
  sc.stream_turn_idle_s = 0.8;
  test::ServerUnderTest sut(sc);
  TurnThroughJob r = turn_through_job(sut, "text", free_port(), free_port(), turn_wav(3.5, 0), 2);
  const json reasons = r.state["turns_by_reason"];
  EXPECT_GE(reasons.value("max_turn", 0), 1) << reasons.dump();
  EXPECT_GE(reasons.value("input_idle", 0) + reasons.value("input_ended", 0), 1) << reasons.dump();
  EXPECT_EQ(reasons.value("speech_stopped", 0), 0) << "the tone never pauses: " << reasons.dump();
  EXPECT_GE(r.state["responses"].get<int>(), 2) << r.state.dump();
}

TEST(StreamJobs, VideoAnswersArePublishedAndTextAnswersAreJobEvents) {
  test::ServerUnderTest sut;
  TurnThroughJob video = turn_through_job(sut, "video", free_port(), free_port());
  EXPECT_EQ(video.codec, "h264");
  TurnThroughJob text = turn_through_job(sut, "text", free_port(), free_port());
  ASSERT_FALSE(text.id.empty());
  bool done = false;
  for (const json& e : text.state["events"])
    if (e["type"] == "response.done") {
      done = true;
      EXPECT_TRUE(e["text"].is_string());
      EXPECT_GT(e["output_tokens"].get<int>(), 0);
    }
  EXPECT_TRUE(done) << text.state.dump();
  EXPECT_EQ(text.state["bytes_out"], 0);
}

// One finish reason, one record, whichever transport: a text answer cut by its length is
// incomplete from HTTP, from Realtime and from a stream job alike.
TEST(StreamJobs, ALengthCutTextAnswerIsRecordedAsHttpAndRealtimeRecordIt) {
  const std::string ledger = test::fresh_ledger("stream-length.db");
  http::ServerConfig sc;
  sc.ledger_path = ledger;
  sc.max_tokens = 3;  // every text answer: 3 tokens at most
  auto sut = std::make_unique<test::ServerUnderTest>(sc);
  EXPECT_EQ(call(sut->port, bhttp::verb::post, "/v1/completions", R"({"prompt":"x","max_tokens":3,"tutti":{"ignore_eos":true}})").first, 200);
  {
    test::RealtimeWs ws(sut->port, "");
    ws.next();
    ws.send({{"type", "session.update"}, {"session", {{"output_modalities", {"text"}}}}});
    ws.send({{"type", "conversation.item.create"},
             {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "hi"}}}}}}});
    ws.send({{"type", "response.create"}, {"response", {{"tutti", {{"ignore_eos", true}}}}}});
    EXPECT_EQ(ws.until("response.done")["response"]["status"], "incomplete");
  }
  TurnThroughJob text = turn_through_job(*sut, "text", free_port(), free_port());
  ASSERT_FALSE(text.id.empty());
  sut.reset();
  std::map<std::string, int> seen;
  for (const auto& r : test::ledger_rows(ledger)) {
    ++seen[r.endpoint];
    EXPECT_EQ(r.outcome, "incomplete") << r.endpoint << " " << r.request_id;
    EXPECT_EQ(r.tokens_out, json({{"text", 3}})) << r.endpoint;
  }
  EXPECT_EQ(seen["/v1/completions"], 1);
  EXPECT_EQ(seen["/v1/realtime"], 1);
  EXPECT_GE(seen["/v1/streams"], 1);
}

// A stream job's answer is a running generation like any other: counted in
// tutti_generations_running, and a drain lets it finish (and records it so).
TEST(StreamJobs, DrainWaitsForAStreamJobAnswer) {
  const std::string ledger = test::fresh_ledger("stream-drain.db");
  http::ServerConfig sc;
  sc.ledger_path = ledger;
  test::ServerUnderTest sut(sc);
  const uint16_t in = free_port(), out = free_port();
  auto [status, job] = call(sut.port, bhttp::verb::post, "/v1/streams",
                            json{{"input", "zmq:tcp://127.0.0.1:" + std::to_string(in)}, {"output", "zmq:tcp://127.0.0.1:" + std::to_string(out)},
                                 {"max_response_seconds", 2}, {"modality", "audio"}}.dump());
  ASSERT_EQ(status, 200) << job.dump();
  const std::string wav = turn_wav();
  std::thread publisher([&] {
    (void)std::system(("ffmpeg -nostdin -loglevel error -re -i '" + wav + "' -c:a aac -f mpegts zmq:tcp://127.0.0.1:" +
                       std::to_string(in) + " >/dev/null 2>&1").c_str());
  });
  bool started = false;
  json state;
  for (int i = 0; i < 1500 && !started; ++i) {  // generous: ffmpeg, the VAD's silence, then the answer
    state = call(sut.port, bhttp::verb::get, "/v1/streams/" + job["id"].get<std::string>()).second;
    for (const json& e : state["events"]) started |= e["type"] == "response.started";
    if (!started) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(started) << state.dump();
  const std::string metrics = test::http_call(sut.port, bhttp::verb::get, "/metrics").body;
  EXPECT_NE(metrics.find("\ntutti_generations_running 1\n"), std::string::npos) << "the answer (paced over 2 s) is running";
  const int cut = sut.server->drain(10);
  publisher.join();
  EXPECT_EQ(cut, 0);
  std::vector<test::LedgerRow> answers;
  for (const auto& r : test::ledger_rows(ledger))
    if (r.endpoint == "/v1/streams" && r.outcome != "refused") answers.push_back(r);
  ASSERT_GE(answers.size(), 1u);
  EXPECT_EQ(answers[0].outcome, "completed") << "finished, not cut by the drain";
  EXPECT_GT(answers[0].tokens_out.value("audio", 0), 0);
  EXPECT_GT(answers[0].tokens_in.value("audio", 0), 0);
}

}  // namespace
}  // namespace tutti
