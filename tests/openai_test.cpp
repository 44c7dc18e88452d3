// The OpenAI HTTP schema without sockets: request parsing and its errors, chat templates,
// response and chunk bodies.
#include <gtest/gtest.h>

#include "actors/http/openai.hpp"

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
  EXPECT_EQ(p.request.prompt, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(p.request.max_tokens, 20);
  EXPECT_FLOAT_EQ(p.request.temperature, 0.5f);
  EXPECT_EQ(p.request.seed, 7u);
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
  const ParsedRequest rt = ok(R"({"prompt":"x","tutti":{"class":"realtime","rate":50}})", false);
  EXPECT_EQ(rt.request.request_class, "realtime");
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
  EXPECT_EQ(model.status, 404);
  EXPECT_EQ(model.code, "model_not_found");
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
  EXPECT_EQ(format_chat(ChatTemplate::Llama2, m), "[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]");
  EXPECT_EQ(format_chat(ChatTemplate::Llama3, {{"user", "hi"}}),
            "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(OpenAi, BodiesFollowTheSchema) {
  const json first = json::parse(chunk_json("chatcmpl-1", "m", 100, true, "Hel", "", true));
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(first["choices"][0]["delta"]["content"], "Hel");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const json last = json::parse(chunk_json("chatcmpl-1", "m", 100, true, "", "length", false));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  const json usage = json::parse(usage_chunk_json("chatcmpl-1", "m", 100, true, 5, 7));
  EXPECT_EQ(usage["usage"]["total_tokens"], 12);
  EXPECT_TRUE(usage["choices"].empty());
  const json full = json::parse(completion_json("cmpl-2", "m", 100, false, "text", "stop", 3, 4));
  EXPECT_EQ(full["object"], "text_completion");
  EXPECT_EQ(full["choices"][0]["text"], "text");
  EXPECT_EQ(full["choices"][0]["finish_reason"], "stop");
}

}  // namespace
}  // namespace tutti::http
