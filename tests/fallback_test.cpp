// Several models at once, per-modality canaries, routing around a broken modality, and hot
// swap: against real servers (Serving, as `tutti serve` assembles it) over files the tests
// write themselves, one of them with its audio codec deliberately broken.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>

#include <unistd.h>

#include "actors/http/realtime_audio.hpp"
#include "codecs/model_canary.h"
#include "config/settings.h"
#include "http_client.h"
#include "pipeline/engine.h"
#include "server_support.h"
#include "voice_client.h"
#include "tools/loadtest/runner.h"

namespace tutti {
namespace {

namespace bhttp = boost::beast::http;
using json = nlohmann::json;

// A small unified model (every modality, MDCT audio), written once per process.
std::string good_model() {
  RandomModelSpec spec;
  spec.dim = 64; spec.layers = 2; spec.heads = 4; spec.kv_heads = 2; spec.ffn = 96; spec.unified = true; spec.seed = 4;
  return test::random_model(spec, "fallback-good.gguf");
}

// A copy of `src` with every float of the f32 tensor `tensor` set to `value` (NaN, or a
// constant): the corrupt file the canaries must catch. Baselines stamped into `src` travel.
// Files are this process's own (ctest runs each test as a process, several at once), and go
// when it ends.
std::string own_path(const std::string& name) {
  static const bool cleanup = [] {
    std::atexit([] {
      const std::string prefix = std::to_string(::getpid()) + "-";
      for (const auto& f : std::filesystem::directory_iterator(std::filesystem::path(test::temp_path("x")).parent_path()))
        if (f.path().filename().string().rfind(prefix, 0) == 0) std::filesystem::remove(f.path());
    });
    return true;
  }();
  (void)cleanup;
  return test::temp_path(std::to_string(::getpid()) + "-" + name);
}

std::string broken_copy(const std::string& src, const std::string& name, const std::string& tensor, float value) {
  const std::string path = own_path(name);
  auto file = GgufFile::open(src);
  EXPECT_TRUE(file) << file.error().message;
  GgufWriter w;
  for (const auto& [k, v] : (*file)->metadata()) w.set_value(k, v);
  bool found = false;
  for (const GgufTensorInfo& t : (*file)->tensors()) {
    std::vector<uint8_t> bytes(t.data, t.data + t.n_bytes);
    if (t.name == tensor) {
      EXPECT_EQ(t.type, TensorType::F32);
      float* f = reinterpret_cast<float*>(bytes.data());
      std::fill(f, f + t.n_elements(), value);
      found = true;
    }
    std::vector<uint64_t> shape(t.ne, t.ne + t.n_dims);
    w.add_tensor(t.name, t.type, shape, std::move(bytes));
  }
  EXPECT_TRUE(found) << tensor;
  EXPECT_TRUE(w.write(path).ok());
  return path;
}

// The good model with its canary baselines stamped in (as `tutti model canary --stamp`
// does), so a copy with a constant codebook is told from the original by its checksum.
std::string stamped_model() {
  const std::string path = own_path("fallback-stamped.gguf");
  if (std::filesystem::exists(path)) return path;
  auto backend = make_cpu_backend({1});
  auto model = std::move(Model::load(good_model(), *backend)).value();
  auto tok = std::move(Tokenizer::from_gguf(model->file())).value();
  auto codecs = std::move(codecs::load_model_codecs(model->file())).value();
  auto kv = std::move(codecs::make_canary_cache(*model)).value();
  codecs::CanaryBaselines b;
  for (Modality m : codecs::canary_modalities(*model)) EXPECT_TRUE(codecs::run_canary(*model, *tok, codecs, *kv, m, {}, b).passed);
  GgufWriter w;
  for (const auto& [k, v] : model->file().metadata()) w.set_value(k, v);
  codecs::write_canary_baselines(w, b);
  for (const GgufTensorInfo& t : model->file().tensors())
    w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), std::vector<uint8_t>(t.data, t.data + t.n_bytes));
  EXPECT_TRUE(w.write(path).ok());
  return path;
}

const float kNaN = std::numeric_limits<float>::quiet_NaN();

