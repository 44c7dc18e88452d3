#include "actors/cluster/membership.hpp"

#include <cstdio>

namespace tutti::cluster {

namespace {

// Constant time in the secret's length: a node cannot learn it byte by byte from timing.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0 && !b.empty();
}

}  // namespace

bool Membership::accepts(const std::string& secret, const std::string& node) {
  if (same_secret(secret, secret_)) return true;
  refused_++;
  std::fprintf(stderr, "tutti: cluster: node %s refused: wrong cluster secret\n", node.c_str());
  return false;
}

Membership::Join Membership::join(const std::string& secret, const NodeLoad& load, double now) {
  if (!accepts(secret, load.node)) return Join::WrongSecret;
  const bool again = member(load.node);
  last_beat_[load.node] = now;
  routing_.update(load);
  return again ? Join::Rejoined : Join::Accepted;
}

bool Membership::beat(const NodeLoad& load, double now) {
  auto it = last_beat_.find(load.node);
  if (it == last_beat_.end()) return false;
  it->second = now;
  routing_.update(load);
  return true;
}

void Membership::leave(const std::string& node) {
  last_beat_.erase(node);
  routing_.remove(node);
}

std::vector<std::string> Membership::expire(double now) {
  std::vector<std::string> gone;
  for (auto it = last_beat_.begin(); it != last_beat_.end();) {
    if (now - it->second > timeout_s_) {
      gone.push_back(it->first);
      routing_.remove(it->first);
      it = last_beat_.erase(it);
    } else {
      ++it;
    }
  }
  return gone;
}

}  // namespace tutti::cluster
