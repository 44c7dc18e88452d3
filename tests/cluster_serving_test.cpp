// A cluster in one test process: an ingress (its own actor system and HTTP server) and
// executor nodes (each its own actor system and model), talking through CAF's middleman over
// loopback as separate machines would. The processes-in-namespaces test
// (cluster_netns_test.sh) does the same with real processes, interfaces and kill -9.
#include <gtest/gtest.h>

#include <caf/io/all.hpp>

#include <future>
#include <set>
#include <thread>

#include "actors/cluster/ingress.hpp"
#include "actors/cluster/member.hpp"
#include "actors/cluster/node.hpp"
#include "actors/http/tls.hpp"
#include "http_client.h"
#include "server_support.h"
#include "voice_client.h"

namespace tutti {
namespace {

using json = nlohmann::json;
namespace bhttp = boost::beast::http;
const std::string kSecret = "cluster-test-secret";
constexpr double kHeartbeat = 1.0;

std::string model_path() {
  RandomModelSpec spec;
  spec.dim = 64; spec.layers = 2; spec.heads = 4; spec.kv_heads = 2; spec.ffn = 96; spec.unified = true; spec.seed = 4;
  return test::random_model(spec, "cluster-unified.gguf");
}

Serving::Options node_options(double heartbeat_s, const cluster::NodeTls& tls = {}) {
  Serving::Options o;
  o.pipeline = test::ServerUnderTest::default_pipeline();
  o.caf_workers = 2;
  o.server.port = 0;
  o.server.ledger_path = "";
  o.configure_actors = [heartbeat_s, tls](caf::actor_system_config& cfg) { cluster::configure_cluster_node(cfg, heartbeat_s, tls); };
  return o;
}

// TLS between nodes: one development CA, and a certificate it signs that both sides present.
cluster::NodeTls node_tls() {
  auto made = http::make_self_signed(test::temp_path("cluster-tls"));
  EXPECT_TRUE(made) << made.error().message;
  return made ? cluster::NodeTls{made->cert, made->key, made->ca} : cluster::NodeTls{};
}

// The ingress: its HTTP port opens once the first node has joined (wait_serving()).
struct IngressUnderTest {
  std::shared_ptr<cluster::Ingress> ingress;
  std::unique_ptr<Serving> server;
  uint16_t cluster_port = 0, port = 0;
  std::string ledger;
  std::thread starting;

