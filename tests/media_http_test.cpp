// The media endpoints against a real server on loopback (a small unified random model):
// speech and music stream audio in every response_format, images come back as PNGs in
// OpenAI's JSON, videos follow create / poll / retrieve; FFmpeg's own ffprobe reads every
// file. Bad requests get errors in OpenAI's shape and the server keeps serving.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <cstdio>
#include <fstream>
#include <thread>

#include "codecs/media_decoder.h"
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
std::string ffprobe(const std::string& bytes, const std::string& name, const std::string& entries) {
  return test::ffprobe(bytes, "http-" + name, entries);
}

struct MediaFixture : ::testing::Test {
  std::unique_ptr<test::ServerUnderTest> sut;
  void SetUp() override {
    std::system(("mkdir -p '" + std::string(TUTTI_BINARY_DIR) + "/test-data'").c_str());
    sut = std::make_unique<test::ServerUnderTest>();
  }
};

TEST_F(MediaFixture, SpeechStreamsEveryResponseFormat) {
  const std::pair<std::string, std::string> formats[] = {
      {"wav", "pcm_s16le,24000"}, {"mp3", "mp3,24000"}, {"opus", "opus,48000"}, {"aac", "aac,24000"}, {"flac", "flac,24000"}};
  for (const auto& [format, probe] : formats) {
    const Reply r = call(sut->port, bhttp::verb::post, "/v1/audio/speech",
                         json{{"model", "tutti-test"}, {"input", "Hello from tutti."}, {"voice", "alloy"}, {"response_format", format}}.dump());
    ASSERT_EQ(r.status, 200) << format << ": " << r.body;
    EXPECT_NE(r.content_type.find("audio/"), std::string::npos) << r.content_type;
    EXPECT_EQ(ffprobe(r.body, "speech." + format, "stream=codec_name,sample_rate"), probe) << format;
    auto pcm = codecs::decode_audio_bytes(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(r.body.data()), r.body.size()), 24000);
    ASSERT_TRUE(pcm) << format << ": " << pcm.error().message;
    EXPECT_LE(double(pcm->size()) / 24000, 2.5) << format;  // at most the 2.4 s the text allows (+ codec padding)
  }
  // Raw PCM: 16-bit samples, a whole number of 20 ms frames (plus the decoder's last half).
  const Reply pcm = call(sut->port, bhttp::verb::post, "/v1/audio/speech", R"({"input":"Hi","response_format":"pcm"})");
  ASSERT_EQ(pcm.status, 200);
  EXPECT_EQ(pcm.content_type, "audio/pcm");
  EXPECT_EQ(pcm.body.size() % 960, 0u);
}

TEST_F(MediaFixture, MusicImagesAndTheirUsage) {
  const Reply music = call(sut->port, bhttp::verb::post, "/v1/music/generations",
                           R"({"prompt":"a calm piano piece","duration":2,"response_format":"wav"})");
  ASSERT_EQ(music.status, 200) << music.body;
  EXPECT_EQ(ffprobe(music.body, "music.wav", "stream=codec_name,sample_rate"), "pcm_s16le,48000");

  const Reply images = call(sut->port, bhttp::verb::post, "/v1/images/generations",
                            R"({"prompt":"a red square","n":2,"size":"128x128"})");
  ASSERT_EQ(images.status, 200) << images.body;
  const json j = json::parse(images.body);
  ASSERT_EQ(j["data"].size(), 2u);
  EXPECT_GT(j["created"].get<long>(), 0);
  EXPECT_EQ(j["usage"]["output_tokens"], 2 * 2048) << "two images of 32x32 patches x 2 stages";
  EXPECT_EQ(j["usage"]["output_tokens_details"]["image_tokens"], 4096);
  for (int i = 0; i < 2; ++i) {
    const std::string b64 = j["data"][i]["b64_json"];
    // Decode base64 with a tiny table (the test's own, independent of the server's encoder).
    std::string png;
    int val = 0, bits = -8;
    for (char ch : b64) {
      const auto pos = std::string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/").find(ch);
      if (pos == std::string::npos) break;
      val = (val << 6) + int(pos);
      bits += 6;
      if (bits >= 0) {
        png.push_back(char((val >> bits) & 0xFF));
        bits -= 8;
      }
    }
    EXPECT_EQ(ffprobe(png, "image" + std::to_string(i) + ".png", "stream=codec_name,width,height"), "png,128,128");
  }
}

