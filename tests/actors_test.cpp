// The actor pipeline (encoder -> executor -> decoder -> sink) on CAF's real scheduler: streamed
// text equals the engine's tokens detokenized, requests interleave, cancel and refusals end a
// request with a reason, and other requests go on.
#include <gtest/gtest.h>

#include <map>
#include <thread>

#include "actors/pipeline.hpp"
#include "pipeline/generate.h"
#include "test_support.h"

namespace tutti {
namespace {

using namespace tutti::actors;

// A sink that forwards every delta to a plain actor handle (a scoped_actor in the test).
sink_actor::behavior_type forwarder(sink_actor::pointer self, caf::actor target) {
  return {[=](delta_atom, const text_delta& d) { caf::anon_send(target, d); },
          [=](media_atom, const media_delta& d) { caf::anon_send(target, d); }};
}

struct Result {
  std::string text, finish, error;
  ErrorCode code = ErrorCode::none;
  int completion_tokens = 0;
};

struct PipelineFixture : ::testing::Test {
  std::unique_ptr<Backend> backend = make_cpu_backend({1});
  std::unique_ptr<Model> model;
  std::shared_ptr<const Tokenizer> tokenizer;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  PipelineHandles pipe;

  void start(PipelineConfig pc = {}) {
    RandomModelSpec spec;
    spec.dim = 64; spec.layers = 2; spec.heads = 4; spec.kv_heads = 2; spec.ffn = 96; spec.type = TensorType::F32; spec.seed = 3;
    model = std::move(Model::load(test::random_model(spec, "ref-f32.gguf"), *backend)).value();
    tokenizer = std::shared_ptr<const Tokenizer>(std::move(Tokenizer::from_gguf(model->file())).value());
    cfg.set("scheduler.max-threads", 2);
    sys = std::make_unique<caf::actor_system>(cfg);
    pc.kv_cache_bytes = 4 << 20;
    pc.kv_cache_type = TensorType::F32;
    pc.scheduler.admission.enabled = false;  // decided on measured step times: see server_support.h
    auto h = spawn_pipeline(*sys, *model, tokenizer, pc);
    ASSERT_TRUE(h) << h.error().message;
    pipe = *h;
  }
  ~PipelineFixture() override {
    if (!sys) return;
    caf::anon_send_exit(pipe.encoder, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(pipe.executor, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(pipe.decoder, caf::exit_reason::user_shutdown);
  }

  // Sends requests, collects deltas until every one has finished.
  std::map<int64_t, Result> run(const std::vector<text_request>& reqs, const std::function<void(caf::scoped_actor&)>& after_send = {}) {
    caf::scoped_actor self{*sys};
    auto sink = sys->spawn(forwarder, caf::actor_cast<caf::actor>(self));
    std::map<int64_t, Result> out;
    for (const text_request& r : reqs) {
      self->request(pipe.encoder, caf::infinite, encode_atom::value, r, sink)
          .receive(
              [&](const encode_result& e) {
                if (e.code == ErrorCode::none) {
                  EXPECT_GT(e.prompt_tokens, 0);
                  return;
                }
                out[r.id].error = e.error, out[r.id].code = e.code, out[r.id].finish = "refused";
              },
              [&](caf::error& e) { out[r.id].error = sys->render(e); out[r.id].finish = "unreachable"; });
    }
    if (after_send) after_send(self);
    size_t finished = 0;
    for (auto& [id, r] : out) finished += !r.finish.empty();
    while (finished < reqs.size()) {
      bool timed_out = false;
      self->receive([&](const text_delta& d) {
        Result& r = out[d.request];
        r.text += d.text;
        r.completion_tokens = d.completion_tokens;
        if (d.last()) {
          r.finish = finish_reason_name(d.finish);
          r.code = d.error_code;
          r.error = d.error;
          ++finished;
        }
      }, caf::after(std::chrono::seconds(20)) >> [&] { timed_out = true; });
      if (timed_out) {
        ADD_FAILURE() << "timed out waiting for deltas";
        break;
      }
    }
    caf::anon_send_exit(sink, caf::exit_reason::user_shutdown);
    return out;
  }

  // The text a stream of this request must carry: its tokens generated alone, through the
  // same streaming detokenizer (which replaces bytes that never form UTF-8 with U+FFFD).
  std::pair<std::string, size_t> alone(const std::string& prompt, int max_tokens) {
    auto kv = std::move(model->make_kv_cache(4 << 20, TensorType::F32)).value();
    Sampler sampler({});
    GenerateOptions o;
    o.max_tokens = max_tokens;
    auto r = generate(*model, *kv, tokenizer.get(), tokenizer->encode(prompt), sampler, o);
    StreamingDetokenizer d(*tokenizer);
    std::string text;
    for (int32_t t : r->tokens) text += d.push(t);
    return {text + d.flush(), r->tokens.size()};
  }
};

text_request req(int64_t id, std::string prompt, int max_tokens, RequestClass cls = RequestClass::Interactive) {
  text_request r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.request_class = cls;
  r.tokens_per_second = 200;
  return r;
}

TEST_F(PipelineFixture, StreamsTheSameTextAsGenerationAlone) {
  start();
  const std::vector<text_request> reqs = {req(1, "Hello world", 12), req(2, "The quick brown fox", 9, RequestClass::Realtime),
                                          req(3, "tutti streams", 15, RequestClass::Batch)};
  auto out = run(reqs);
  for (const text_request& r : reqs) {
    const auto [text, n] = alone(r.prompt, r.max_tokens);
    EXPECT_EQ(out[r.id].finish, int(n) == r.max_tokens ? "length" : "stop") << r.id << ": " << out[r.id].error;
    EXPECT_EQ(out[r.id].completion_tokens, int(n));
    EXPECT_EQ(out[r.id].text, text) << r.id;
  }
}

TEST_F(PipelineFixture, CancelAndRefusalEndOnlyTheirRequests) {
  PipelineConfig pc;
  pc.scheduler.max_waiting = 64;
  start(pc);
  text_request empty = req(3, "", 4);
  empty.add_special = false;  // no BOS: nothing to run
  text_request endless = req(1, "Hello world", 8000);  // seconds of work unless cancelled
  endless.ignore_eos = true;
  std::vector<text_request> reqs = {endless, req(2, "Hello there", 6), empty};
  auto out = run(reqs, [&](caf::scoped_actor& self) {
    self->send<caf::message_priority::high>(pipe.executor, cancel_atom::value, int64_t(1));
  });
  EXPECT_EQ(out[1].finish, "cancelled");
  EXPECT_LT(out[1].completion_tokens, 8000);
  EXPECT_EQ(out[2].finish, alone("Hello there", 6).second == 6 ? "length" : "stop");
  EXPECT_EQ(out[3].finish, "refused");
  EXPECT_NE(out[3].error.find("empty"), std::string::npos) << out[3].error;
  EXPECT_EQ(out[3].code, ErrorCode::invalid_request) << "the category travels as a code, not in the message";
  // A prompt longer than the model's context is refused by the executor with the reason (a
  // text answer's own length is cut where the context ends instead).
  std::string words;
  for (int i = 0; i < 6000; ++i) words += "Hello world ";
  auto big = run({req(4, words, 4)});
  EXPECT_EQ(big[4].finish, "error");
  EXPECT_NE(big[4].error.find("maximum context length"), std::string::npos) << big[4].error;
  EXPECT_EQ(big[4].code, ErrorCode::context_length_exceeded);
}

// Fault isolation: a failure decoding one request, or encoding one, ends only that request
// with the reason; a step that throws ends the sequences it held with the reason, and the
// executor goes on serving new requests. (The failures are injected where each stage would
// meet a real one.)
TEST_F(PipelineFixture, AFailureEndsOnlyWhatItTouchesAndServingGoesOn) {
  std::atomic<bool> fail_when_two_run{false};
  PipelineConfig pc;
  pc.scheduler.client_window = 0;  // this test's sink gives no credit
  pc.fault_injection = [&](const std::string& stage, int64_t id) {
    if (stage == "decode" && id == 2) throw std::runtime_error("bad codes for request 2");
    if (stage == "encode" && id == 4) throw std::runtime_error("tokenizer blew up");
    // The step after the one that had both long requests running (the gauge it updated).
    if (stage == "step" && pipe.metrics && pipe.metrics->running.load() >= 2 && fail_when_two_run.exchange(false))
      throw std::runtime_error("device fault");
  };
  start(pc);
  auto out = run({req(1, "Hello world", 6), req(2, "Hello there", 6), req(3, "Good morning", 6), req(4, "Hi", 6)});
  EXPECT_EQ(out[2].finish, "error");
  EXPECT_NE(out[2].error.find("decoding failed: bad codes"), std::string::npos) << out[2].error;
  EXPECT_EQ(out[2].code, ErrorCode::generation_failed);
  EXPECT_EQ(out[4].finish, "refused");
  EXPECT_NE(out[4].error.find("encoding failed"), std::string::npos) << out[4].error;
  EXPECT_EQ(out[4].code, ErrorCode::generation_failed);
  for (int64_t id : {1, 3}) {
    const auto [text, n] = alone(id == 1 ? "Hello world" : "Good morning", 6);
    EXPECT_EQ(out[id].text, text) << id;
    EXPECT_EQ(out[id].finish, n == 6 ? "length" : "stop") << id;
  }
  // A step fails while two long requests run: both end with the reason...
  text_request a = req(10, "first long one", 4000), b = req(11, "second long one", 4000);
  a.ignore_eos = b.ignore_eos = true;
  fail_when_two_run = true;
  auto failed = run({a, b});
  for (int64_t id : {10, 11}) {
    EXPECT_EQ(failed[id].finish, "error") << id;
    EXPECT_NE(failed[id].error.find("the model step failed: device fault"), std::string::npos) << failed[id].error;
    EXPECT_EQ(failed[id].code, ErrorCode::generation_failed) << id;
    EXPECT_LT(failed[id].completion_tokens, 4000);
  }
  EXPECT_EQ(pipe.metrics->step_failures.load(), 1u);
  // ...and the executor serves the next request as if nothing happened.
  auto after = run({req(12, "Hello world", 6)});
  EXPECT_EQ(after[12].text, alone("Hello world", 6).first);
  EXPECT_EQ(pipe.metrics->running.load(), 0);
}

// The step loop's wake-ups stay bounded however many requests come and go: with a stream
// ahead of its playback clock the executor looks again every 2 ms through one timer. (A
// wake-up that started a new timer of its own, as each submit once did, made the loop turn
// thousands of times a second and queued steps ahead of new requests in the mailbox.) The
// bound can only be missed upwards by that bug: a slow machine turns the loop less often.
TEST_F(PipelineFixture, StepLoopWakeUpsStayBoundedAsRequestsComeAndGo) {
  start();
  caf::scoped_actor self{*sys};
  auto sink = sys->spawn(forwarder, caf::actor_cast<caf::actor>(self));
  text_request stream = req(100, "a slow stream", 2000);
  stream.request_class = RequestClass::Realtime;
  stream.tokens_per_second = 5;  // ahead of playback almost all the time
  stream.ignore_eos = true;
  self->request(pipe.encoder, caf::infinite, encode_atom::value, stream, sink).receive([](const encode_result&) {}, [](caf::error&) {});
  for (int64_t i = 1; i <= 30; ++i) run({req(i, "short " + std::to_string(i), 2)});
  const uint64_t before = pipe.metrics->executor_wakeups;
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const uint64_t turns = pipe.metrics->executor_wakeups - before;
  EXPECT_GT(turns, 0u) << "the stream's loop stopped";
  EXPECT_LT(turns, 1000u) << "one 2 ms timer turns the loop about 250 times in 0.5 s";
  self->send<caf::message_priority::high>(pipe.executor, cancel_atom::value, int64_t(100));
  caf::anon_send_exit(sink, caf::exit_reason::user_shutdown);
}

}  // namespace
}  // namespace tutti
