// The client side of cluster_netns_test.sh: run by it inside the ingress's network
// namespace, against an ingress and executor nodes that are separate `tutti serve` processes,
// each in its own namespace, joined over veth links. The script makes the namespaces and
// starts the processes; it runs each test here in order (--gtest_filter), and says where
// everything is through the environment:
//   TUTTI_INGRESS      HOST:PORT of the ingress's HTTP
//   TUTTI_NODES        name=HOST:PORT:PID,... for each running executor node (its own HTTP)
//   TUTTI_LEDGER       the ingress's usage ledger
//   TUTTI_LATE_NODE    name=HOST:PORT and TUTTI_LATE_CMD: a node to start mid-load
//   TUTTI_HEARTBEAT    the [cluster] heartbeat, seconds
// Without them (run by hand) every test is skipped.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "http_client.h"
#include "server_support.h"
#include "voice_client.h"

namespace tutti {
namespace {

using json = nlohmann::json;
namespace bhttp = boost::beast::http;

struct Endpoint {
  std::string host;
  uint16_t port = 0;
  int pid = 0;
};

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

Endpoint parse_endpoint(const std::string& s) {  // HOST:PORT[:PID]
  Endpoint e;
  const size_t a = s.find(':');
  e.host = s.substr(0, a);
  const size_t b = s.find(':', a + 1);
  e.port = uint16_t(std::stoi(s.substr(a + 1, b == std::string::npos ? std::string::npos : b - a - 1)));
  if (b != std::string::npos) e.pid = std::stoi(s.substr(b + 1));
  return e;
}

std::map<std::string, Endpoint> nodes() {
  std::map<std::string, Endpoint> out;
  std::string all = env("TUTTI_NODES");
  size_t at = 0;
  while (at < all.size()) {
    size_t end = all.find(',', at);
    if (end == std::string::npos) end = all.size();
    const std::string item = all.substr(at, end - at);
    const size_t eq = item.find('=');
    out[item.substr(0, eq)] = parse_endpoint(item.substr(eq + 1));
    at = end + 1;
  }
  return out;
}

#define NEEDS_CLUSTER()                                                                    \
  if (env("TUTTI_INGRESS").empty()) GTEST_SKIP() << "run by cluster_netns_test.sh, which makes the cluster"

Endpoint ingress() { return parse_endpoint(env("TUTTI_INGRESS")); }

test::Reply post(const std::string& target, const json& body) {
  const Endpoint in = ingress();
  return test::http_call_at(in.host, in.port, bhttp::verb::post, target, body.dump());
}
json cluster_status() {
  const Endpoint in = ingress();
  return json::parse(test::http_call_at(in.host, in.port, bhttp::verb::get, "/v1/admin/cluster").body);
}
size_t members() { return cluster_status()["nodes"].size(); }
bool members_become(size_t n, double seconds) {
  for (int i = 0; i < int(seconds * 20); ++i) {
    if (members() == n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}
double node_metric(const Endpoint& e, const std::string& name) { return test::metric_at(e.host, e.port, name); }

// A streamed request to the ingress, read as it arrives.
struct Stream : test::StreamingCall {
  Stream(const std::string& target, const json& body) : StreamingCall(ingress().host, ingress().port, target, body) {}
};

json chat_body(const std::string& content, int max_tokens, bool stream = false) {
  json b = {{"messages", {{{"role", "user"}, {"content", content}}}}, {"max_tokens", max_tokens}};
  if (stream) b["stream"] = true;
  return b;
}

std::unique_ptr<test::RealtimeWs> voice_session() {
  const Endpoint in = ingress();
  auto ws = std::make_unique<test::RealtimeWs>(in.port, "", "", std::vector<std::pair<std::string, std::string>>{}, in.host);
  test::start_voice_session(*ws, 30);
  return ws;
}
using test::voice_turn;
std::string node_of(const json& done) { return done["response"]["tutti"].value("node", ""); }

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Chat, streamed chat, speech and a Realtime voice turn through the ingress reach each of the
// two executors (over their veth links); a session's turns stay on its node; a prefix shared
// by two requests hits the cache on the node that has it.
TEST(Netns, EveryKindReachesEachExecutorWithAffinityAndStickiness) {
  NEEDS_CLUSTER();
  const auto all = nodes();
  ASSERT_EQ(all.size(), 2u);
  ASSERT_TRUE(members_become(2, 30));
  std::set<std::string> chat_nodes, stream_nodes, speech_nodes, voice_nodes;
  for (int i = 0; i < 60 && chat_nodes.size() < 2; ++i) {
    const test::Reply r = post("/v1/chat/completions", chat_body("question " + std::to_string(i) + std::string(40, char('a' + i % 26)), 4));
    ASSERT_EQ(r.status, 200) << r.body;
    chat_nodes.insert(r.node);
  }
  for (int i = 0; i < 60 && stream_nodes.size() < 2; ++i) {
    Stream s("/v1/chat/completions", chat_body("streamed " + std::to_string(i) + std::string(40, char('a' + i % 26)), 3, true));
    ASSERT_TRUE(s.until("data: [DONE]"));
    EXPECT_EQ(s.received.find("\"error\""), std::string::npos) << s.received;
    stream_nodes.insert(s.node());
  }
  for (int i = 0; i < 30 && speech_nodes.size() < 2; ++i) {
    Stream s("/v1/audio/speech", {{"input", "hello there"}, {"voice", "alloy"}, {"response_format", "wav"}});
    ASSERT_TRUE(s.until("X-Tutti-Usage"));
    speech_nodes.insert(s.node());
  }
  std::vector<std::unique_ptr<test::RealtimeWs>> sessions;
  for (int i = 0; i < 8 && voice_nodes.size() < 2; ++i) {
    sessions.push_back(voice_session());
    const json first = voice_turn(*sessions.back());
    ASSERT_EQ(first["response"]["status"], "completed") << first.dump();
    EXPECT_EQ(node_of(voice_turn(*sessions.back())), node_of(first)) << "the session stays on its node";
    voice_nodes.insert(node_of(first));
  }
  const std::set<std::string> both{all.begin()->first, std::next(all.begin())->first};
  EXPECT_EQ(chat_nodes, both);
  EXPECT_EQ(stream_nodes, both);
  EXPECT_EQ(speech_nodes, both);
  EXPECT_EQ(voice_nodes, both);
  sessions.clear();

  // Prefix affinity: the second request with the same long prefix lands on the same node,
  // whose prefix cache then hits.
  const std::string system = "You are the assistant of a large company. " + std::string(600, 'x') + " Answer briefly.";
  auto ask = [&](const std::string& q) {
    return post("/v1/chat/completions", {{"messages", {{{"role", "system"}, {"content", system}}, {{"role", "user"}, {"content", q}}}}, {"max_tokens", 2}});
  };
  const test::Reply first = ask("what time is it?");
  ASSERT_EQ(first.status, 200);
  ASSERT_TRUE(all.count(first.node)) << first.node;
  const double hits = node_metric(all.at(first.node), "tutti_prefix_cache_hit_tokens_total");
  const test::Reply second = ask("and what day?");
  EXPECT_EQ(second.node, first.node);
  EXPECT_GE(node_metric(all.at(first.node), "tutti_prefix_cache_hit_tokens_total") - hits, 100);
}

// An executor that hangs (SIGSTOP: its connection stays open, its beats stop) is dropped
// within the heartbeat: its stream ends with executor_lost. Resumed (SIGCONT), it joins
// again and gets requests.
TEST(Netns, AHungExecutorIsDroppedAndRejoinsWhenItResumes) {
  NEEDS_CLUSTER();
  const auto all = nodes();
  const double heartbeat = std::stod(env("TUTTI_HEARTBEAT"));
  ASSERT_TRUE(members_become(2, 30));
  std::unique_ptr<Stream> stream;
  for (int i = 0; i < 40 && !stream; ++i) {
    auto s = std::make_unique<Stream>("/v1/chat/completions",
                                      json{{"messages", {{{"role", "user"}, {"content", "hang " + std::to_string(i)}}}}, {"max_tokens", 1000}, {"stream", true},
                                           {"tutti", {{"ignore_eos", true}, {"class", "realtime"}, {"rate", 20}}}});
    ASSERT_TRUE(s->until("completion_tokens"));
    if (s->node() == std::next(all.begin())->first) stream = std::move(s);
  }
  ASSERT_TRUE(stream);
  const Endpoint victim = std::next(all.begin())->second;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(victim.pid, SIGSTOP), 0);
  EXPECT_TRUE(stream->until("data: [DONE]"));
  const double dropped = seconds_since(t0);
  EXPECT_NE(stream->received.find("executor_lost"), std::string::npos);
  EXPECT_LE(dropped, heartbeat + 1.5) << "dropped within the heartbeat";
  std::printf("[ measure ] hung executor (SIGSTOP) dropped after %.2f s (heartbeat %.1f s)\n", dropped, heartbeat);
  EXPECT_TRUE(members_become(1, 5));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(post("/v1/chat/completions", chat_body("meanwhile " + std::to_string(i), 3)).status, 200);
  ASSERT_EQ(kill(victim.pid, SIGCONT), 0);
  ASSERT_TRUE(members_become(2, 15)) << "resumed, it joins again";
  std::set<std::string> seen;
  for (int i = 0; i < 60 && seen.size() < 2; ++i)
    seen.insert(post("/v1/chat/completions", chat_body("after " + std::to_string(i) + std::string(30, char('a' + i % 26)), 2)).node);
  EXPECT_EQ(seen.size(), 2u) << "and gets requests again";
}

// kill -9 of an executor under a small load: each of its in-flight requests ends with
// executor_lost (503 whole, an error event in a stream), a voice session there moves on its
// next turn, new requests go to the survivor, and every request has its ledger row.
TEST(Netns, KillNineUnderLoadLosesNothingFromTheLedger) {
  NEEDS_CLUSTER();
  const auto all = nodes();
  ASSERT_TRUE(members_become(2, 30));
  const std::string victim_name = all.begin()->first, survivor = std::next(all.begin())->first;
  const Endpoint victim = all.begin()->second;
  const size_t rows_before = test::ledger_rows(env("TUTTI_LEDGER")).size();
  // The hang before may have been noticed as a dropped connection too (BASP's own heartbeat).
  const int lost_connections_before = cluster_status()["lost"]["connection"].get<int>();
  // A voice session on the victim.
  std::unique_ptr<test::RealtimeWs> ws;
  int voice_turns = 0;
  for (int i = 0; i < 10; ++i) {
    ws = voice_session();
    ++voice_turns;
    if (node_of(voice_turn(*ws)) == victim_name) break;
    ws.reset();
  }
  ASSERT_TRUE(ws);
  std::atomic<bool> stop{false}, killed{false};
  std::atomic<int> sent{0}, ok{0}, lost{0}, other{0}, after_kill_failed{0};
  std::mutex mu;
  std::vector<std::string> odd;
  std::chrono::steady_clock::time_point kill_at;
  std::atomic<double> first_lost_s{-1};
  auto record_lost = [&] {
    double none = -1;
    first_lost_s.compare_exchange_strong(none, seconds_since(kill_at));
    lost++;
  };
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t)
    load.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) {
        const bool started_after = killed;
        sent++;
        if (t % 2 == 0) {  // streamed, paced: in flight for a few seconds
          Stream s("/v1/chat/completions", json{{"messages", {{{"role", "user"}, {"content", "load " + std::to_string(t) + "." + std::to_string(i)}}}},
                                                {"max_tokens", 60}, {"stream", true}, {"tutti", {{"ignore_eos", true}, {"class", "realtime"}, {"rate", 40}}}});
          const bool done = s.until("data: [DONE]");
          if (done && s.received.find("executor_lost") != std::string::npos) record_lost();
          else if (done && s.received.find("\"error\"") == std::string::npos) ok++;
          else {
            other++;
            std::lock_guard l(mu);
            odd.push_back(s.received.substr(0, 300));
          }
          if (started_after && s.received.find("\"error\"") != std::string::npos) after_kill_failed++;
        } else {
          const test::Reply r = post("/v1/chat/completions", chat_body("whole " + std::to_string(t) + "." + std::to_string(i), 40));
          if (r.status == 200) ok++;
          else if (r.status == 503 && r.body.find("\"code\":\"executor_lost\"") != std::string::npos) record_lost();
          else {
            other++;
            std::lock_guard l(mu);
            odd.push_back(std::to_string(r.status) + " " + r.body);
          }
          if (started_after && r.status != 200) after_kill_failed++;
        }
      }
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  // And one long stream known to run on the victim when it dies (the load's may all be
  // between answers there at that moment).
  std::unique_ptr<Stream> on_victim;
  for (int i = 0; i < 40 && !on_victim; ++i) {
    auto s = std::make_unique<Stream>("/v1/chat/completions",
                                      json{{"messages", {{{"role", "user"}, {"content", "victim " + std::to_string(i)}}}}, {"max_tokens", 1000},
                                           {"stream", true}, {"tutti", {{"ignore_eos", true}, {"class", "realtime"}, {"rate", 20}}}});
    sent++;
    ASSERT_TRUE(s->until("completion_tokens"));
    if (s->node() == victim_name) on_victim = std::move(s);  // else closed at once: cancelled, and recorded so
  }
  ASSERT_TRUE(on_victim);
  kill_at = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(victim.pid, SIGKILL), 0);
  EXPECT_TRUE(on_victim->until("data: [DONE]"));
  EXPECT_NE(on_victim->received.find("executor_lost"), std::string::npos) << "the stream on the victim ends with executor_lost";
  if (on_victim->received.find("executor_lost") != std::string::npos) record_lost();
  // Requests sent from here on were routed after the node was dropped, or raced its drop:
  // give the drop a moment before counting requests as "after".
  ASSERT_TRUE(members_become(1, 5));
  const double dropped_s = seconds_since(kill_at);
  killed = true;
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  stop = true;
  for (auto& t : load) t.join();
  std::printf("[ measure ] kill -9: node dropped after %.3f s, first executor_lost after %.3f s; requests %d: ok %d, executor_lost %d, other %d\n",
              dropped_s, first_lost_s.load(), sent.load(), ok.load(), lost.load(), other.load());
  EXPECT_GE(lost, 1) << "something was in flight on the victim";
  EXPECT_EQ(other, 0) << (odd.empty() ? "" : odd.front());
  EXPECT_EQ(after_kill_failed, 0) << "new requests go to the survivor";
  // The session that was on the victim: its next turn runs on the survivor.
  const json next = voice_turn(*ws);
  EXPECT_EQ(next["response"]["status"], "completed") << next.dump();
  EXPECT_EQ(node_of(next), survivor);
  ws.reset();
  // Every request has its record: the load, the voice turns (one response each).
  const size_t expected = rows_before + size_t(sent) + size_t(voice_turns) + 1;
  const auto rows = test::ledger_rows_when(env("TUTTI_LEDGER"), expected);
  EXPECT_EQ(rows.size(), expected) << "nothing is lost from the ledger";
  int failed_on_victim = 0;
  for (size_t i = rows_before; i < rows.size(); ++i)
    if (rows[i].outcome == "failed") {
      EXPECT_EQ(rows[i].node, victim_name);
      ++failed_on_victim;
    }
  EXPECT_EQ(failed_on_victim, lost.load());
  EXPECT_EQ(cluster_status()["lost"]["connection"].get<int>(), lost_connections_before + 1);
}

