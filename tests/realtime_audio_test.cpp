// Voice over the Realtime WebSocket: the wire formats (PCM16, G.711 µ-law and A-law,
// base64), server VAD, and a scripted client against a real server: speech in, detected,
// committed as audio tokens, answered with audio deltas; barge-in cancels the answer and
// says how much was heard; bad audio gets error events and the session goes on.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <cmath>
#include <thread>

#include "actors/http/realtime_audio.hpp"
#include "codecs/media_decoder.h"
#include "codecs/media_encoder.h"
#include "codecs/opus_codec.h"
#include "http_client.h"
#include "server_support.h"

namespace tutti {
namespace {

namespace beast = boost::beast;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using namespace tutti::http;
using codecs::VadConfig;
using codecs::VoiceActivityDetector;

TEST(RealtimeAudio, G711RoundTripsAndBase64RefusesGarbage) {
  for (int c = 0; c < 256; ++c) {
    EXPECT_EQ(linear_to_ulaw(ulaw_to_linear(uint8_t(c))), uint8_t(c) == 0x7F ? 0xFF : uint8_t(c)) << c;  // µ-law has two zeros
    EXPECT_EQ(linear_to_alaw(alaw_to_linear(uint8_t(c))), uint8_t(c)) << c;
  }
  for (int v = -32768; v < 32768; v += 97) {
    const int err_u = std::abs(ulaw_to_linear(linear_to_ulaw(int16_t(v))) - v);
    const int err_a = std::abs(alaw_to_linear(linear_to_alaw(int16_t(v))) - v);
    EXPECT_LE(err_u, std::max(8, std::abs(v) / 16)) << v;
    EXPECT_LE(err_a, std::max(16, std::abs(v) / 16)) << v;
  }
  std::vector<float> tone(240);
  for (size_t i = 0; i < tone.size(); ++i) tone[i] = float(0.5 * std::sin(double(i) * 0.3));
  for (AudioWire w : {AudioWire::Pcm16, AudioWire::G711Ulaw, AudioWire::G711Alaw}) {
    auto back = decode_wire_audio(encode_wire_audio(tone, w), w);
    ASSERT_TRUE(back) << audio_wire_name(w);
    ASSERT_EQ(back->size(), tone.size());
    for (size_t i = 0; i < tone.size(); ++i) EXPECT_NEAR((*back)[i], tone[i], w == AudioWire::Pcm16 ? 1e-4 : 0.03);
  }
  EXPECT_FALSE(base64_decode("ab$d"));
  EXPECT_FALSE(decode_wire_audio("AA==", AudioWire::Pcm16)) << "an odd byte count is not PCM16";
  EXPECT_EQ(*parse_audio_wire(json("g711_alaw")), AudioWire::G711Alaw);
  EXPECT_EQ(*parse_audio_wire(json{{"type", "audio/pcm"}, {"rate", 24000}}), AudioWire::Pcm16);
  EXPECT_EQ(*parse_audio_wire(json{{"type", "audio/pcmu"}}), AudioWire::G711Ulaw);
  EXPECT_FALSE(parse_audio_wire(json{{"type", "audio/pcm"}, {"rate", 16000}}));
  EXPECT_FALSE(parse_audio_wire(json("mp3")));
}

std::vector<float> voiced(double seconds, double amp) {
  std::vector<float> s(size_t(seconds * 24000));
  for (size_t i = 0; i < s.size(); ++i) {
    double v = 0;
    for (int h = 1; h <= 6; ++h) v += std::sin(2 * 3.14159265358979 * 150 * h * double(i) / 24000) / h;
    s[i] = float(amp * v / 2);
  }
  return s;
}

TEST(RealtimeAudio, VadFindsSpeechAndItsEnd) {
  VoiceActivityDetector vad(VadConfig{0.5, 300, 500});
  std::vector<float> in(24000 / 2, 0.f);  // 0.5 s silence
  const auto speech = voiced(1.0, 0.3);
  in.insert(in.end(), speech.begin(), speech.end());
  in.insert(in.end(), size_t(24000), 0.f);  // 1 s silence
  std::vector<VoiceActivityDetector::Event> events;
  for (size_t at = 0; at < in.size(); at += 2400) {
    const auto e = vad.push(std::span<const float>(in.data() + at, std::min<size_t>(2400, in.size() - at)));
    events.insert(events.end(), e.begin(), e.end());
  }
  ASSERT_EQ(events.size(), 2u);
  EXPECT_TRUE(events[0].started);
  EXPECT_NEAR(double(events[0].at_ms), 500, 20);
  EXPECT_FALSE(events[1].started);
  EXPECT_NEAR(double(events[1].at_ms), 1500 + 500, 40);
}

// A Realtime client that speaks: 100 ms appends of PCM16.
struct VoiceClient : test::RealtimeWs {
  explicit VoiceClient(uint16_t port) : RealtimeWs(port) {}
  void speak(const std::vector<float>& pcm) {
    for (size_t at = 0; at < pcm.size(); at += 2400)
      send({{"type", "input_audio_buffer.append"},
            {"audio", encode_wire_audio(std::span<const float>(pcm.data() + at, std::min<size_t>(2400, pcm.size() - at)), AudioWire::Pcm16)}});
  }
};

std::vector<float> utterance() {
  std::vector<float> in(24000 / 4, 0.f);
  const auto speech = voiced(0.8, 0.3);
  in.insert(in.end(), speech.begin(), speech.end());
  in.insert(in.end(), size_t(24000 * 0.6), 0.f);
  return in;
}

// GA turn detection: semantic_vad (mapped onto the server VAD by its eagerness) detects the
// turn; after the answer, idle_timeout_ms of silence triggers a turn of its own; an
// assistant's audio item can be truncated where the user stopped hearing it.
TEST(RealtimeVoice, SemanticVadIdleTimeoutAndTruncateFollowTheGaGrammar) {
  test::ServerUnderTest sut;
  VoiceClient c(sut.port);
  EXPECT_EQ(c.next()["session"]["output_modalities"], json::array({"audio"}));
  c.send({{"type", "session.update"},
          {"session", {{"type", "realtime"}, {"max_output_tokens", 40},
                       {"audio", {{"input", {{"turn_detection", {{"type", "semantic_vad"}, {"eagerness", "high"}}}}}}}}}});
  const json td = c.until("session.updated")["session"]["audio"]["input"]["turn_detection"];
  EXPECT_EQ(td["type"], "semantic_vad");
  c.speak(utterance());
  c.until("input_audio_buffer.speech_stopped");
  const json done = c.until("response.done");
  ASSERT_EQ(done["response"]["output"][0]["content"][0]["type"], "output_audio") << done.dump();
  const std::string answer_id = done["response"]["output"][0]["id"];
  // 40 codes of audio: cut at 20 ms, and past its end is an error.
  c.send({{"type", "conversation.item.truncate"}, {"item_id", answer_id}, {"content_index", 0}, {"audio_end_ms", 20}});
  EXPECT_EQ(c.until("conversation.item.truncated")["audio_end_ms"], 20);
  c.send({{"type", "conversation.item.truncate"}, {"item_id", answer_id}, {"content_index", 0}, {"audio_end_ms", 600000}});
  EXPECT_EQ(c.until("error")["error"]["code"], "invalid_value");

  c.send({{"type", "session.update"},
          {"session", {{"audio", {{"input", {{"turn_detection", {{"type", "server_vad"}, {"idle_timeout_ms", 5000}}}}}}}}}});
  EXPECT_EQ(c.until("session.updated")["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"], 5000);
  c.speak(utterance());
  c.until("response.done");
  c.speak(std::vector<float>(size_t(24000 * 5.5), 0.f));  // silence, in input audio time
  const json timeout = c.until("input_audio_buffer.timeout_triggered");
  EXPECT_GE(timeout["audio_end_ms"].get<int64_t>() - timeout["audio_start_ms"].get<int64_t>(), 5000);
  EXPECT_EQ(c.until("input_audio_buffer.committed")["item_id"], timeout["item_id"]);
  EXPECT_NE(c.until("response.done")["response"]["status"], "failed") << "the idle turn is answered";
}

TEST(RealtimeVoice, SpeechIsDetectedCommittedAndAnsweredWithAudio) {
  test::ServerUnderTest sut;
  VoiceClient c(sut.port);
  EXPECT_EQ(c.next()["type"], "session.created");
  c.send({{"type", "session.update"},
          {"session", {{"modalities", {"audio", "text"}}, {"input_audio_format", "pcm16"}, {"output_audio_format", "pcm16"},
                       {"max_response_output_tokens", 100},
                       {"turn_detection", {{"type", "server_vad"}, {"threshold", 0.5}, {"silence_duration_ms", 300}}}}}});
  const json updated = c.until("session.updated");
  EXPECT_EQ(updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"], 300);
  c.speak(utterance());
  EXPECT_NEAR(c.until("input_audio_buffer.speech_started")["audio_start_ms"].get<double>(), 250, 40);
  c.until("input_audio_buffer.speech_stopped");
  const json committed = c.until("input_audio_buffer.committed");
  const json item = c.until("conversation.item.added");
  EXPECT_EQ(item["item"]["id"], committed["item_id"]);
  EXPECT_EQ(item["item"]["content"][0]["type"], "input_audio");
  std::vector<json> events;
  const json done = c.until("response.done", &events);
  size_t audio_bytes = 0;
  for (const json& e : events)
    if (e["type"] == "response.output_audio.delta") {
      auto bytes = base64_decode(e["delta"].get<std::string>());
      ASSERT_TRUE(bytes);
      EXPECT_EQ(bytes->size() % 2, 0u);
      audio_bytes += bytes->size();
    }
  EXPECT_GT(audio_bytes, 0u);
  EXPECT_EQ(done["response"]["status"], "completed");
  const json usage = done["response"]["usage"];
  EXPECT_GT(usage["input_token_details"]["audio_tokens"].get<int>(), 40) << "about 1.3 s of committed audio at 200 tokens/s";
  EXPECT_EQ(usage["output_token_details"]["audio_tokens"], usage["output_tokens"]);
  // The answer is the assistant's part of the conversation now: the next prompt holds its
  // audio (whole frames of it, between begin and end tokens), not only the user's turns.
  c.send({{"type", "conversation.item.create"},
          {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "Again"}}}}}}});
  c.until("conversation.item.added");
  c.send({{"type", "response.create"}, {"response", {{"modalities", {"text"}}}}});
  const json next = c.until("response.done");
  EXPECT_GE(next["response"]["usage"]["input_tokens"].get<int>(),
            usage["input_tokens"].get<int>() + usage["output_tokens"].get<int>() - 8 + 2);
  // The turn's latency is on /metrics.
  const std::string metrics = test::http_call(sut.port, beast::http::verb::get, "/metrics").body;
  EXPECT_NE(metrics.find("tutti_realtime_speech_to_first_audio_seconds_count 1"), std::string::npos);
}