  explicit IngressUnderTest(const std::string& ledger_name, uint16_t want_port = 0, double heartbeat_s = kHeartbeat,
                            std::function<void(http::ServerConfig&)> tweak = {}, const cluster::NodeTls& tls = {}) {
    cluster::IngressConfig ic;
    ic.secret = kSecret;
    ic.heartbeat_s = heartbeat_s;
    ingress = std::make_shared<cluster::Ingress>(ic);
    Serving::Options o = node_options(heartbeat_s, tls);
    ledger = test::fresh_ledger(ledger_name);
    o.server.ledger_path = ledger;
    o.server.first_request_id = int64_t(7) << 32;
    if (tweak) tweak(o.server);
    std::promise<uint16_t> bound;
    auto port_future = bound.get_future();
    starting = std::thread([this, o = std::move(o), want_port, bound = std::move(bound), with_tls = tls.enabled()]() mutable {
      auto s = Serving::start(std::move(o), [&](caf::actor_system& system) -> Expected<std::shared_ptr<http::ModelRegistry>> {
        auto p = ingress->open(system, "127.0.0.1", want_port, with_tls);
        bound.set_value(p ? *p : 0);
        if (!p) return p.error();
        if (auto r = ingress->wait_for_registry(60)) return r;
        ingress->close();
        return Error{"no executor node joined"};
      });
      EXPECT_TRUE(s) << s.error().message;
      if (s) {
        server = std::move(s).value();
        server->on_stop([i = ingress] { i->close(); });
      }
    });
    cluster_port = port_future.get();
    EXPECT_GT(cluster_port, 0);
  }
  void wait_serving() {
    if (starting.joinable()) starting.join();
    ASSERT_TRUE(server);
    port = server->port();
  }
  json status() const { return json::parse(test::http_call(port, bhttp::verb::get, "/v1/admin/cluster").body); }
  // Waits until `n` nodes are members.
  bool nodes_become(size_t n, double seconds = 20) const {
    for (int i = 0; i < int(seconds * 50); ++i) {
      if (ingress->nodes() == n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  void stop() {
    if (starting.joinable()) starting.join();
    if (server) server->stop();
    server.reset();
    ingress->close();
  }
  ~IngressUnderTest() { stop(); }
};

// An executor node: a whole server (its own /metrics) joined to the ingress.
struct ExecutorUnderTest {
  std::unique_ptr<Serving> server;
  std::unique_ptr<cluster::ClusterMember> member;
  uint16_t port = 0;
  std::string name;
  ExecutorUnderTest(const std::string& node, uint16_t ingress_port, const std::string& secret = kSecret,
                    std::function<void(Serving::Options&)> tweak = {}, const cluster::NodeTls& tls = {})
      : name(node) {
    Serving::Options o = node_options(kHeartbeat, tls);
    o.engine.models = {ModelEntry{"m", model_path(), 1, 0, "", {}}};
    o.engine.threads = 1;
    if (tweak) tweak(o);
    auto s = Serving::start(std::move(o));
    EXPECT_TRUE(s) << s.error().message;
    if (!s) return;
    server = std::move(s).value();
    port = server->port();
    cluster::MemberConfig mc;
    mc.ingress_host = "127.0.0.1";
    mc.ingress_port = ingress_port;
    mc.secret = secret;
    mc.name = node;
    mc.http_url = "http://127.0.0.1:" + std::to_string(port);
    mc.retry_s = 0.2;
    mc.request_timeout_s = 3;
    mc.tls = tls.enabled();
    member = std::make_unique<cluster::ClusterMember>(server->system(), server->registry(), mc);
    member->start();
  }
  double metric(const std::string& name_and_labels) const { return test::metric(port, name_and_labels); }
  // As a crash looks to the ingress: the membership loop and the whole node gone at once,
  // whatever runs there.
  void crash() {
    member.reset();
    server.reset();
  }
  ~ExecutorUnderTest() {
    member.reset();
    if (server) server->stop();
  }
};

test::Reply chat(uint16_t port, const std::string& content, int max_tokens = 4) {
  return test::http_call(port, bhttp::verb::post, "/v1/chat/completions",
                         json{{"messages", {{{"role", "user"}, {"content", content}}}}, {"max_tokens", max_tokens}}.dump());
}

using test::StreamingCall;
using test::voice_turn;
void open_voice(test::RealtimeWs& ws) { test::start_voice_session(ws, 30); }
std::string node_of(const json& response_done) { return response_done["response"]["tutti"].value("node", ""); }

// Chat, streamed chat, speech and Realtime voice turns through the ingress reach each of two
// executors; a session stays on its node; every request is in the ingress's ledger with the
// node that ran it.
TEST(ClusterServing, EveryKindOfRequestReachesBothExecutorsAndSessionsStay) {
  IngressUnderTest ing("cluster-kinds.db");
  ExecutorUnderTest a("node-a", ing.cluster_port), b("node-b", ing.cluster_port);
  ing.wait_serving();
  ASSERT_TRUE(ing.nodes_become(2));
  std::set<std::string> chat_nodes, stream_nodes, speech_nodes, voice_nodes;
  int requests = 0;
  for (int i = 0; i < 40 && chat_nodes.size() < 2; ++i, ++requests) {
    // Different prefixes: affinity spreads them over the nodes.
    test::Reply r = chat(ing.port, "question number " + std::to_string(i) + " " + std::string(40, char('a' + i % 26)));
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_TRUE(json::parse(r.body)["choices"][0]["message"]["content"].is_string());
    chat_nodes.insert(r.node);
  }
  EXPECT_EQ(chat_nodes, (std::set<std::string>{"node-a", "node-b"}));
  for (int i = 0; i < 40 && stream_nodes.size() < 2; ++i, ++requests) {
    StreamingCall s(ing.port, "/v1/chat/completions",
                    {{"messages", {{{"role", "user"}, {"content", "streamed " + std::to_string(i) + std::string(40, char('a' + i % 26))}}}},
                     {"max_tokens", 3}, {"stream", true}});
    ASSERT_TRUE(s.until("data: [DONE]")) << s.received;
    EXPECT_EQ(s.received.find("\"error\""), std::string::npos) << s.received;
    stream_nodes.insert(s.node());
  }
  EXPECT_EQ(stream_nodes, (std::set<std::string>{"node-a", "node-b"}));
  for (int i = 0; i < 20 && speech_nodes.size() < 2; ++i, ++requests) {
    StreamingCall s(ing.port, "/v1/audio/speech", {{"input", "hello there"}, {"voice", "alloy"}, {"response_format", "wav"}});
    ASSERT_TRUE(s.until("X-Tutti-Usage")) << s.received.substr(0, 400);
    speech_nodes.insert(s.node());
  }
  EXPECT_EQ(speech_nodes, (std::set<std::string>{"node-a", "node-b"}));
  // Voice sessions: placed by load, each one's turns on its node.
  std::vector<std::unique_ptr<test::RealtimeWs>> sessions;
  for (int i = 0; i < 6 && voice_nodes.size() < 2; ++i) {
    sessions.push_back(std::make_unique<test::RealtimeWs>(ing.port));
    open_voice(*sessions.back());
    const json first = voice_turn(*sessions.back());
    ASSERT_EQ(first["response"]["status"], "completed") << first.dump();
    const json second = voice_turn(*sessions.back());
    EXPECT_EQ(node_of(second), node_of(first)) << "a session stays on its node";
    voice_nodes.insert(node_of(first));
    requests += 2;
  }
  EXPECT_EQ(voice_nodes, (std::set<std::string>{"node-a", "node-b"}));
  sessions.clear();
  // Every request has its one record, each naming its node.
  auto rows = test::ledger_rows_when(ing.ledger, size_t(requests));
  std::map<std::string, int> per_node;
  for (const auto& r : rows) per_node[r.node]++;
  EXPECT_GE(rows.size(), size_t(requests));
  EXPECT_GT(per_node["node-a"], 0);
  EXPECT_GT(per_node["node-b"], 0);
  EXPECT_EQ(per_node[""], 0) << "every request ran on a node";
  const json st = ing.status();
  ASSERT_EQ(st["nodes"].size(), 2u);
  EXPECT_EQ(st["nodes"][0]["models"][0]["name"], "m");
  EXPECT_GE(st["routing"]["sticky"].get<int>(), 1);
}

// The second request that shares a long prefix with the first goes to the same node, and
// that node's prefix cache hits.
TEST(ClusterServing, APrefixSharedByTwoRequestsHitsTheCacheOnOneNode) {
  IngressUnderTest ing("cluster-prefix.db");
  ExecutorUnderTest a("node-a", ing.cluster_port), b("node-b", ing.cluster_port);
  ing.wait_serving();
  ASSERT_TRUE(ing.nodes_become(2));
  const std::string system = "You are the assistant of a large company. " + std::string(600, 'x') + " Answer briefly.";
  auto ask = [&](const std::string& question) {
    return test::http_call(ing.port, bhttp::verb::post, "/v1/chat/completions",
                           json{{"messages", {{{"role", "system"}, {"content", system}}, {{"role", "user"}, {"content", question}}}},
                                {"max_tokens", 2}}
                               .dump());
  };
  std::map<std::string, ExecutorUnderTest*> by_name{{"node-a", &a}, {"node-b", &b}};
  const test::Reply first = ask("what is the time?");
  ASSERT_EQ(first.status, 200) << first.body;
  ExecutorUnderTest* node = by_name[first.node];
  ASSERT_NE(node, nullptr) << first.node;
  const double hits_before = node->metric("tutti_prefix_cache_hit_tokens_total");
  const test::Reply second = ask("and the date?");
  ASSERT_EQ(second.status, 200);
  EXPECT_EQ(second.node, first.node) << "the same prefix, the same node";
  auto rows = test::ledger_rows_when(ing.ledger, 2);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1].node, rows[0].node) << "the ledger names the node";
  EXPECT_GE(node->metric("tutti_prefix_cache_hit_tokens_total") - hits_before, 100) << "the shared prefix came from the cache";
  EXPECT_GE(ing.status()["routing"]["affinity"].get<int>(), 2);
}

// A node lost mid-stream (its process gone): its in-flight requests end with executor_lost
// (a 503 for a whole answer, an error event in a stream), each one recorded; new requests
// and the next turn of a session that was there go to the survivor.
TEST(ClusterServing, ALostNodesRequestsEndWithExecutorLostAndTheRestGoToTheSurvivor) {
  IngressUnderTest ing("cluster-lost.db");
  auto a = std::make_unique<ExecutorUnderTest>("node-a", ing.cluster_port);
  ExecutorUnderTest b("node-b", ing.cluster_port);
  ing.wait_serving();
  ASSERT_TRUE(ing.nodes_become(2));
  // A voice session and long streams on node-a.
  std::unique_ptr<test::RealtimeWs> ws;
  for (int i = 0; i < 8; ++i) {
    ws = std::make_unique<test::RealtimeWs>(ing.port);
    open_voice(*ws);
    if (node_of(voice_turn(*ws)) == "node-a") break;
  }
  std::vector<std::unique_ptr<StreamingCall>> streams;
  for (int i = 0; i < 12 && streams.size() < 2; ++i) {
    auto s = std::make_unique<StreamingCall>(
        ing.port, "/v1/chat/completions",
        json{{"messages", {{{"role", "user"}, {"content", "long " + std::to_string(i) + std::string(40, char('a' + i))}}}},
             {"max_tokens", 1000}, {"stream", true}, {"tutti", {{"ignore_eos", true}, {"class", "realtime"}, {"rate", 20}}}});
    ASSERT_TRUE(s->until("completion_tokens"));
    if (s->node() == "node-a") streams.push_back(std::move(s));
  }
  ASSERT_EQ(streams.size(), 2u);
  const auto t0 = std::chrono::steady_clock::now();
  a->crash();
  for (auto& s : streams) {
    EXPECT_TRUE(s->until("data: [DONE]"));
    EXPECT_NE(s->received.find("\"code\":\"executor_lost\""), std::string::npos) << s->received.substr(s->received.size() - 300);
  }
  const double noticed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ measure ] lost node's streams ended %.3f s after it went\n", noticed_s);
  ASSERT_TRUE(ing.nodes_become(1));
  for (int i = 0; i < 6; ++i) {
    const test::Reply r = chat(ing.port, "after " + std::to_string(i));
    EXPECT_EQ(r.status, 200) << r.body;
  }
  // The session that was on node-a: its next turn runs on node-b, its conversation
  // prefilled there.
  const json next = voice_turn(*ws);
  EXPECT_EQ(next["response"]["status"], "completed") << next.dump();
  EXPECT_EQ(node_of(next), "node-b");
  EXPECT_GE(ing.status()["routing"]["sessions_moved"].get<int>(), 1);
  ws.reset();
  // The ledger: the lost streams failed with their reason; nothing is missing.
  auto rows = test::ledger_rows_when(ing.ledger, 100);
  int lost = 0;
  for (const auto& r : rows)
    if (r.outcome == "failed" && r.error.find("executor node") != std::string::npos) {
      ++lost;
      EXPECT_EQ(r.node, "node-a");
    }
  EXPECT_EQ(lost, 2);
  EXPECT_EQ(ing.status()["lost"]["connection"], 1);
}

// A node that stops beating without closing its connection (hung) is dropped within the
// heartbeat, and what it was running ends with executor_lost. The "node" here is a hand-made
// join that never beats, with a real executor's pipeline behind it.
TEST(ClusterServing, AHungNodeIsDroppedWithinTheHeartbeat) {
  IngressUnderTest ing("cluster-hung.db");
  ExecutorUnderTest live("node-live", ing.cluster_port);
  ing.wait_serving();
  ASSERT_TRUE(ing.nodes_become(1));
  // A second executor's server, joined by hand: beats never come.
  Serving::Options o = node_options(kHeartbeat);
  o.engine.models = {ModelEntry{"m", model_path(), 1, 0, "", {}}};
  o.engine.threads = 1;
  auto hung = Serving::start(std::move(o));
  ASSERT_TRUE(hung);
  {
    caf::scoped_actor self{(*hung)->system()};
    auto ingress = (*hung)->system().middleman().remote_actor<actors::ingress_actor>("127.0.0.1", ing.cluster_port);
    ASSERT_TRUE(ingress);
    actors::node_hello h;
    h.secret = kSecret;
    h.load.node = "node-hung";
    h.agent = caf::actor_cast<caf::actor>(self);
    auto inst = (*hung)->models().primary().current();
    actors::node_model m;
    m.name = "m", m.file = inst->file, m.n_vocab = inst->facts.n_vocab;
    m.front = cluster::model_front_bytes(**GgufFile::open(inst->file));
    m.encoder = inst->pipe.encoder, m.executor = inst->pipe.executor;
    h.models.push_back(m);
    bool accepted = false;
    self->request(*ingress, std::chrono::seconds(10), actors::join_atom::value, h)
        .receive([&](const actors::join_reply& r) { accepted = r.accepted; }, [&](caf::error& e) { FAIL() << (*hung)->system().render(e); });
    ASSERT_TRUE(accepted);
    ASSERT_TRUE(ing.nodes_become(2, 0.5)) << "the join counts at once";
    // A stream placed on the hung node (the live one's prefixes aside, keep asking).
    std::unique_ptr<StreamingCall> on_hung;
    for (int i = 0; i < 30 && !on_hung; ++i) {
      auto s = std::make_unique<StreamingCall>(
          ing.port, "/v1/chat/completions",
          json{{"messages", {{{"role", "user"}, {"content", "hung " + std::to_string(i) + std::string(40, char('a' + i % 26))}}}},
               {"max_tokens", 1000}, {"stream", true}, {"tutti", {{"ignore_eos", true}, {"class", "realtime"}, {"rate", 20}}}});
      ASSERT_TRUE(s->until("\r\n\r\n"));
      if (s->node() == "node-hung") on_hung = std::move(s);
    }
    ASSERT_TRUE(on_hung);
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(on_hung->until("data: [DONE]"));
    const double dropped_after = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(on_hung->received.find("executor_lost"), std::string::npos);
    EXPECT_LE(dropped_after, kHeartbeat + 1.0) << "dropped within the heartbeat (a beat was due at the join)";
    std::printf("[ measure ] a node silent since its join was dropped %.2f s after the stream began (heartbeat %.1f s)\n", dropped_after,
                kHeartbeat);
    EXPECT_EQ(ing.ingress->nodes(), 1u);
    EXPECT_EQ(ing.status()["lost"]["silent"], 1);
  }
  (*hung)->stop();
}

// A node with the wrong secret is refused (and told so); one joining mid-load gets traffic.
TEST(ClusterServing, AWrongSecretIsRefusedAndANodeJoiningMidLoadGetsTraffic) {
  IngressUnderTest ing("cluster-join.db");
  ExecutorUnderTest a("node-a", ing.cluster_port);
  ing.wait_serving();
  ASSERT_TRUE(ing.nodes_become(1));
  ExecutorUnderTest intruder("node-x", ing.cluster_port, "not-the-secret");
  EXPECT_FALSE(intruder.member->wait_joined(10));
  EXPECT_EQ(intruder.member->state(), cluster::ClusterMember::State::Refused);
  EXPECT_EQ(intruder.member->refusal(), "wrong cluster secret");
  EXPECT_EQ(ing.ingress->nodes(), 1u);
  EXPECT_EQ(ing.status()["refused"], 1);
  // Load, then a second node joins while it runs.
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> load;
  for (int t = 0; t < 2; ++t)
    load.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) (chat(ing.port, "load " + std::to_string(t) + " " + std::to_string(i)).status == 200 ? ok : failed)++;
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ExecutorUnderTest late("node-late", ing.cluster_port);
  ASSERT_TRUE(late.member->wait_joined(10));
  ASSERT_TRUE(ing.nodes_become(2));
  for (int i = 0; i < 300 && late.metric("tutti_requests_finished_total{class=\"interactive\"}") < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  stop = true;
  for (auto& t : load) t.join();
  EXPECT_GE(late.metric("tutti_requests_finished_total{class=\"interactive\"}"), 3) << "the late node gets its share";
  EXPECT_EQ(failed, 0);
  EXPECT_GT(ok, 0);
}

// Credit crosses nodes (a client that stops reading holds its sequence on the node), and so
// does cancellation (a Realtime response.cancel ends the node's sequence).
TEST(ClusterServing, CreditAndCancelCrossNodes) {
  IngressUnderTest ing("cluster-credit.db", 0, kHeartbeat, [](http::ServerConfig& sc) {
    sc.send_buffer_bytes = 4096;
    sc.max_tokens = 4000;
  });
  ExecutorUnderTest a("node-a", ing.cluster_port, kSecret, [](Serving::Options& o) { o.pipeline.scheduler.client_window = 8; });
  ing.wait_serving();
  ASSERT_TRUE(ing.nodes_become(1));
  {
    // A client that stops reading: once the socket buffers and the window are full, the node
    // holds the sequence for a client on the far side of the ingress.
    namespace net = boost::asio;
    net::io_context ioc;
    net::ip::tcp::socket slow(ioc);
    slow.open(net::ip::tcp::v4());
    slow.set_option(net::socket_base::receive_buffer_size(4096));
    slow.connect(net::ip::tcp::endpoint(net::ip::make_address("127.0.0.1"), ing.port));
    const std::string body = json{{"messages", {{{"role", "user"}, {"content", "a long answer"}}}}, {"max_tokens", 3000}, {"stream", true},
                                  {"stream_options", {{"include_usage", true}}}, {"tutti", {{"ignore_eos", true}}}}
                                 .dump();
    net::write(slow, net::buffer("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                                 std::to_string(body.size()) + "\r\n\r\n" + body));
    bool held = false;
    for (int i = 0; i < 500 && !held; ++i) {
      held = a.metric("tutti_sequences_held_for_client") >= 1;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_TRUE(held) << "the node waits for a client behind the ingress";
    double generated = a.metric("tutti_generated_tokens_total{class=\"interactive\"}");
    for (int i = 0; i < 50; ++i) {  // writes in flight may still return credit: until it stands still
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      const double now = a.metric("tutti_generated_tokens_total{class=\"interactive\"}");
      if (now == generated) break;
      generated = now;
    }
    EXPECT_LT(generated, 3000) << "the whole answer was generated into buffers";
    std::string got;
    char buf[65536];
    boost::beast::error_code ec;
    while (got.find("data: [DONE]") == std::string::npos) {
      const size_t n = slow.read_some(net::buffer(buf), ec);
      if (ec) break;
      got.append(buf, n);
    }
    EXPECT_NE(got.find("\"completion_tokens\":3000"), std::string::npos) << "reading again, every token arrives";
  }
  test::RealtimeWs ws(ing.port);
  EXPECT_EQ(ws.refused, 0);
  ws.until("session.created");
  ws.send({{"type", "session.update"}, {"session", {{"type", "realtime"}, {"output_modalities", {"audio"}}, {"max_output_tokens", 4000}}}});
  ws.until("session.updated");
  ws.send({{"type", "conversation.item.create"},
           {"item", {{"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "talk for a long time"}}}}}}});
  ws.send({{"type", "response.create"}});
  for (json e = ws.next(); e["type"] != "response.output_audio.delta"; e = ws.next()) {
    ASSERT_NE(e["type"], "error") << e.dump();
    ASSERT_NE(e["type"], "response.done") << e.dump();
  }
  ws.send({{"type", "response.cancel"}});
  const json done = ws.until("response.done");
  EXPECT_EQ(done["response"]["status"], "cancelled");
  for (int i = 0; i < 250 && a.metric("tutti_running_sequences") > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(a.metric("tutti_running_sequences"), 0) << "the cancel reached the node";
}

// The ingress going away: its nodes cancel what they were streaming for it, and join a new
// ingress on the same address.
TEST(ClusterServing, NodesCancelALostIngresssStreamsAndJoinTheNextOne) {
  auto ing = std::make_unique<IngressUnderTest>("cluster-ingress-a.db");
  const uint16_t cluster_port = ing->cluster_port;
  ExecutorUnderTest a("node-a", cluster_port);
  ing->wait_serving();
  ASSERT_TRUE(ing->nodes_become(1));
  StreamingCall s(ing->port, "/v1/chat/completions",
                  {{"messages", {{{"role", "user"}, {"content", "go on"}}}}, {"max_tokens", 1000}, {"stream", true},
                   {"tutti", {{"ignore_eos", true}, {"class", "realtime"}, {"rate", 20}}}});
  ASSERT_TRUE(s.until("completion_tokens"));
  EXPECT_EQ(a.metric("tutti_running_sequences"), 1);
  ing.reset();  // the ingress stops (its connections close)
  for (int i = 0; i < 250 && a.metric("tutti_running_sequences") > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(a.metric("tutti_running_sequences"), 0) << "nothing runs for an ingress that is gone";
  IngressUnderTest next("cluster-ingress-b.db", cluster_port);
  next.wait_serving();
  ASSERT_TRUE(next.nodes_become(1));
  EXPECT_TRUE(a.member->wait_joined(10));
  EXPECT_EQ(chat(next.port, "hello again").status, 200);
}

// With certificates configured, nodes talk TLS (caf::openssl, peers verified against the CA):
// the cluster works as before, and a node without them cannot join.
TEST(ClusterServing, NodesTalkTlsWhenCertificatesAreConfigured) {
  const cluster::NodeTls tls = node_tls();
  ASSERT_TRUE(tls.enabled());
  IngressUnderTest ing("cluster-tls.db", 0, kHeartbeat, {}, tls);
  ExecutorUnderTest a("node-tls", ing.cluster_port, kSecret, {}, tls);
  ing.wait_serving();
  ASSERT_TRUE(ing.nodes_become(1));
  const test::Reply r = chat(ing.port, "over tls");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.node, "node-tls");
  StreamingCall s(ing.port, "/v1/audio/speech", {{"input", "hello there"}, {"voice", "alloy"}, {"response_format", "wav"}});
  EXPECT_TRUE(s.until("X-Tutti-Usage"));
  // Last: Debian's CAF 0.17.6 lets a failed handshake disturb the ingress's other TLS
  // connections for a moment (docs/scaling.md).
  ExecutorUnderTest plain("node-plain", ing.cluster_port);
  EXPECT_FALSE(plain.member->wait_joined(2)) << "no certificate, no cluster";
}

}  // namespace
}  // namespace tutti