// A node that joins while load runs gets its share of it.
TEST(Netns, ANodeJoiningMidLoadGetsTraffic) {
  NEEDS_CLUSTER();
  const std::string late = env("TUTTI_LATE_NODE");
  const Endpoint late_http = parse_endpoint(late.substr(late.find('=') + 1));
  const size_t before = members();
  std::atomic<bool> stop{false};
  std::atomic<int> failed{0};
  std::vector<std::thread> load;
  for (int t = 0; t < 2; ++t)
    load.emplace_back([&, t] {
      for (int i = 0; !stop; ++i)
        if (post("/v1/chat/completions", chat_body("mid-load " + std::to_string(t) + "." + std::to_string(i) + std::string(20, char('a' + i % 26)), 3)).status != 200)
          failed++;
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ASSERT_EQ(std::system(env("TUTTI_LATE_CMD").c_str()), 0);
  EXPECT_TRUE(members_become(before + 1, 30));
  double served = 0;
  for (int i = 0; i < 200 && served < 3; ++i) {
    served = node_metric(late_http, "tutti_requests_finished_total{class=\"interactive\"}");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  stop = true;
  for (auto& t : load) t.join();
  EXPECT_GE(served, 3) << "the node that joined mid-load gets traffic";
  EXPECT_EQ(failed, 0);
}

}  // namespace
}  // namespace tutti
