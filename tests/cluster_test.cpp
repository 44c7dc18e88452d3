// The ingress's routing policy over a fake cluster: nodes are heartbeats the test writes.
#include <gtest/gtest.h>

#include <map>
#include <set>

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