// The same voice turn on a model whose audio codec is SNAC: speech is encoded by SNAC's
// encoder, the answer is sampled slot by slot at its 82 tokens/s and decoded by SNAC as
// frames complete; the speech endpoint's answer is what ffprobe expects.
TEST(RealtimeVoice, SnacModelAnswersAVoiceTurnAndSpeech) {
  test::ServerUnderTest sut({}, test::ServerUnderTest::default_pipeline(), true, test::snac_model_path());
  const ModalityInfo* audio = sut.model->config().modalities.find(Modality::Audio);
  ASSERT_NE(audio, nullptr);
  ASSERT_EQ(audio->transform, "snac");
  VoiceClient c(sut.port);
  EXPECT_EQ(c.next()["type"], "session.created");
  c.send({{"type", "session.update"},
          {"session", {{"modalities", {"audio", "text"}}, {"input_audio_format", "pcm16"}, {"output_audio_format", "pcm16"},
                       {"max_response_output_tokens", 70},
                       {"turn_detection", {{"type", "server_vad"}, {"threshold", 0.5}, {"silence_duration_ms", 300}}}}}});
  c.until("session.updated");
  c.speak(utterance());
  c.until("input_audio_buffer.committed");
  std::vector<json> events;
  const json done = c.until("response.done", &events);
  size_t audio_bytes = 0;
  for (const json& e : events)
    if (e["type"] == "response.output_audio.delta") audio_bytes += base64_decode(e["delta"].get<std::string>())->size();
  EXPECT_EQ(done["response"]["status"], "completed") << done.dump();
  const json usage = done["response"]["usage"];
  // About 1.3 s of speech at 82 tokens/s, in whole frames of 7.
  const int in_audio = usage["input_token_details"]["audio_tokens"].get<int>();
  EXPECT_GT(in_audio, 60);
  EXPECT_LT(in_audio, 200);
  // Whole frames decode to 2048 samples each (PCM16: 2 bytes a sample); a frame still in
  // the decoder's look-ahead at the end comes out with the rest.
  const int out_tokens = usage["output_tokens"].get<int>();
  EXPECT_GT(audio_bytes, 0u);
  EXPECT_EQ(audio_bytes, size_t(out_tokens / 7) * 2048 * 2);

  const auto r = test::http_call(sut.port, beast::http::verb::post, "/v1/audio/speech",
                                 R"({"input":"Hello there, from SNAC.","response_format":"wav"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(test::ffprobe(r.body, "snac-speech.wav", "stream=codec_name,sample_rate"), "pcm_s16le,24000");
}

using test::metric;

// Prefill while the user is still talking: the speech so far is prefilled before the turn
// ends, and the turn's request finds it in the prefix cache. Without it (interval 0) the
// whole prompt is computed at the end of the turn.
TEST(RealtimeVoice, SpeechIsPrefilledWhileTheUserIsStillTalking) {
  for (int interval : {300, 0}) {
    http::ServerConfig sc;
    sc.prefill_while_speaking_ms = interval;
    test::ServerUnderTest sut(sc);
    VoiceClient c(sut.port);
    c.next();
    c.send({{"type", "session.update"},
            {"session", {{"modalities", {"audio"}}, {"max_response_output_tokens", 20},
                         {"turn_detection", {{"type", "server_vad"}, {"silence_duration_ms", 300}}}}}});
    c.until("session.updated");
    const auto talk = utterance();
    const size_t first = 24000 * 7 / 10;  // 250 ms of silence, then 450 ms of speech
    c.speak(std::vector<float>(talk.begin(), talk.begin() + long(first)));
    c.until("input_audio_buffer.speech_started");
    if (interval > 0) {
      // The user is still talking: a prefill starts and finishes (its blocks are then in the
      // cache, held by no sequence: at least 3 blocks of 16 for 300 ms of speech).
      for (int i = 0; i < 1000 && !(metric(sut.port, "tutti_realtime_speech_prefills_total") >= 1 &&
                                    metric(sut.port, "tutti_kv_blocks_cached") >= 3);
           ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      EXPECT_GE(metric(sut.port, "tutti_realtime_speech_prefills_total"), 1);
      EXPECT_EQ(metric(sut.port, "tutti_prefix_cache_hit_tokens_total"), 0);
    }
    c.speak(std::vector<float>(talk.begin() + long(first), talk.end()));
    EXPECT_EQ(c.until("response.done")["response"]["status"], "completed");
    const double hits = metric(sut.port, "tutti_prefix_cache_hit_tokens_total");
    if (interval > 0) {
      EXPECT_GE(hits, 48) << "at least the first 300 ms of speech (60 tokens) was cached, in blocks of 16";
    } else {
      EXPECT_EQ(hits, 0);
      EXPECT_EQ(metric(sut.port, "tutti_realtime_speech_prefills_total"), 0);
    }
  }
}

TEST(RealtimeVoice, BargeInCancelsTheAnswerAndSaysWhatWasHeard) {
  test::ServerUnderTest sut;
  VoiceClient c(sut.port);
  c.next();
  c.send({{"type", "session.update"},
          {"session", {{"modalities", {"audio"}}, {"turn_detection", {{"type", "server_vad"}, {"silence_duration_ms", 300}}}}}});
  c.until("session.updated");
  c.speak(utterance());
  c.until("response.created");
  c.until("response.output_audio.delta");  // the answer is playing (10 s of it, paced)
  c.speak(utterance());                     // the user talks over it
  std::vector<json> events;
  const json done = c.until("response.done", &events);
  EXPECT_EQ(done["response"]["status"], "cancelled");
  bool truncated = false;
  for (const json& e : events)
    if (e["type"] == "conversation.item.truncated") {
      truncated = true;
      EXPECT_GE(e["audio_end_ms"].get<int>(), 0);
      EXPECT_LT(e["audio_end_ms"].get<int>(), 10000);
    }
  EXPECT_TRUE(truncated);
  // The new speech gets its own answer.
  EXPECT_EQ(c.until("response.created")["type"], "response.created");
}

TEST(RealtimeVoice, BadAudioGetsErrorEventsAndTheSessionGoesOn) {
  test::ServerUnderTest sut;
  VoiceClient c(sut.port);
  c.next();
  c.send({{"type", "input_audio_buffer.append"}, {"audio", "not base64!"}, {"event_id", "a1"}});
  json e = c.until("error");
  EXPECT_EQ(e["error"]["code"], "invalid_audio");
  EXPECT_EQ(e["error"]["event_id"], "a1");
  c.send({{"type", "input_audio_buffer.append"}, {"audio", 42}});
  EXPECT_EQ(c.until("error")["error"]["code"], "missing_audio");
  c.send({{"type", "session.update"}, {"session", {{"input_audio_format", "mp3"}}}});
  EXPECT_EQ(c.until("error")["error"]["code"], "invalid_value");
  c.send({{"type", "session.update"}, {"session", {{"turn_detection", nullptr}, {"audio", {{"input", {{"format", {{"type", "audio/pcmu"}}}}}}}}}});
  EXPECT_EQ(c.until("session.updated")["session"]["audio"]["input"]["format"]["type"], "audio/pcmu");
  c.send({{"type", "input_audio_buffer.commit"}, {"event_id", "c1"}});
  EXPECT_EQ(c.until("error")["error"]["code"], "input_audio_buffer_commit_empty");
  // G.711 µ-law at 8 kHz, committed by hand: an audio item.
  std::vector<float> speech8k = resample_linear(voiced(0.5, 0.3), 24000, 8000);
  c.send({{"type", "input_audio_buffer.append"}, {"audio", encode_wire_audio(speech8k, AudioWire::G711Ulaw)}});
  c.send({{"type", "input_audio_buffer.commit"}});
  EXPECT_EQ(c.until("conversation.item.added")["item"]["content"][0]["type"], "input_audio");
  c.send({{"type", "input_audio_buffer.clear"}});
  c.until("input_audio_buffer.cleared");
}

// The binary framing: Opus packets in, Opus packets out, kind byte first.
TEST(RealtimeVoice, OpusBinaryFramingBothWays) {
  test::ServerUnderTest sut;
  VoiceClient c(sut.port);
  c.next();
  // Binary before it is enabled: an error event.
  c.ws.binary(true);
  c.send_raw(std::string("\x01abc"));
  EXPECT_EQ(c.until("error")["error"]["code"], "binary_not_enabled");
  c.ws.text(true);
  c.send({{"type", "session.update"},
          {"session", {{"modalities", {"audio"}}, {"max_response_output_tokens", 100}, {"tutti", {{"binary_audio", "opus"}}},
                       {"turn_detection", {{"type", "server_vad"}, {"silence_duration_ms", 300}}}}}});
  EXPECT_EQ(c.until("session.updated")["session"]["tutti"]["binary_audio"], "opus");
  codecs::OpusFormat f;
  f.sample_rate = 48000;
  auto enc = codecs::OpusFrameEncoder::create(f);
  ASSERT_TRUE(enc);
  const auto turn = resample_linear(utterance(), 24000, 48000);
  c.ws.binary(true);
  for (size_t at = 0; at + 960 <= turn.size(); at += 960) {
    auto packet = (*enc)->encode(std::span<const float>(turn.data() + at, 960));
    ASSERT_TRUE(packet);
    c.send_raw(std::string(1, '\x01') + std::string(packet->begin(), packet->end()));
  }
  // A corrupt packet and an unknown kind: error events, the session goes on.
  c.send_raw(std::string("\x01\xff"));
  c.send_raw(std::string("\x07xyz"));
  auto dec = codecs::OpusFrameDecoder::create(f);
  ASSERT_TRUE(dec);
  size_t samples = 0;
  std::vector<std::string> codes;
  for (int i = 0; i < 100000; ++i) {
    beast::flat_buffer b;
    c.ws.read(b);
    const std::string msg = beast::buffers_to_string(b.data());
    if (!c.ws.got_text()) {
      ASSERT_FALSE(msg.empty());
      EXPECT_EQ(uint8_t(msg[0]), 2) << "audio out";
      auto pcm = (*dec)->decode(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(msg.data()) + 1, msg.size() - 1));
      ASSERT_TRUE(pcm) << pcm.error().message;
      samples += pcm->size();
      continue;
    }
    const json e = json::parse(msg);
    if (e["type"] == "error") codes.push_back(e["error"]["code"]);
    EXPECT_NE(e["type"], "response.output_audio.delta") << "audio goes binary";
    if (e["type"] == "response.done") break;
  }
  EXPECT_GT(samples, 0u);
  EXPECT_NE(std::find(codes.begin(), codes.end(), "invalid_opus"), codes.end());
  EXPECT_NE(std::find(codes.begin(), codes.end(), "unsupported_binary_kind"), codes.end());
}

// Faults that must stay inside their own session: a frame beyond the message limit closes
// only that WebSocket, a client that leaves mid-answer frees its sequence, and a client
// that streams far faster than real time is bounded by the buffer limit, not the server.
TEST(RealtimeVoice, HugeFramesAndVanishingClientsAffectOnlyTheirSession) {
  test::ServerUnderTest sut;
  {
    VoiceClient huge(sut.port);
    huge.next();
    beast::error_code ec;
    huge.ws.write(net::buffer(std::string(2 << 20, 'x')), ec);  // beyond max_body_bytes (1 MiB)
    beast::flat_buffer b;
    huge.ws.read(b, ec);
    EXPECT_TRUE(ec) << "the oversized session should be closed";
  }
  {
    VoiceClient gone(sut.port);
    gone.next();
    gone.send({{"type", "session.update"},
               {"session", {{"modalities", {"audio"}}, {"turn_detection", {{"type", "server_vad"}, {"silence_duration_ms", 300}}}}}});
    gone.until("session.updated");
    gone.speak(utterance());
    gone.until("response.output_audio.delta");
  }  // leaves mid-answer
  for (int i = 0; i < 100; ++i) {  // its sequence is released
    if (test::http_call(sut.port, beast::http::verb::get, "/metrics").body.find("tutti_running_sequences 0") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_LT(i, 99) << "the departed client's sequence was never released";
  }
  // Another session works throughout.
  VoiceClient ok(sut.port);
  ok.next();
  ok.send({{"type", "conversation.item.create"}, {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "hi"}}}}}}});
  ok.until("conversation.item.added");
  ok.send({{"type", "response.create"}});
  EXPECT_EQ(ok.until("response.done")["type"], "response.done");
}

