// The ingress's routing policy over a fake cluster: nodes are heartbeats the test writes.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "actors/cluster/membership.hpp"
#include "actors/cluster/routing.hpp"

namespace tutti::cluster {
namespace {

NodeLoad node(const std::string& name, int running = 0, std::vector<std::string> models = {"m"}) {
  NodeLoad n;
  n.node = name, n.models = std::move(models), n.running = running;
  n.free_kv_blocks = n.total_kv_blocks = 1000;
  n.step_seconds = 0.01;
  return n;
}

std::string prompt(int i) { return "system: you are helpful.\nuser " + std::to_string(i) + ": " + std::string(300, 'x'); }

TEST(ClusterRouting, TheSamePrefixGoesToTheSameNodeAndPrefixesSpread) {
  RoutingPolicy p;
  for (const char* n : {"a", "b", "c"}) p.update(node(n));
  std::map<std::string, int> per_node;
  for (int i = 0; i < 60; ++i) {
    const auto first = p.route_text("m", prompt(i));
    ASSERT_TRUE(first);
    for (const char* n : {"a", "b", "c"}) p.update(node(n));  // heartbeats: the cluster is idle again
    EXPECT_EQ(p.route_text("m", prompt(i) + " and then a different ending"), first) << "a shared prefix, the same node";
    for (const char* n : {"a", "b", "c"}) p.update(node(n));
    per_node[*first]++;
  }
  ASSERT_EQ(per_node.size(), 3u) << "prefixes spread over every node";
  for (auto& [n, count] : per_node) EXPECT_GT(count, 8) << n;
  EXPECT_EQ(p.counters().imbalance_overrides, 0u);
}

TEST(ClusterRouting, AnOverloadedOwnerYieldsToTheLeastLoaded) {
  RoutingPolicy p;
  p.update(node("a"));
  p.update(node("b"));
  const std::string owner = *p.route_text("m", prompt(1));
  const std::string other = owner == "a" ? "b" : "a";
  p.update(node(owner, 40));  // the owner is busy
  p.update(node(other, 2));
  EXPECT_EQ(p.route_text("m", prompt(1)), other);
  EXPECT_EQ(p.counters().imbalance_overrides, 1u);
  p.update(node(owner, 3));  // within the bound: affinity again
  p.update(node(other, 2));
  EXPECT_EQ(p.route_text("m", prompt(1)), owner);
}

TEST(ClusterRouting, OnlyHealthyNodesThatServeTheModel) {
  RoutingPolicy p;
  p.update(node("a", 0, {"m"}));
  p.update(node("b", 0, {"other"}));
  NodeLoad sick = node("c");
  sick.healthy = false;
  p.update(sick);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(p.route_text("m", prompt(i)), "a");
  EXPECT_EQ(p.route_least_loaded("other"), "b");
  EXPECT_FALSE(p.route_text("nobody", "x"));
  EXPECT_FALSE(p.route_session("nobody", "s"));
  EXPECT_EQ(p.counters().no_node, 2u);
}

TEST(ClusterRouting, SessionsStayWhereTheyStartedAndMoveOnlyWhenTheirNodeGoes) {
  RoutingPolicy p;
  p.update(node("a", 1));
  p.update(node("b", 0));
  const auto first = p.route_session("m", "s1");
  EXPECT_EQ(first, "b") << "placed by load";
  p.update(node("a", 0));
  p.update(node("b", 50));  // busy now, but the session stays
  EXPECT_EQ(p.route_session("m", "s1"), "b");
  const auto second = p.route_session("m", "s2");
  EXPECT_EQ(second, "a");
  p.remove("b");  // dies
  EXPECT_EQ(p.route_session("m", "s1"), "a") << "placed anew";
  EXPECT_EQ(p.counters().sessions_moved, 1u);
  p.update(node("b", 0));  // rejoins: s1 stays where it is now
  EXPECT_EQ(p.route_session("m", "s1"), "a");
  p.end_session("s1");
}

TEST(ClusterRouting, ABurstBetweenHeartbeatsSpreads) {
  RoutingPolicy p;
  for (const char* n : {"a", "b", "c", "d"}) p.update(node(n));
  std::set<std::string> used;
  for (int i = 0; i < 8; ++i) used.insert(*p.route_session("m", "s" + std::to_string(i)));
  EXPECT_EQ(used.size(), 4u) << "what was sent counts until the next heartbeat";
  // A node joining moves only its share of prefixes (rendezvous hashing).
  RoutingPolicy q;
  for (const char* n : {"a", "b", "c"}) q.update(node(n));
  std::map<int, std::string> before;
  for (int i = 0; i < 90; ++i) {
    before[i] = *q.route_text("m", prompt(i));
    for (const char* n : {"a", "b", "c"}) q.update(node(n));
  }
  q.update(node("d"));
  int moved = 0;
  for (int i = 0; i < 90; ++i) {
    const std::string now = *q.route_text("m", prompt(i));
    for (const char* n : {"a", "b", "c", "d"}) q.update(node(n));
    if (now != before[i]) {
      EXPECT_EQ(now, "d") << "a prefix moves only to the new node";
      moved++;
    }
  }
  EXPECT_GT(moved, 8);
  EXPECT_LT(moved, 45);
}

// Joining takes the cluster secret; a node that stops beating (dead or hung) is dropped
// within the heartbeat timeout and routing stops choosing it; one that comes back rejoins.
TEST(ClusterMembership, SecretHeartbeatsAndExpiry) {
  RoutingPolicy routing;
  Membership m("s3cret-cluster", 3.0, routing);
  EXPECT_EQ(m.join("wrong", node("x"), 0), Membership::Join::WrongSecret);
  EXPECT_EQ(m.join("", node("x"), 0), Membership::Join::WrongSecret);
  EXPECT_EQ(m.join("s3cret-cluste", node("x"), 0), Membership::Join::WrongSecret) << "a prefix is not the secret";
  EXPECT_EQ(m.refused(), 3u);
  EXPECT_EQ(routing.nodes(), 0u) << "a refused node never reaches routing";
  EXPECT_EQ(m.join("s3cret-cluster", node("a"), 0), Membership::Join::Accepted);
  EXPECT_EQ(m.join("s3cret-cluster", node("b"), 0), Membership::Join::Accepted);
  EXPECT_FALSE(m.beat(node("x"), 1)) << "not a member: join first";
  EXPECT_TRUE(m.beat(node("a"), 2.5));
  EXPECT_TRUE(m.expire(2.9).empty());
  EXPECT_EQ(m.expire(3.5), std::vector<std::string>{"b"}) << "b's last beat was at 0";
  for (int i = 0; i < 10; ++i) EXPECT_EQ(routing.route_text("m", prompt(i)), "a");
  EXPECT_EQ(m.join("s3cret-cluster", node("b"), 4), Membership::Join::Accepted) << "back after it was dropped";
  EXPECT_EQ(m.join("s3cret-cluster", node("b"), 4.5), Membership::Join::Rejoined);
  m.leave("a");
  EXPECT_FALSE(m.member("a"));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(routing.route_text("m", prompt(i)), "b");
}

TEST(ClusterRouting, LoadWeighsSlowStepsAndAFullKvPool) {
  NodeLoad fast = node("f", 4), slow = node("s", 4), full = node("k", 4);
  slow.step_seconds = 0.04;
  full.free_kv_blocks = 0;
  EXPECT_LT(RoutingPolicy::load_of(fast), RoutingPolicy::load_of(slow));
  EXPECT_LT(RoutingPolicy::load_of(fast), RoutingPolicy::load_of(full));
  EXPECT_DOUBLE_EQ(RoutingPolicy::load_of(node("z")), 0);
}

}  // namespace
}  // namespace tutti::cluster

