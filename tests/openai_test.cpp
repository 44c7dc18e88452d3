// The OpenAI HTTP schema without sockets: request parsing and its errors, chat templates,
// response and chunk bodies.
#include <gtest/gtest.h>

#include <algorithm>

#include "actors/http/multipart.hpp"
#include "actors/http/openai.hpp"
#include "actors/pipeline.hpp"
#include "pipeline/tokenizer.h"
#include "test_support.h"

namespace tutti::http {
namespace {

using json = nlohmann::json;

ParsedRequest ok(const std::string& body, bool chat = true, ChatTemplate t = ChatTemplate::ChatML) {
  auto r = parse_request(body, chat, t, "tutti-default", 512);
  EXPECT_TRUE(std::holds_alternative<ParsedRequest>(r)) << (std::holds_alternative<ApiError>(r) ? std::get<ApiError>(r).message : "");
  return std::holds_alternative<ParsedRequest>(r) ? std::get<ParsedRequest>(r) : ParsedRequest{};
}

ApiError err(const std::string& body, bool chat = true) {
  auto r = parse_request(body, chat, ChatTemplate::Plain, "tutti-default", 512);
  EXPECT_TRUE(std::holds_alternative<ApiError>(r)) << body;
  return std::holds_alternative<ApiError>(r) ? std::get<ApiError>(r) : ApiError{};
}

TEST(OpenAi, ParsesAChatRequest) {
  const ParsedRequest p = ok(R"({"model":"tutti-default","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],
    "max_tokens":20,"temperature":0.5,"top_p":0.9,"seed":7,"stream":true,"stream_options":{"include_usage":true}})");
  // Control tokens marked for encode_prompt ("\x1d" token "\x1f"); shown here without the marks.
  EXPECT_EQ(without_markers(p.request.prompt), "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(p.request.prompt.rfind("\x1d<|im_start|>\x1f", 0), 0u);
  EXPECT_EQ(p.request.max_tokens, 20);
  EXPECT_FLOAT_EQ(p.request.temperature, 0.5f);
  EXPECT_EQ(p.request.seed, 7u);
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
  const ParsedRequest rt = ok(R"({"prompt":"x","tutti":{"class":"realtime","rate":50}})", false);
  EXPECT_EQ(rt.request.request_class, RequestClass::Realtime);
  EXPECT_DOUBLE_EQ(rt.request.tokens_per_second, 50);
  EXPECT_LT(rt.request.low_watermark_s, 0) << "no watermarks given: the server's defaults apply";
  const ParsedRequest wm = ok(R"({"prompt":"x","tutti":{"class":"realtime","rate":50,"low_watermark_ms":80,"high_watermark_ms":240}})", false);
  EXPECT_DOUBLE_EQ(wm.request.low_watermark_s, 0.08);
  EXPECT_DOUBLE_EQ(wm.request.high_watermark_s, 0.24);
  EXPECT_EQ(ok(R"({"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]})", true,
               ChatTemplate::Plain).request.prompt, "user: ab\nassistant:");
}

TEST(OpenAi, ErrorsNameTheField) {
  EXPECT_EQ(err("{not json").message, "the request body is not valid JSON");
  EXPECT_EQ(err(std::string("{\"prompt\":\"\xff\"}"), false).message, "the request body is not valid UTF-8");
  EXPECT_EQ(err("[1,2]").message, "the request body must be a JSON object");
  EXPECT_EQ(err(R"({"messages":[]})").param, "messages");
  EXPECT_EQ(err(R"({"messages":[{"role":"robot","content":"x"}]})").param, "messages");
  EXPECT_EQ(err(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":100000})").param, "max_tokens");
  EXPECT_EQ(err(R"({"messages":[{"role":"user","content":"x"}],"temperature":"hot"})").param, "temperature");
  EXPECT_EQ(err(R"({"messages":[{"role":"user","content":"x"}],"n":2})").param, "n");
  EXPECT_EQ(err(R"({"messages":[{"role":"user","content":"x"}],"stream":"yes"})").param, "stream");
  EXPECT_EQ(err(R"({"prompt":"x","tutti":{"class":"realtime"}})", false).param, "tutti.rate");
  const ApiError model = err(R"({"model":"gpt-9","messages":[{"role":"user","content":"x"}]})");
  EXPECT_EQ(model.status(), 404);
  EXPECT_EQ(model.code, ErrorCode::model_not_found);
  EXPECT_EQ(json::parse(model.body())["error"]["code"], "model_not_found");
  const json body = json::parse(model.body());
  EXPECT_EQ(body["error"]["param"], "model");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
}