// A client that streams far faster than real time (a minute of speech and silence at once)
// gets its turns detected and answered like any other, and the session stays responsive.
TEST(RealtimeVoice, FasterThanRealTimeInputIsHandledInOrder) {
  test::ServerUnderTest sut;
  VoiceClient c(sut.port);
  c.next();
  c.send({{"type", "session.update"},
          {"session", {{"modalities", {"text"}}, {"max_response_output_tokens", 4},
                       {"turn_detection", {{"type", "server_vad"}, {"silence_duration_ms", 300}}}}}});
  c.until("session.updated");
  std::vector<float> minute;
  for (int k = 0; k < 20; ++k) {
    const auto t = utterance();  // ~1.65 s each, with a detected turn
    minute.insert(minute.end(), t.begin(), t.end());
  }
  c.speak(minute);  // 33 s of audio in 330 appends, as fast as the socket takes them
  int committed = 0, done = 0;
  for (int i = 0; i < 100000 && done < 1; ++i) {
    const json e = c.next();
    committed += e["type"] == "input_audio_buffer.committed";
    done += e["type"] == "response.done";
  }
  EXPECT_GE(committed, 1);
  EXPECT_GE(done, 1);
  // Still answering ordinary events.
  c.send({{"type", "input_audio_buffer.clear"}});
  c.until("input_audio_buffer.cleared");
}

