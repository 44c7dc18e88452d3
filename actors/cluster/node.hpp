// What makes an actor system a cluster node (an ingress or an executor node): CAF's
// middleman (BASP over TCP), every message type that crosses nodes, BASP's own heartbeats
// (so a peer that stops answering closes its connection, whatever the application does), and
// TLS through caf::openssl when certificates are configured.
#pragma once

#include <caf/all.hpp>

#include <string>

#include "config/settings.h"

namespace tutti::cluster {

// TLS between nodes: this node's certificate and key, and the CA its peers' certificates must
// be signed by (caf::openssl then requires and verifies them). All three or none.
struct NodeTls {
  std::string cert, key, ca;
  bool enabled() const { return !cert.empty(); }
};

// Call before the actor system is made. `heartbeat_s`: the [cluster] heartbeat; BASP beats
// four times within it and gives a silent connection up after it.
void configure_cluster_node(caf::actor_system_config& cfg, double heartbeat_s, const NodeTls& tls);

// The cluster secret from a file (its first line; whitespace around it ignored). An Error
// names the file; an empty secret is refused.
Expected<std::string> read_cluster_secret(const std::string& path);

}  // namespace tutti::cluster