ModelEntry entry(const std::string& name, const std::string& file, std::map<std::string, std::string> fallback = {}) {
  ModelEntry e;
  e.name = name, e.file = file, e.fallback = std::move(fallback), e.threads = 1;
  return e;
}

// A server over `models` (the first is the default), with a ledger and, when `admin_key`
// is set, keys: "user-key" and the admin key.
struct Fleet {
  std::unique_ptr<Serving> server;
  uint16_t port = 0;
  std::string ledger;
  std::string admin;
  explicit Fleet(std::vector<ModelEntry> models, const std::string& ledger_name, double canary_interval_s = 0, int pass_streak = 2,
                 const std::string& admin_key = "") {
    Serving::Options o;
    o.pipeline = test::ServerUnderTest::default_pipeline();
    o.caf_workers = 2;
    o.engine.models = std::move(models);
    o.engine.threads = 1;
    o.engine.health.canary_interval_s = canary_interval_s;
    o.engine.health.pass_streak = pass_streak;
    o.server.port = 0;
    ledger = test::fresh_ledger(ledger_name);
    o.server.ledger_path = ledger;
    admin = admin_key;
    if (!admin_key.empty()) {
      EXPECT_TRUE(o.server.api_keys.add("user-key", "user").ok());
      EXPECT_TRUE(o.server.api_keys.add(admin_key, "admin", true).ok());
    }
    auto s = Serving::start(std::move(o));
    EXPECT_TRUE(s) << s.error().message;
    if (s) server = std::move(s).value();
    port = server ? server->port() : 0;
  }
  ~Fleet() {
    if (server) server->stop();
  }
  // Every model in detail (the admin view; /health itself says only the states).
  json health() const {
    std::vector<std::pair<std::string, std::string>> h;
    if (!admin.empty()) h.push_back({"Authorization", "Bearer " + admin});
    return json::parse(test::http_call(port, bhttp::verb::get, "/v1/admin/models", "", h).body);
  }
  std::string state(const std::string& model, const std::string& modality) const {
    return health()["models"][model]["modalities"][modality]["state"].get<std::string>();
  }
};

test::Reply speech(uint16_t port, const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  return test::http_call(port, bhttp::verb::post, "/v1/audio/speech",
                         json{{"input", "hello there"}, {"voice", "alloy"}, {"response_format", "wav"}}.dump(), headers);
}
test::Reply chat(uint16_t port, const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  return test::http_call(port, bhttp::verb::post, "/v1/chat/completions",
                         json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 4}}.dump(), headers);
}

// One voice turn on a fresh Realtime session; its response.done.
json voice_turn(uint16_t port) {
  test::RealtimeWs ws(port);
  test::start_voice_session(ws, 40);
  return test::voice_turn(ws);
}

// ---- plain logic

TEST(Fallback, HealthDegradesAtOnceAndReturnsAfterPassesInARow) {
  codecs::ModalityHealth h({Modality::Text, Modality::Audio}, 3);
  EXPECT_TRUE(h.healthy(Modality::Audio));
  EXPECT_FALSE(h.healthy(Modality::Image)) << "a modality the model lacks is not healthy";
  codecs::CanaryResult fail{Modality::Audio, false, "broken"}, pass{Modality::Audio, true, ""};
  h.record(fail);
  EXPECT_FALSE(h.healthy(Modality::Audio));
  EXPECT_TRUE(h.healthy(Modality::Text)) << "only the failed modality";
  h.record(pass), h.record(pass);
  EXPECT_FALSE(h.healthy(Modality::Audio)) << "two passes are not three in a row";
  h.record(fail), h.record(pass), h.record(pass);
  EXPECT_FALSE(h.healthy(Modality::Audio)) << "a failure restarts the count";
  h.record(pass);
  EXPECT_TRUE(h.healthy(Modality::Audio));
  h.flag(Modality::Audio, "non-finite logits");
  EXPECT_FALSE(h.healthy(Modality::Audio)) << "the runtime guard degrades at once";
}