// Video in: an image in a conversation item (a data URL) and a binary video frame become
// video tokens of the conversation, counted in the answer's input; a corrupt image is an
// error event.
TEST(RealtimeVoice, ImagesBecomeVideoTokensInTheConversation) {
  test::ServerUnderTest sut;
  VoiceClient c(sut.port);
  c.next();
  std::vector<uint8_t> rgb(64 * 48 * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = uint8_t((i * 13) % 256);
  auto png = codecs::encode_image("png", 64, 48, rgb);
  ASSERT_TRUE(png);
  const std::string b64 = base64_encode(*png);
  json text_part = {{"type", "input_text"}, {"text", "what is this?"}};
  json image_part = {{"type", "input_image"}, {"image_url", "data:image/png;base64," + b64}};
  json with_image = {{"type", "message"}, {"role", "user"}};
  with_image["content"] = json::array({text_part, image_part});
  c.send({{"type", "conversation.item.create"}, {"item", with_image}});
  const json item = c.until("conversation.item.added");
  ASSERT_EQ(item["item"]["content"].size(), 2u);
  EXPECT_EQ(item["item"]["content"][1]["type"], "input_image");
  c.send({{"type", "session.update"}, {"session", {{"tutti", {{"binary_audio", "opus"}}}, {"max_response_output_tokens", 3}}}});
  c.until("session.updated");
  c.ws.binary(true);
  c.send_raw(std::string(1, '\x03') + std::string(png->begin(), png->end()));
  c.send_raw(std::string("\x03not an image"));
  c.ws.text(true);
  EXPECT_EQ(c.until("conversation.item.added")["item"]["content"][0]["type"], "input_image");
  EXPECT_EQ(c.until("error")["error"]["code"], "invalid_image");
  json bad_image = {{"type", "message"}, {"role", "user"}};
  bad_image["content"] = json::array({json{{"type", "input_image"}, {"image", "@@@"}}});
  c.send({{"type", "conversation.item.create"}, {"item", bad_image}});
  EXPECT_EQ(c.until("error")["error"]["code"], "invalid_image");
  c.send({{"type", "response.create"}});
  const json done = c.until("response.done");
  // Two frames of 16x16 patches (256 tokens each, between begin and end) are in the prompt.
  EXPECT_GE(done["response"]["usage"]["input_tokens"].get<int>(), 2 * 258);
}

// Frames a JPEG decodes into (at the video modality's 128x128).
int jpeg_frames(const std::string& jpeg) {
  codecs::ByteQueue q(jpeg.size() + 1);
  (void)q.push(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(jpeg.data()), jpeg.size()));
  q.close();
  int frames = 0;
  Status s = codecs::decode_video(q, 128, 128, [&](const codecs::VideoFrame&) { ++frames; });
  EXPECT_TRUE(s.ok()) << s.message();
  return frames;
}

