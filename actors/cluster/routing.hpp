// Where an ingress sends a request among executor nodes, as a plain class: no actors, no
// sockets; tests drive it with a fake cluster, the ingress (ingress.hpp) with heartbeats.
//
//   by model:   only nodes that serve the request's model with the answer's modality healthy,
//               and are not draining, are eligible;
//   by load:    a node's load is its waiting and running sequences, weighted by its recent
//               step time, plus the share of its KV blocks in use;
//   affinity:   a text request goes to the node its prompt's prefix hashes to (rendezvous
//               hashing over the eligible nodes, so a node joining or leaving moves only its
//               share), so that node's prefix cache hits; unless that node's load exceeds
//               the least loaded one's by more than `max_imbalance` (then: the least loaded);
//   stickiness: a realtime session or stream job stays on the node it started on for its
//               whole life; if that node leaves, it is placed anew (its next turn is
//               prefilled there) and counted as moved.
// What it sends counts on its node until that node's next heartbeat replaces the figures, so
// a burst between heartbeats does not all land on one node.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pipeline/request_kinds.h"

namespace tutti::cluster {

// FNV-1a with a finalizer: the same on every node and build (std::hash is neither), so
// prefixes hash alike on every ingress and fronts compare across nodes.
uint64_t stable_hash(std::string_view bytes, uint64_t seed = 0);

// A modality of one of a node's models that its canaries found broken.
struct DegradedModality {
  std::string model;
  Modality modality = Modality::Text;
  std::string reason;
};

// What a node last said of itself (its join, then each heartbeat).
struct NodeLoad {
  std::string node;
  std::vector<std::string> models;
  int waiting = 0, running = 0;
  int64_t free_kv_blocks = 0, total_kv_blocks = 0;
  double step_seconds = 0;  // recent mean step time (0: none yet)
  bool healthy = true;
  bool draining = false;    // leaving: what runs there finishes, nothing new goes there
  std::vector<DegradedModality> degraded;
  bool serves(const std::string& model, Modality m) const;
};

struct RoutingConfig {
  size_t prefix_bytes = 256;   // the part of a prompt that decides its node (its first blocks)
  double max_imbalance = 2.0;  // affinity yields when the chosen load > this x the least + slack
  double imbalance_slack = 2;  // in load units (about sequences), so an idle cluster keeps affinity
};

class RoutingPolicy {
 public:
  explicit RoutingPolicy(RoutingConfig config = {}) : config_(config) {}

  void update(const NodeLoad& load);  // a heartbeat, or a node joining
  void remove(const std::string& node);  // left, died or stopped answering
  size_t nodes() const { return nodes_.size(); }

  // A text request of `model` whose formatted prompt starts with `prompt`; nullopt when no
  // healthy node serves the model.
  std::optional<std::string> route_text(const std::string& model, std::string_view prompt, Modality m = Modality::Text);
  // The least loaded eligible node (speech, images: no prefix to keep).
  std::optional<std::string> route_least_loaded(const std::string& model, Modality m = Modality::Text);
  // A session's node: where it is, while that node is eligible; else placed by load.
  std::optional<std::string> route_session(const std::string& model, const std::string& session, Modality m = Modality::Text);
  void end_session(const std::string& session) { sessions_.erase(session); }
  size_t sessions() const { return sessions_.size(); }
  // Whether any node could take `model` answering `m` now (a look-up: nothing is counted).
  bool any_eligible(const std::string& model, Modality m) const { return !eligible(model, m).empty(); }
  const NodeLoad* node(const std::string& name) const {
    auto it = nodes_.find(name);
    return it == nodes_.end() ? nullptr : &it->second;
  }

  // The load score routing compares (see the header comment).
  static double load_of(const NodeLoad& n);

  struct Counters {
    uint64_t affinity = 0, imbalance_overrides = 0, least_loaded = 0, sessions_placed = 0, sticky = 0, sessions_moved = 0, no_node = 0;
    uint64_t decisions() const { return affinity + imbalance_overrides + least_loaded + sessions_placed + sticky; }
  };
  const Counters& counters() const { return counters_; }

 private:
  std::vector<const NodeLoad*> eligible(const std::string& model, Modality m) const;
  const std::string& sent_to(const NodeLoad* n);  // counts it there until its next heartbeat
  const NodeLoad* least_loaded(const std::vector<const NodeLoad*>& among) const;
  RoutingConfig config_;
  std::map<std::string, NodeLoad> nodes_;
  std::map<std::string, std::string> sessions_;  // session -> node
  Counters counters_;
};

}  // namespace tutti::cluster