// A reloaded model's scheduler starts from the running one's step costs: ready at once, and
// pricing steps as the prior does.
TEST(Fallback, AStepCostPriorMakesTheModelReadyAtOnce) {
  StepCostModel::Coefficients prior;
  prior.base = 2e-3, prior.per_row = 1e-4, prior.per_prefill_token = 5e-5, prior.per_context_token = 1e-8;
  StepCostModel m;
  EXPECT_FALSE(m.ready());
  m.seed(prior);
  EXPECT_TRUE(m.ready());
  StepShape s;
  s.rows = 9, s.prefill_tokens = 128, s.context_tokens = 4000;
  const double want = prior.base + 9 * prior.per_row + 128 * prior.per_prefill_token + 4000 * prior.per_context_token;
  EXPECT_NEAR(m.predict(s), want, 0.05 * want);
  for (int i = 0; i < 400; ++i) m.observe(s, 2 * want);  // the machine turned out slower: real steps take over
  EXPECT_NEAR(m.predict(s), 2 * want, 0.1 * want);
}

TEST(Fallback, BadFallbacksAreSettingsErrorsAtStart) {
  auto parse = [](const std::string& toml) { return parse_settings(toml, "t.toml"); };
  const std::string two = "[[models]]\nname = \"a\"\nfile = \"a.gguf\"\n[[models]]\nname = \"b\"\nfile = \"b.gguf\"\n";
  EXPECT_TRUE(parse(two));
  auto unknown = parse("[[models]]\nname = \"a\"\nfile = \"a.gguf\"\n[models.fallback]\naudio = \"nobody\"\n");
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("unknown model nobody"), std::string::npos) << unknown.error().message;
  auto self = parse("[[models]]\nname = \"a\"\nfile = \"a.gguf\"\n[models.fallback]\naudio = \"a\"\n");
  ASSERT_FALSE(self);
  EXPECT_NE(self.error().message.find("itself"), std::string::npos) << self.error().message;
  auto cycle = parse("[[models]]\nname = \"a\"\nfile = \"a.gguf\"\n[models.fallback]\naudio = \"b\"\n"
                     "[[models]]\nname = \"b\"\nfile = \"b.gguf\"\n[models.fallback]\naudio = \"c\"\n"
                     "[[models]]\nname = \"c\"\nfile = \"c.gguf\"\n[models.fallback]\naudio = \"a\"\n");
  ASSERT_FALSE(cycle);
  EXPECT_NE(cycle.error().message.find("cycle: a -> b -> c -> a"), std::string::npos) << cycle.error().message;
  auto modality = parse("[[models]]\nname = \"a\"\nfile = \"a.gguf\"\n[models.fallback]\nsmell = \"a\"\n");
  ASSERT_FALSE(modality);
  EXPECT_NE(modality.error().message.find("unknown modality"), std::string::npos);
  EXPECT_FALSE(parse(two + "[[models]]\nname = \"a\"\nfile = \"c.gguf\"\n")) << "a name twice";
  EXPECT_FALSE(parse("[[models]]\nfile = \"a.gguf\"\n")) << "a name is required";
  EXPECT_FALSE(parse("[health]\npass_streak = 0\n"));
  EXPECT_EQ(parse("[health]\ncanary_interval_s = 5\n")->health.canary_interval_s, 5);
  // One model: --model F is a one-entry list.
  Settings st;
  st.model_path = "x.gguf";
  ASSERT_EQ(st.served_models().size(), 1u);
  EXPECT_EQ(st.served_models()[0].file, "x.gguf");
}

// The canaries tell a healthy model from one whose audio codebook is NaN (finiteness) or a
// constant (the stamped checksum), and say why.
TEST(Fallback, CanariesCatchABrokenAudioCodebook) {
  const std::string good = stamped_model();
  auto run = [](const std::string& path, Modality m) {
    auto backend = make_cpu_backend({1});
    auto model = std::move(Model::load(path, *backend)).value();
    auto tok = std::move(Tokenizer::from_gguf(model->file())).value();
    auto codecs = std::move(codecs::load_model_codecs(model->file())).value();
    auto kv = std::move(codecs::make_canary_cache(*model)).value();
    codecs::CanaryBaselines b = codecs::read_canary_baselines(model->file());
    return codecs::run_canary(*model, *tok, codecs, *kv, m, {}, b);
  };
  for (Modality m : {Modality::Text, Modality::Audio, Modality::Image, Modality::Video, Modality::Music}) {
    const auto r = run(good, m);
    EXPECT_TRUE(r.passed) << modality_name(m) << ": " << r.reason;
    EXPECT_LT(r.seconds, 5.0);  // recorded, not asserted tight: shared machines
  }
  const auto nan = run(broken_copy(good, "fallback-nan.gguf", "codec.audio.codebook.0", kNaN), Modality::Audio);
  EXPECT_FALSE(nan.passed);
  EXPECT_NE(nan.reason.find("not finite"), std::string::npos) << nan.reason;
  const auto flat = run(broken_copy(good, "fallback-flat.gguf", "codec.audio.codebook.0", 0.25f), Modality::Audio);
  EXPECT_FALSE(flat.passed);
  EXPECT_NE(flat.reason.find("checksum"), std::string::npos) << flat.reason;
  EXPECT_TRUE(run(broken_copy(good, "fallback-nan.gguf", "codec.audio.codebook.0", kNaN), Modality::Text).passed)
      << "the text canary is not the audio codec's";
}