// Video out (a tutti extension): a response with the video modality streams each finished
// frame as a JPEG, in tutti.response.output_video.delta events or, with the binary framing,
// in binary messages of kind 4. Audio and video together are refused.
TEST(RealtimeVoice, VideoAnswersStreamFramesAsJpeg) {
  test::ServerUnderTest sut;
  VoiceClient c(sut.port);
  c.next();
  c.send({{"type", "conversation.item.create"}, {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "show me"}}}}}}});
  c.until("conversation.item.added");
  c.send({{"type", "session.update"}, {"session", {{"modalities", {"audio", "video"}}}}});
  EXPECT_EQ(c.until("error")["error"]["code"], "invalid_value");
  c.send({{"type", "response.create"}, {"response", {{"modalities", {"video"}}}}});
  std::vector<json> events;
  json done = c.until("response.done", &events);
  EXPECT_EQ(done["response"]["status"], "completed");
  int deltas = 0;
  for (const json& e : events)
    if (e["type"] == "tutti.response.output_video.delta") {
      EXPECT_EQ(e["frame_index"], deltas);
      EXPECT_EQ(e["content_type"], "image/jpeg");
      auto jpeg = base64_decode(e["delta"].get<std::string>());
      ASSERT_TRUE(jpeg);
      EXPECT_EQ(jpeg_frames(std::string(jpeg->begin(), jpeg->end())), 1);
      ++deltas;
    }
  // 2 s at 4 fps, 256 codes a frame.
  EXPECT_EQ(deltas, 8);
  EXPECT_EQ(done["response"]["usage"]["output_token_details"]["tutti.video_tokens"], 8 * 256);
  bool video_done = false;
  for (const json& e : events) video_done |= e["type"] == "tutti.response.output_video.done" && e["frames"] == 8;
  EXPECT_TRUE(video_done);

  // The binary framing: frames as kind-4 binary messages.
  c.send({{"type", "session.update"}, {"session", {{"tutti", {{"binary_audio", "opus"}}}, {"max_response_output_tokens", 2 * 256 + 10}}}});
  c.until("session.updated");
  c.send({{"type", "response.create"}, {"response", {{"modalities", {"video"}}}}});
  int binary_frames = 0;
  for (;;) {
    beast::flat_buffer b;
    c.ws.read(b);
    const std::string msg = beast::buffers_to_string(b.data());
    if (c.ws.got_binary()) {
      ASSERT_FALSE(msg.empty());
      EXPECT_EQ(uint8_t(msg[0]), 4);
      EXPECT_EQ(jpeg_frames(msg.substr(1)), 1);
      ++binary_frames;
      continue;
    }
    if (json::parse(msg)["type"] == "response.done") break;
  }
  EXPECT_EQ(binary_frames, 2) << "max_response_output_tokens rounds down to whole frames";
}

}  // namespace
}  // namespace tutti
