#include "actors/cluster/node.hpp"

#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>

#include <fstream>

#include "actors/cluster/message_types.hpp"

namespace tutti::cluster {

void configure_cluster_node(caf::actor_system_config& cfg, double heartbeat_s, const NodeTls& tls) {
  add_cluster_message_types(cfg);
  cfg.load<caf::io::middleman>();
  const auto ms = [](double s) { return caf::timespan(std::chrono::milliseconds(std::max<int64_t>(10, int64_t(s * 1000)))); };
  cfg.set("middleman.heartbeat-interval", ms(heartbeat_s / 4));
  cfg.set("middleman.connection-timeout", ms(heartbeat_s));
  if (tls.enabled()) {
    cfg.openssl_certificate = tls.cert;
    cfg.openssl_key = tls.key;
    cfg.openssl_cafile = tls.ca;
    cfg.load<caf::openssl::manager>();
  }
}

Expected<std::string> read_cluster_secret(const std::string& path) {
  std::ifstream f(path);
  if (!f) return Error{"cannot read the cluster secret file " + path};
  std::string line;
  std::getline(f, line);
  const auto first = line.find_first_not_of(" \t\r\n");
  const auto last = line.find_last_not_of(" \t\r\n");
  if (first == std::string::npos) return Error{"the cluster secret file " + path + " is empty"};
  return line.substr(first, last - first + 1);
}

}  // namespace tutti::cluster