// The runtime guard: a step whose logits are NaN ends its request with a clear error (not a
// cut answer) and reports the modality.
TEST(Fallback, NonFiniteLogitsEndTheRequestAndFlagTheModality) {
  auto backend = make_cpu_backend({1});
  auto model = std::move(Model::load(broken_copy(good_model(), "fallback-nan-norm.gguf", "output_norm.weight", kNaN), *backend)).value();
  auto tok = std::move(Tokenizer::from_gguf(model->file())).value();
  auto kv = std::move(model->make_kv_cache(4 << 20)).value();
  Engine engine(*model, std::move(kv), SchedulerConfig{}, tok.get());
  std::vector<Modality> flagged;
  engine.set_nonfinite_hook([&](Modality m) { flagged.push_back(m); });
  EngineRequest r;
  r.seq.id = 7;
  r.seq.prompt = tok->encode("hello", true);
  r.seq.max_new_tokens = 4;
  ASSERT_TRUE(engine.submit(std::move(r), 0).ok());
  std::vector<EngineEvent> all;
  for (int i = 0; i < 10 && !engine.idle(); ++i)
    for (auto& e : engine.step(double(i))) all.push_back(e);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].finish, FinishReason::Error);
  EXPECT_EQ(all[0].code, ErrorCode::generation_failed);
  EXPECT_NE(all[0].error.find("not finite"), std::string::npos) << all[0].error;
  EXPECT_EQ(all[0].token, -1) << "nothing sampled from NaN";
  EXPECT_EQ(flagged, std::vector<Modality>{Modality::Text});
  EXPECT_TRUE(engine.idle());
}

// ---- servers

