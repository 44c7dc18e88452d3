// Which executor nodes an ingress routes to, as a plain class over a clock the caller gives:
// a node joins with the cluster secret (compared in constant time; a wrong one is refused,
// logged and counted), then beats; one whose last beat is older than the heartbeat timeout
// is dropped (dead or hung alike), and a node that left cleanly is gone at once. Every change
// reaches the RoutingPolicy, so routing never picks a node that is not here. The Ingress
// (ingress.hpp) calls it on join, beat, leave, its expiry timer and lost connections.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "actors/cluster/routing.hpp"

namespace tutti::cluster {

class Membership {
 public:
  Membership(std::string secret, double heartbeat_timeout_s, RoutingPolicy& routing)
      : secret_(std::move(secret)), timeout_s_(heartbeat_timeout_s), routing_(routing) {}

  // Whether `secret` is the cluster's; a refusal of `node` is logged and counted.
  bool accepts(const std::string& secret, const std::string& node);
  enum class Join { Accepted, Rejoined, WrongSecret };
  // A node announcing itself with its models and capacity (its first load).
  Join join(const std::string& secret, const NodeLoad& load, double now);
  // A beat with its load now; false for a node that is not a member (it must join again).
  bool beat(const NodeLoad& load, double now);
  void leave(const std::string& node);
  // Drops every node whose last beat is older than the timeout; returns them (their
  // in-flight requests end with executor_lost, their sessions move on their next turn).
  std::vector<std::string> expire(double now);

  bool member(const std::string& node) const { return last_beat_.count(node) > 0; }
  size_t size() const { return last_beat_.size(); }
  uint64_t refused() const { return refused_; }

 private:
  std::string secret_;
  double timeout_s_;
  RoutingPolicy& routing_;
  std::map<std::string, double> last_beat_;
  uint64_t refused_ = 0;
};

}  // namespace tutti::cluster
