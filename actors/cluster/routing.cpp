#include "actors/cluster/routing.hpp"

#include <algorithm>

namespace tutti::cluster {

uint64_t stable_hash(std::string_view bytes, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  h ^= h >> 33, h *= 0xff51afd7ed558ccdull, h ^= h >> 33, h *= 0xc4ceb9fe1a85ec53ull, h ^= h >> 33;
  return h;
}

double RoutingPolicy::load_of(const NodeLoad& n) {
  // Sequences, each weighted by how long this node's steps take against a 10 ms step
  // (a node twice as slow is twice as loaded by the same work), plus KV pressure: a node
  // whose pool is full would preempt, so a full pool weighs as 8 more sequences.
  const double step_weight = n.step_seconds > 0 ? std::max(0.25, n.step_seconds / 0.010) : 1.0;
  const double kv_used = n.total_kv_blocks > 0 ? 1.0 - double(n.free_kv_blocks) / double(n.total_kv_blocks) : 0.0;
  return double(n.waiting + n.running) * step_weight + 8.0 * kv_used;
}

bool NodeLoad::serves(const std::string& model, Modality m) const {
  if (!healthy || draining || std::find(models.begin(), models.end(), model) == models.end()) return false;
  for (const DegradedModality& d : degraded)
    if (d.model == model && d.modality == m) return false;
  return true;
}

void RoutingPolicy::update(const NodeLoad& load) { nodes_[load.node] = load; }

void RoutingPolicy::remove(const std::string& node) { nodes_.erase(node); }

std::vector<const NodeLoad*> RoutingPolicy::eligible(const std::string& model, Modality m) const {
  std::vector<const NodeLoad*> out;
  for (const auto& [name, n] : nodes_)
    if (n.serves(model, m)) out.push_back(&n);
  return out;
}

const std::string& RoutingPolicy::sent_to(const NodeLoad* n) {
  NodeLoad& at = nodes_[n->node];
  at.waiting++;  // until the node's next heartbeat says
  return at.node;
}

const NodeLoad* RoutingPolicy::least_loaded(const std::vector<const NodeLoad*>& among) const {
  const NodeLoad* best = nullptr;
  for (const NodeLoad* n : among)
    if (!best || load_of(*n) < load_of(*best)) best = n;  // ties: the first by name (map order)
  return best;
}

std::optional<std::string> RoutingPolicy::route_text(const std::string& model, std::string_view prompt, Modality m) {
  const auto nodes = eligible(model, m);
  if (nodes.empty()) {
    counters_.no_node++;
    return std::nullopt;
  }
  // Rendezvous hashing: the node with the highest hash of (prefix, node) owns the prefix.
  const std::string_view prefix = prompt.substr(0, std::min(prompt.size(), config_.prefix_bytes));
  const uint64_t key = stable_hash(prefix, 0);
  const NodeLoad* owner = nullptr;
  uint64_t best = 0;
  for (const NodeLoad* n : nodes)
    if (const uint64_t h = stable_hash(n->node, key); !owner || h > best) owner = n, best = h;
  const NodeLoad* light = least_loaded(nodes);
  if (load_of(*owner) > config_.max_imbalance * load_of(*light) + config_.imbalance_slack) {
    counters_.imbalance_overrides++;
    return sent_to(light);
  }
  counters_.affinity++;
  return sent_to(owner);
}

std::optional<std::string> RoutingPolicy::route_least_loaded(const std::string& model, Modality m) {
  const NodeLoad* n = least_loaded(eligible(model, m));
  if (!n) {
    counters_.no_node++;
    return std::nullopt;
  }
  counters_.least_loaded++;
  return sent_to(n);
}

std::optional<std::string> RoutingPolicy::route_session(const std::string& model, const std::string& session, Modality m) {
  const auto nodes = eligible(model, m);
  if (auto it = sessions_.find(session); it != sessions_.end()) {
    for (const NodeLoad* n : nodes)
      if (n->node == it->second) {
        counters_.sticky++;
        return sent_to(n);
      }
    counters_.sessions_moved++;                   // its node is gone: placed anew below
    sessions_.erase(it);
  }
  const NodeLoad* n = least_loaded(nodes);
  if (!n) {
    counters_.no_node++;
    return std::nullopt;
  }
  counters_.sessions_placed++;
  sessions_[session] = n->node;
  return sent_to(n);
}

}  // namespace tutti::cluster