// The primary's audio codebook is NaN: its audio canary fails at load; speech and a voice
// turn are answered by the fallback (the header, response.done and the ledger say so); chat
// stays on the primary.
TEST(Fallback, ABrokenAudioCodecIsAnsweredByTheFallback) {
  const std::string good = stamped_model();
  const std::string broken = broken_copy(good, "fallback-nan.gguf", "codec.audio.codebook.0", kNaN);
  Fleet f({entry("unified", broken, {{"audio", "speech-backup"}}), entry("speech-backup", good)}, "fallback-route.db");
  ASSERT_TRUE(f.server);
  EXPECT_EQ(f.state("unified", "audio"), "degraded");
  EXPECT_EQ(f.state("unified", "text"), "healthy");
  EXPECT_EQ(f.state("speech-backup", "audio"), "healthy");
  const json open = json::parse(test::http_call(f.port, bhttp::verb::get, "/health").body);
  EXPECT_EQ(open["status"], "degraded");
  EXPECT_EQ(open["models"]["unified"]["modalities"]["audio"], "degraded");
  EXPECT_EQ(open["models"]["unified"]["modalities"]["text"], "healthy");
  EXPECT_FALSE(open["models"]["unified"].contains("file")) << "no paths to anonymous clients";
  EXPECT_NE(f.health()["models"]["unified"]["modalities"]["audio"]["last_failure"].get<std::string>().find("not finite"), std::string::npos);

  const auto s = speech(f.port);
  EXPECT_EQ(s.status, 200) << s.body;
  EXPECT_EQ(s.served_by, "speech-backup");
  const auto c = chat(f.port);
  EXPECT_EQ(c.status, 200) << c.body;
  EXPECT_EQ(c.served_by, "unified");
  const json done = voice_turn(f.port);
  EXPECT_EQ(done["response"]["status"], "completed") << done.dump();
  EXPECT_EQ(done["response"]["tutti"]["served_by"], "speech-backup");
  EXPECT_EQ(done["response"]["tutti"]["fallback"], true);
  // A model asked for by name is served by it.
  const auto named = test::http_call(f.port, bhttp::verb::post, "/v1/chat/completions",
                                     json{{"model", "speech-backup"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 2}}.dump());
  EXPECT_EQ(named.served_by, "speech-backup");
  const json models = json::parse(test::http_call(f.port, bhttp::verb::get, "/v1/models").body);
  EXPECT_EQ(models["data"][0]["id"], "unified");
  EXPECT_EQ(models["data"][1]["id"], "speech-backup");

  const auto rows = test::ledger_rows_when(f.ledger, 4);
  ASSERT_GE(rows.size(), 4u);
  int fallbacks = 0, primaries = 0;
  for (const auto& r : rows) {
    if (r.endpoint == "/v1/audio/speech" || r.endpoint == "/v1/realtime") {
      EXPECT_EQ(r.model, "speech-backup") << r.endpoint;
      EXPECT_TRUE(r.fallback) << r.endpoint;
      fallbacks++;
    } else if (r.endpoint == "/v1/chat/completions" && r.model == "unified") {
      EXPECT_FALSE(r.fallback);
      primaries++;
    }
  }
  EXPECT_EQ(fallbacks, 2) << "speech and the voice turn";
  EXPECT_EQ(primaries, 1);
  EXPECT_EQ(test::metric(f.port, "tutti_modality_healthy{model=\"unified\",modality=\"audio\"}"), 0);
  EXPECT_EQ(test::metric(f.port, "tutti_modality_healthy{model=\"unified\",modality=\"text\"}"), 1);
  EXPECT_EQ(test::metric(f.port, "tutti_fallback_requests_total{model=\"unified\",modality=\"audio\"}"), 2);
}

// Without a fallback a degraded modality is refused with modality_unavailable, in each
// protocol's form; the rest keeps serving.
TEST(Fallback, WithoutAFallbackTheModalityIsUnavailable) {
  const std::string broken = broken_copy(stamped_model(), "fallback-nan.gguf", "codec.audio.codebook.0", kNaN);
  Fleet f({entry("unified", broken)}, "fallback-none.db");
  ASSERT_TRUE(f.server);
  const auto s = speech(f.port);
  EXPECT_EQ(s.status, 503);
  EXPECT_EQ(json::parse(s.body)["error"]["code"], "modality_unavailable") << s.body;
  EXPECT_EQ(chat(f.port).status, 200);
  test::RealtimeWs ws(f.port);
  ws.until("session.created");
  ws.send({{"type", "conversation.item.create"},
           {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "hello"}}}}}}});
  ws.send({{"type", "response.create"}, {"response", {{"output_modalities", {"audio"}}}}});
  EXPECT_EQ(ws.until("error")["error"]["code"], "modality_unavailable");
  const auto rows = test::ledger_rows_when(f.ledger, 2);
  bool refused = false;
  for (const auto& r : rows) refused |= r.endpoint == "/v1/audio/speech" && r.outcome == "refused" && r.error == "modality_unavailable";
  EXPECT_TRUE(refused);
}