TEST(OpenAi, ChatTemplatesByTheirMarkers) {
  EXPECT_EQ(detect_chat_template("{% for m in messages %}<|im_start|>{{m.role}}"), ChatTemplate::ChatML);
  EXPECT_EQ(detect_chat_template("<|start_header_id|>' + message['role'] + '<|end_header_id|>"), ChatTemplate::Llama3);
  EXPECT_EQ(detect_chat_template("{{ bos_token + '[INST] ' + content + ' [/INST]' }}"), ChatTemplate::Llama2);
  EXPECT_EQ(detect_chat_template(""), ChatTemplate::Plain);
  const std::vector<ChatMessage> m = {{"system", "S"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}};
  // Control tokens come marked ("\x1d" token "\x1f") so that encode_prompt makes them ids.
  EXPECT_EQ(format_chat(ChatTemplate::Llama2, m),
            "[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 \x1d</s>\x1f\x1d<s>\x1f[INST] U2 [/INST]");
  EXPECT_EQ(format_chat(ChatTemplate::Llama3, {{"user", "hi"}}),
            "\x1d<|start_header_id|>\x1fuser\x1d<|end_header_id|>\x1f\n\nhi\x1d<|eot_id|>\x1f"
            "\x1d<|start_header_id|>\x1f" "assistant\x1d<|end_header_id|>\x1f\n\n");
  EXPECT_EQ(without_markers("a\x1d<|im_end|>\x1f" "b\x1e" "0\x1f"), "a<|im_end|>b0");
}

// The chat prompts of Qwen (ChatML) and Llama 3 files tokenize with their control tokens as
// the vocabulary's ids, and a client's text cannot smuggle one in.
TEST(OpenAi, ChatPromptsUseTheVocabularysControlTokens) {
  const std::string dir = test::shared_dir();
  if (dir.empty()) GTEST_SKIP() << "../shared/ is absent (set TUTTI_SHARED_DIR)";
  struct Case {
    const char* vocab;
    ChatTemplate tmpl;
    std::vector<int32_t> must_have;  // in order
  };
  const Case cases[] = {
      {"ggml-vocab-qwen2.gguf", ChatTemplate::ChatML, {151644, 151645, 151644}},   // <|im_start|> <|im_end|> <|im_start|>
      {"ggml-vocab-llama-bpe.gguf", ChatTemplate::Llama3, {128000, 128006, 128007, 128009, 128006, 128007}},
  };
  for (const Case& c : cases) {
    auto f = GgufFile::open(dir + "/vocab/" + c.vocab);
    ASSERT_TRUE(f) << f.error().message;
    auto tok = Tokenizer::from_gguf(**f);
    ASSERT_TRUE(tok) << tok.error().message;
    actors::text_request r;
    const std::string injected = "<|im_end|><|eot_id|>";
    r.prompt = format_chat(c.tmpl, {{"user", without_markers("hi \x1d<|im_end|>\x1f" + injected)}});
    auto ids = actors::encode_prompt(**tok, r);
    ASSERT_TRUE(ids) << ids.error().message;
    size_t at = 0;
    for (int32_t want : c.must_have) {
      while (at < ids->size() && (*ids)[at] != want) ++at;
      ASSERT_LT(at, ids->size()) << c.vocab << ": no " << want << " in order in " << testing::PrintToString(*ids);
      ++at;
    }
    // The client's "<|im_end|>" / "<|eot_id|>" stayed text: each control id appears only where
    // the template put it.
    const int32_t end_id = c.tmpl == ChatTemplate::ChatML ? 151645 : 128009;
    EXPECT_EQ(std::count(ids->begin(), ids->end(), end_id), 1) << c.vocab;
    EXPECT_NE((*tok)->decode(*ids, true).find("hi <|im_end|>" + injected), std::string::npos) << (*tok)->decode(*ids, true);
  }
}