// Every message type that crosses nodes, sent through CAF's middleman (BASP over TCP on
// loopback) to an actor in a second actor system and echoed back: each arrives whole. An
// unregistered type would arrive as an empty message and fail to match.
#include <caf/io/all.hpp>

#include "actors/cluster/message_types.hpp"

namespace tutti::cluster {
namespace {

struct Node {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  Node() {
    add_cluster_message_types(cfg);
    cfg.load<caf::io::middleman>();
    cfg.set("scheduler.max-threads", 1);
    sys = std::make_unique<caf::actor_system>(cfg);
  }
};

caf::behavior echo(caf::event_based_actor* self) {
  self->set_default_handler([](caf::scheduled_actor*, caf::message_view& x) -> caf::result<caf::message> {
    return x.move_content_to_message();
  });
  return {[](caf::exit_msg&) {}};
}

TEST(ClusterMessages, EveryCrossingTypeArrivesWhole) {
  Node a, b;
  auto server = a.sys->spawn(echo);
  auto port = a.sys->middleman().publish(server, 0, "127.0.0.1", true);
  ASSERT_TRUE(port) << a.sys->render(port.error());
  auto remote = b.sys->middleman().remote_actor("127.0.0.1", *port);
  ASSERT_TRUE(remote) << b.sys->render(remote.error());
  caf::scoped_actor self{*b.sys};
  auto round_trip = [&](auto value, auto check) {
    bool got = false;
    self->request(*remote, std::chrono::seconds(10), value)
        .receive([&](const decltype(value)& back) { got = true, check(back); }, [&](caf::error& e) { ADD_FAILURE() << b.sys->render(e); });
    EXPECT_TRUE(got);
  };

  actors::text_request r;
  r.id = 42, r.prompt = "hello \x1e" "0\x1f", r.max_tokens = 7, r.temperature = 0.5f, r.top_p = 0.9f, r.top_k = 3, r.seed = 99;
  r.request_class = RequestClass::Realtime, r.tokens_per_second = 200, r.modality = Modality::Audio;
  r.media_parts = {{1, 2, 3}, {4}}, r.prefill_only = true;
  round_trip(r, [&](const actors::text_request& x) {
    EXPECT_EQ(x.id, 42); EXPECT_EQ(x.prompt, r.prompt); EXPECT_EQ(x.max_tokens, 7); EXPECT_EQ(x.seed, 99u);
    EXPECT_EQ(x.request_class, RequestClass::Realtime); EXPECT_EQ(x.modality, Modality::Audio);
    EXPECT_EQ(x.media_parts, r.media_parts); EXPECT_TRUE(x.prefill_only); EXPECT_FLOAT_EQ(x.top_p, 0.9f);
  });
  actors::step_events ev;
  ev.request = {1, 2}, ev.token = {5, -1}, ev.finish = {FinishReason::None, FinishReason::Error};
  ev.code = {ErrorCode::none, ErrorCode::modality_unavailable}, ev.error = {"", "why"};
  round_trip(ev, [&](const actors::step_events& x) {
    EXPECT_EQ(x.request, ev.request); EXPECT_EQ(x.token, ev.token); EXPECT_EQ(x.finish, ev.finish);
    EXPECT_EQ(x.code, ev.code); EXPECT_EQ(x.error, ev.error);
  });
  actors::text_delta d;
  d.request = 3, d.text = "héllo", d.finish = FinishReason::Length, d.prompt_tokens = 11, d.completion_tokens = 4;
  round_trip(d, [&](const actors::text_delta& x) {
    EXPECT_EQ(x.text, d.text); EXPECT_EQ(x.finish, FinishReason::Length); EXPECT_EQ(x.prompt_tokens, 11); EXPECT_EQ(x.completion_tokens, 4);
  });
  actors::media_delta m;
  m.request = 4, m.samples = {0.5f, -0.25f}, m.rgb = {1, 2, 255}, m.width = 1, m.height = 1, m.token = 77;
  round_trip(m, [&](const actors::media_delta& x) {
    EXPECT_EQ(x.samples, m.samples); EXPECT_EQ(x.rgb, m.rgb); EXPECT_EQ(x.token, 77); EXPECT_EQ(x.width, 1);
  });
  actors::encode_result e{12, ErrorCode::context_length_exceeded, "too long"};
  round_trip(e, [&](const actors::encode_result& x) {
    EXPECT_EQ(x.prompt_tokens, 12); EXPECT_EQ(x.code, ErrorCode::context_length_exceeded); EXPECT_EQ(x.error, "too long");
  });
  round_trip(Modality::Video, [](Modality x) { EXPECT_EQ(x, Modality::Video); });
  // The cluster's own: a node's hello (with the handles of its actors), the ingress's reply,
  // a heartbeat's load, and a sink's handle (the encode request carries it).
  auto dummy = b.sys->spawn([](caf::event_based_actor*) -> caf::behavior { return {[](int32_t) {}}; });  // the sender's own
  actors::node_hello h;
  h.secret = "s", h.http_url = "http://10.0.0.2:8081";
  h.load.node = "ex1", h.load.models = {"m"}, h.load.running = 3, h.load.free_kv_blocks = 7, h.load.step_seconds = 0.02;
  h.load.degraded = {{"m", Modality::Audio, "nan"}};
  actors::node_model nm;
  nm.name = "m", nm.file = "m.gguf", nm.version = 2, nm.n_vocab = 300, nm.front = {1, 2, 3};
  nm.encoder = caf::actor_cast<actors::encoder_actor>(dummy), nm.executor = caf::actor_cast<actors::executor_actor>(dummy);
  h.models = {nm};
  h.agent = caf::actor_cast<caf::actor>(dummy);
  round_trip(h, [&](const actors::node_hello& x) {
    EXPECT_EQ(x.secret, "s"); EXPECT_EQ(x.http_url, h.http_url); EXPECT_EQ(x.load.node, "ex1"); EXPECT_EQ(x.load.running, 3);
    EXPECT_EQ(x.load.free_kv_blocks, 7); EXPECT_DOUBLE_EQ(x.load.step_seconds, 0.02);
    ASSERT_EQ(x.load.degraded.size(), 1u); EXPECT_EQ(x.load.degraded[0].modality, Modality::Audio); EXPECT_EQ(x.load.degraded[0].reason, "nan");
    ASSERT_EQ(x.models.size(), 1u); EXPECT_EQ(x.models[0].version, 2); EXPECT_EQ(x.models[0].front, nm.front);
    EXPECT_EQ(x.models[0].encoder.id(), dummy.id()) << "an actor handle crosses as the same actor";
    EXPECT_EQ(x.models[0].executor.node(), dummy.node());
    EXPECT_EQ(x.agent.id(), dummy.id());
  });
  round_trip(actors::join_reply{true, "", "tok", 0.5}, [](const actors::join_reply& x) {
    EXPECT_TRUE(x.accepted); EXPECT_EQ(x.token, "tok"); EXPECT_DOUBLE_EQ(x.beat_interval_s, 0.5);
  });
  round_trip(h.load, [](const NodeLoad& x) { EXPECT_EQ(x.models, std::vector<std::string>{"m"}); EXPECT_FALSE(x.draining); });
  round_trip(caf::actor_cast<actors::sink_actor>(dummy), [&](const actors::sink_actor& x) { EXPECT_EQ(x.id(), dummy.id()); });
  caf::anon_send_exit(dummy, caf::exit_reason::user_shutdown);
  round_trip(std::vector<int32_t>{9, 8, 7}, [](const std::vector<int32_t>& x) { EXPECT_EQ(x, (std::vector<int32_t>{9, 8, 7})); });
  caf::anon_send_exit(server, caf::exit_reason::user_shutdown);
}

}  // namespace
}  // namespace tutti::cluster