// The same breakage injected while the server runs flips the modality within one canary
// interval; mended, it returns to the primary after the passes in a row it needs.
TEST(Fallback, BreakageAtRunTimeFlipsWithinOneCanaryInterval) {
  const std::string good = stamped_model();
  Fleet f({entry("unified", good, {{"audio", "speech-backup"}}), entry("speech-backup", good)}, "fallback-runtime.db", 0.3, 2);
  ASSERT_TRUE(f.server);
  EXPECT_EQ(speech(f.port).served_by, "unified");
  auto inst = f.server->models().primary().current();
  std::vector<float>* book = codecs::codebook_for_fault_injection(*inst->pipe.codecs, Modality::Audio);
  ASSERT_NE(book, nullptr);
  const std::vector<float> saved = *book;
  std::fill(book->begin(), book->end(), kNaN);
  const auto broke = std::chrono::steady_clock::now();
  while (f.state("unified", "audio") == "healthy" && std::chrono::steady_clock::now() - broke < std::chrono::seconds(20))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const double flipped_after = std::chrono::duration<double>(std::chrono::steady_clock::now() - broke).count();
  EXPECT_EQ(f.state("unified", "audio"), "degraded");
  std::printf("[ measure ] broken at run time: degraded after %.2f s (canary interval 0.3 s)\n", flipped_after);
  EXPECT_EQ(speech(f.port).served_by, "speech-backup");
  EXPECT_EQ(chat(f.port).served_by, "unified");
  *book = saved;  // mended
  const auto mended = std::chrono::steady_clock::now();
  while (f.state("unified", "audio") != "healthy" && std::chrono::steady_clock::now() - mended < std::chrono::seconds(20))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(f.state("unified", "audio"), "healthy");
  EXPECT_GE(f.health()["models"]["unified"]["modalities"]["audio"]["passes_in_a_row"].get<int>(), 2) << "hysteresis";
  EXPECT_EQ(speech(f.port).served_by, "unified");
}

// Reload: admin keys only (403), unknown models (404), one at a time (409); a broken file is
// refused with the reason and the old weights keep serving; a good one is swapped in.
TEST(Fallback, ReloadIsGuardedAndABrokenFileIsRefused) {
  const std::string good = stamped_model();
  Fleet f({entry("unified", good)}, "fallback-reload.db", 0, 2, "admin-key");
  ASSERT_TRUE(f.server);
  const std::vector<std::pair<std::string, std::string>> user = {{"Authorization", "Bearer user-key"}},
                                                         admin = {{"Authorization", "Bearer admin-key"}};
  auto reload = [&](const std::string& name, const json& body, const auto& headers) {
    return test::http_call(f.port, bhttp::verb::post, "/v1/admin/models/" + name + "/reload", body.dump(), headers);
  };
  EXPECT_EQ(reload("unified", json::object(), user).status, 403);
  EXPECT_EQ(reload("unified", json::object(), std::vector<std::pair<std::string, std::string>>{}).status, 401);
  const auto unknown = reload("nobody", json::object(), admin);
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(json::parse(unknown.body)["error"]["code"], "model_not_found");

  const std::string broken = broken_copy(good, "fallback-nan.gguf", "codec.audio.codebook.0", kNaN);
  const auto refused = reload("unified", json{{"file", broken}}, admin);
  EXPECT_EQ(refused.status, 400) << refused.body;
  EXPECT_NE(refused.body.find("audio canary failed"), std::string::npos) << refused.body;
  EXPECT_EQ(f.health()["models"]["unified"]["version"], 1) << "the old weights keep serving";
  EXPECT_EQ(speech(f.port, user).served_by, "unified");
  const auto missing = reload("unified", json{{"file", "/nonexistent.gguf"}}, admin);
  EXPECT_EQ(missing.status, 400) << missing.body;

  // Two at once: the second is refused while the first loads.
  std::atomic<int> first_status{0};
  std::thread first([&] { first_status = reload("unified", json::object(), admin).status; });
  int second = 0;
  for (int i = 0; i < 200 && second != 409 && first_status == 0; ++i) {
    if (f.server->models().primary().reloading) second = reload("unified", json::object(), admin).status;
    else std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  first.join();
  EXPECT_EQ(first_status, 200);
  EXPECT_EQ(second, 409) << "the second reload, while the first ran";
  const json h = f.health()["models"]["unified"];
  EXPECT_EQ(h["version"], 2);
  EXPECT_EQ(test::http_call(f.port, bhttp::verb::get, "/v1/admin/models", "", user).status, 403);
  const auto canary = test::http_call(f.port, bhttp::verb::post, "/v1/admin/models/unified/canary", "", admin);
  ASSERT_EQ(canary.status, 200) << canary.body;
  EXPECT_TRUE(json::parse(canary.body)["passed"].get<bool>()) << canary.body;
  EXPECT_EQ(json::parse(canary.body)["checks"]["audio"], "passed");
  EXPECT_TRUE(h["last_reload"]["ok"].get<bool>());
  EXPECT_EQ(chat(f.port, user).status, 200);
  const std::string metrics = test::http_call(f.port, bhttp::verb::get, "/metrics", "", admin).body;
  EXPECT_NE(metrics.find("tutti_model_reloads_total{model=\"unified\",outcome=\"ok\"} 1\n"), std::string::npos);
  EXPECT_NE(metrics.find("tutti_model_reloads_total{model=\"unified\",outcome=\"refused\"} 2\n"), std::string::npos);
}

// A model that does not fit the machine's memory is refused before anything is loaded, with
// the sizes; a model that does starts beside it no more.
TEST(Fallback, AModelThatDoesNotFitIsRefusedWithTheSizes) {
  ModelEntry huge = entry("unified", stamped_model());
  huge.kv_cache_mb = 1 << 22;  // a 4 TiB KV pool
  Serving::Options o;
  o.pipeline = test::ServerUnderTest::default_pipeline();
  o.engine.models = {huge};
  o.server.port = 0;
  auto s = Serving::start(std::move(o));
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("needs"), std::string::npos) << s.error().message;
  EXPECT_NE(s.error().message.find("MiB are available"), std::string::npos) << s.error().message;
}