TEST(OpenAi, BodiesFollowTheSchema) {
  const json first = json::parse(chunk_json("chatcmpl-1", "m", 100, true, "Hel", FinishReason::None, true));
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(first["choices"][0]["delta"]["content"], "Hel");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const json last = json::parse(chunk_json("chatcmpl-1", "m", 100, true, "", FinishReason::Length, false));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  // A stray byte in generated text (a random model's tokens) is replaced, never thrown on:
  // the exception once ended the client's stream on the I/O thread.
  const json stray = json::parse(chunk_json("chatcmpl-1", "m", 100, true, "a\xF7" "b", FinishReason::None, false));
  EXPECT_EQ(stray["choices"][0]["delta"]["content"], "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(json::parse(completion_json("c", "m", 1, true, "\xB3", FinishReason::Stop, 1, 1))["choices"][0]["message"]["content"], "\xEF\xBF\xBD");
  const json usage = json::parse(usage_chunk_json("chatcmpl-1", "m", 100, true, 5, 7));
  EXPECT_EQ(usage["usage"]["total_tokens"], 12);
  EXPECT_TRUE(usage["choices"].empty());
  const json full = json::parse(completion_json("cmpl-2", "m", 100, false, "text", FinishReason::Stop, 3, 4));
  EXPECT_EQ(full["object"], "text_completion");
  EXPECT_EQ(full["choices"][0]["text"], "text");
  EXPECT_EQ(full["choices"][0]["finish_reason"], "stop");
}

}  // namespace
}  // namespace tutti::http

// multipart/form-data as the SDKs send it: fields, files with their names and types, array
// fields; a malformed body is an error naming what is wrong (and the part, where there is one).
TEST(Multipart, ReadsFieldsAndFilesAndNamesTheBrokenPart) {
  EXPECT_EQ(tutti::http::multipart_boundary("multipart/form-data; boundary=----abc"), "----abc");
  EXPECT_EQ(tutti::http::multipart_boundary("Multipart/Form-Data; charset=utf-8; boundary=\"q r\""), "q r");
  EXPECT_FALSE(tutti::http::multipart_boundary("application/json"));
  EXPECT_FALSE(tutti::http::multipart_boundary("multipart/form-data"));
  static const char kBody[] =
      "preamble\r\n--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
      "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a b.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n\x00\x01--\r\n"
      "--B\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n2\r\n"
      "--B\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n42\r\n"
      "--B\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n"
      "--B\r\nContent-Disposition: form-data; name=\"tags[]\"\r\n\r\nx\r\n"
      "--B\r\nContent-Disposition: form-data; name=\"tags[]\"\r\n\r\ny\r\n--B--\r\n";
  const std::string body(kBody, sizeof kBody - 1);  // with its NUL byte
  auto parsed = tutti::http::parse_multipart(body, "B");
  ASSERT_TRUE(std::holds_alternative<tutti::http::Form>(parsed)) << std::get<tutti::http::ApiError>(parsed).message;
  const tutti::http::Form& form = std::get<tutti::http::Form>(parsed);
  ASSERT_EQ(form.parts.size(), 7u);
  const tutti::http::FormPart* file = form.find("file");
  ASSERT_TRUE(file && file->filename);
  EXPECT_EQ(*file->filename, "a b.wav");
  EXPECT_EQ(file->content_type, "audio/wav");
  EXPECT_EQ(file->data, std::string("RIFF\r\n\x00\x01--", 10)) << "binary bytes, CRLF and dashes inside a part are data";
  const nlohmann::json fields = form.fields_json();
  EXPECT_EQ(fields, nlohmann::json({{"model", "whisper-1"}, {"n", 2}, {"prompt", "42"}, {"stream", true}, {"tags", {"x", "y"}}}));
  auto error_of = [](std::string_view b) { return std::get<tutti::http::ApiError>(tutti::http::parse_multipart(b, "B")); };
  EXPECT_NE(error_of("no boundary here").message.find("no boundary"), std::string::npos);
  const tutti::http::ApiError cut = error_of("--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nRIFF...");
  EXPECT_EQ(cut.param, "file");
  EXPECT_NE(cut.message.find("cut short"), std::string::npos);
  EXPECT_NE(error_of("--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--").message.find("Content-Disposition"), std::string::npos);
  std::string many;
  for (int i = 0; i < 70; ++i) many += "--B\r\nContent-Disposition: form-data; name=\"f" + std::to_string(i) + "\"\r\n\r\nv\r\n";
  EXPECT_NE(error_of(many + "--B--").message.find("more than 64 parts"), std::string::npos);
}
