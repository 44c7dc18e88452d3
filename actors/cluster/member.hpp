// An executor node's membership in a cluster (docs/scaling.md): a loop on its own thread that
// reaches the ingress, joins with the cluster secret and the node's models (their encoder and
// executor handles, and each model's front), beats with the node's load, announces its models
// again after a reload here, and when the ingress is gone waits to join again (what the
// ingress was streaming is cancelled by the decoder, whose sinks were the ingress's).
// leave() is SIGTERM's: draining first (the ingress sends nothing new), then gone.
//
// Threads: start() spawns the loop; leave(), state() and the destructor are for the thread
// that owns the member (tutti serve's main thread, a test). It reads the local registry's
// instances, which it never changes.
#pragma once

#include <caf/all.hpp>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "actors/actors.hpp"
#include "actors/http/models.hpp"

namespace tutti::cluster {

struct MemberConfig {
  std::string ingress_host;
  uint16_t ingress_port = 0;
  std::string secret;
  std::string name;      // the node's name in the cluster (metrics, x-tutti-node, the ledger)
  std::string http_url;  // where this node serves its own /metrics (for people)
  bool tls = false;      // reach the ingress through caf::openssl (certificates in the actor system's config)
  double retry_s = 1;    // between attempts to reach the ingress
  double request_timeout_s = 10;  // a join or a beat unanswered this long: the ingress is taken as unreachable
};

class ClusterMember {
 public:
  ClusterMember(caf::actor_system& system, std::shared_ptr<http::ModelRegistry> models, MemberConfig config);
  ~ClusterMember();  // stops the loop without leaving (as a crash would look to the ingress)
  ClusterMember(const ClusterMember&) = delete;
  ClusterMember& operator=(const ClusterMember&) = delete;

  void start();
  enum class State { Connecting, Joined, Refused, Stopped };
  State state() const { return state_.load(); }
  std::string refusal() const;  // why the ingress refused this node
  // Waits until the node is a member (true), was refused or `seconds` passed (false).
  bool wait_joined(double seconds) const;
  // SIGTERM: says the node is draining, waits until it runs nothing (or `seconds` passed),
  // then leaves and stops the loop. Returns whether it ran dry in time.
  bool leave(double seconds);
  // The node's load now, as its beats say it (every model's sequences and KV blocks).
  NodeLoad load() const;

 private:
  void run();
  actors::node_hello hello(caf::actor agent) const;
  std::string versions() const;  // the local instances announced (a reload changes it)

  caf::actor_system& system_;
  std::shared_ptr<http::ModelRegistry> models_;
  MemberConfig config_;
  std::thread thread_;
  std::atomic<State> state_{State::Connecting};
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  mutable std::condition_variable changed_;
  std::string refusal_;
  caf::actor agent_;  // the loop's actor: told to leave or stop
  // Step-time figures at the last beat, per model: a beat reports the mean since then.
  mutable std::mutex step_mu_;
  mutable std::map<std::string, std::pair<double, uint64_t>> step_seen_;
  // Handles announced to the ingress: put in this node's actor registry when they were sent,
  // erased again when the member stops (a detached executor left there would hold shutdown).
  // A set: joining again announces the same actors (a reload adds new ones).
  std::set<caf::actor_id> announced_;
};

}  // namespace tutti::cluster