TEST_F(MediaFixture, VideosAreCreatedPolledAndRetrieved) {
  const Reply created = call(sut->port, bhttp::verb::post, "/v1/videos", R"({"prompt":"waves on a beach","seconds":"1"})");
  ASSERT_EQ(created.status, 200) << created.body;
  const json job = json::parse(created.body);
  const std::string id = job["id"];
  EXPECT_EQ(job["object"], "video");
  EXPECT_TRUE(job["status"] == "queued" || job["status"] == "in_progress");
  json polled;
  for (int i = 0; i < 600; ++i) {  // generous: this checks the job ends, not how fast
    polled = json::parse(call(sut->port, bhttp::verb::get, "/v1/videos/" + id).body);
    if (polled["status"] == "completed" || polled["status"] == "failed") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(polled["status"], "completed") << polled.dump();
  EXPECT_EQ(polled["progress"], 100);
  EXPECT_EQ(polled["usage"]["output_tokens"], 4 * 256) << "4 frames at 4 fps of 16x16 patches";
  const Reply mp4 = call(sut->port, bhttp::verb::get, "/v1/videos/" + id + "/content");
  ASSERT_EQ(mp4.status, 200);
  EXPECT_EQ(mp4.content_type, "video/mp4");
  EXPECT_EQ(ffprobe(mp4.body, "video.mp4", "stream=codec_name,width,height"), "h264,128,128");
  EXPECT_EQ(call(sut->port, bhttp::verb::get, "/v1/videos/video_999999").status, 404);
  EXPECT_EQ(call(sut->port, bhttp::verb::delete_, "/v1/videos/" + id).status, 200);
  EXPECT_EQ(call(sut->port, bhttp::verb::get, "/v1/videos/" + id).status, 404);
}

TEST_F(MediaFixture, BadMediaRequestsGetErrorsInOpenAiForm) {
  auto error_of = [](const Reply& r) { return json::parse(r.body)["error"]; };
  Reply r = call(sut->port, bhttp::verb::post, "/v1/audio/speech", R"({"input":"x","response_format":"ogg-vorbis"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(error_of(r)["param"], "response_format");
  r = call(sut->port, bhttp::verb::post, "/v1/audio/speech", R"({"voice":"alloy"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(error_of(r)["param"], "input");
  r = call(sut->port, bhttp::verb::post, "/v1/audio/speech", R"({"input":"x","speed":9})");
  EXPECT_EQ(error_of(r)["param"], "speed");
  r = call(sut->port, bhttp::verb::post, "/v1/images/generations", R"({"prompt":"x","size":"big"})");
  EXPECT_EQ(error_of(r)["param"], "size");
  r = call(sut->port, bhttp::verb::post, "/v1/images/generations", R"({"prompt":"x","n":9})");
  EXPECT_EQ(error_of(r)["param"], "n");
  r = call(sut->port, bhttp::verb::post, "/v1/images/generations", R"({"prompt":"x","response_format":"url"})");
  EXPECT_EQ(error_of(r)["param"], "response_format");
  r = call(sut->port, bhttp::verb::post, "/v1/music/generations", R"({"prompt":"x","duration":3600})");
  EXPECT_EQ(error_of(r)["param"], "duration");
  r = call(sut->port, bhttp::verb::post, "/v1/videos", R"({"prompt":"x","seconds":"forever"})");
  EXPECT_EQ(error_of(r)["param"], "seconds");
  r = call(sut->port, bhttp::verb::post, "/v1/audio/speech", R"({"model":"other","input":"x"})");
  EXPECT_EQ(r.status, 404);
  r = call(sut->port, bhttp::verb::get, "/v1/audio/speech");
  EXPECT_EQ(r.status, 405);
  r = call(sut->port, bhttp::verb::post, "/v1/images/generations", "{not json");
  EXPECT_EQ(r.status, 400);
  // Still serving.
  EXPECT_EQ(call(sut->port, bhttp::verb::post, "/v1/audio/speech", R"({"input":"ok","response_format":"wav"})").status, 200);
}

}  // namespace
}  // namespace tutti