// A swap under load: a load-test run with voice sessions, chat and speech, whose second
// stage reloads the model. Every request is answered or cleanly refused, the ledger holds
// one record per request, and the voice sessions go on across the swap.
TEST(Fallback, SwapUnderLoadDropsNothing) {
  const std::string good = stamped_model();
  Fleet f({entry("unified", good)}, "fallback-swap.db");
  ASSERT_TRUE(f.server);
  loadtest::Scenario sc;
  sc.port = f.port;
  sc.drain_s = 20;
  sc.answer_tokens = 60;
  sc.max_tokens = loadtest::Distribution{8, 2, 1, 16};
  sc.prompt_words = loadtest::Distribution{10, 5, 1, 40};
  loadtest::Stage before, during;
  before.duration_s = during.duration_s = 3;
  before.voice_sessions = during.voice_sessions = 1;
  before.text_rate = during.text_rate = 3;
  before.speech_rate = during.speech_rate = 1;
  during.reload = "unified";
  sc.stages = {before, during};
  auto report = loadtest::run_scenario(sc);
  ASSERT_TRUE(report) << report.error().message;
  const json& counters = (*report)["counters"];
  auto total = [&](const char* name) -> int64_t { return counters.contains(name) ? counters[name]["all"].get<int64_t>() : 0; };
  EXPECT_EQ(total("reload.ok"), 1);
  EXPECT_EQ(f.health()["models"]["unified"]["version"], 2);
  // Nothing failed: every error counter is a refusal (429/503) at most.
  for (const auto& [name, c] : counters.items())
    if (name.rfind("errors.", 0) == 0) {
      const bool refusal = name.find("http_429") != std::string::npos || name.find("http_503") != std::string::npos;
      EXPECT_TRUE(refusal) << name << " = " << c["all"];
    }
  const int64_t text = total("text.requests"), speech_n = total("speech.requests");
  EXPECT_GT(text, 5);
  EXPECT_GT(total("voice.turns"), 1);
  EXPECT_GT(counters["voice.turns"]["by_stage"][1].get<int64_t>(), 0) << "the voice session went on through the swap";
  for (const char* m : {"text.ttft_s", "voice.commit_to_audio_s"})
    if ((*report)["metrics"].contains(m))
      std::printf("[ measure ] %s p50 before %.4f s, during the swap %.4f s\n", m,
                  (*report)["metrics"][m]["by_stage"][0].value("p50", -1.0), (*report)["metrics"][m]["by_stage"][1].value("p50", -1.0));
  // One record per request: text and speech requests, and each voice turn's response (the
  // prefills while speaking are part of their turn and not recorded).
  const auto rows = test::ledger_rows_when(f.ledger, size_t(text + speech_n));
  int64_t text_rows = 0, speech_rows = 0;
  for (const auto& r : rows) {
    text_rows += r.endpoint == "/v1/chat/completions";
    speech_rows += r.endpoint == "/v1/audio/speech";
  }
  EXPECT_EQ(text_rows, text);
  EXPECT_EQ(speech_rows, speech_n);
}

}  // namespace
}  // namespace tutti
