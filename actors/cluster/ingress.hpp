// The ingress's side of a cluster (docs/scaling.md): the executor nodes that joined it, and
// where each request runs among them.
//
//   node --join(secret, models, load)--> ingress actor --> Ingress::join: Membership (secret),
//        a replica per model (a ModelInstance whose encoder and executor are the node's),
//        the model's front in the registry (the first node's model is the default)
//   node --beat(load)-->  Ingress::beat: RoutingPolicy's figures, the replicas' health
//   node lost (connection, silence, leave) --> its guard quits: its in-flight requests end
//        with executor_lost; its sessions move on their next turn
//   I/O thread: ModelRegistry::route --> Ingress::place: RoutingPolicy picks a node
//
// Thread safety: the ingress actor (CAF's threads) changes the nodes; the I/O thread places
// requests and renders /metrics; everything is behind one mutex. The Ingress owns the nodes'
// replicas and guards; the registry it makes holds the models' fronts.
#pragma once

#include <caf/all.hpp>

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "actors/actors.hpp"
#include "actors/cluster/front.hpp"
#include "actors/cluster/membership.hpp"
#include "actors/cluster/routing.hpp"
#include "actors/http/models.hpp"

namespace tutti::cluster {

struct IngressConfig {
  std::string secret;               // the cluster's shared secret (empty: refused at start)
  double heartbeat_s = 3;           // a node silent this long is dropped ([cluster] heartbeat)
  RoutingConfig routing;
  std::vector<std::string> aliases;  // names the default (first) model answers to
};

// Made with std::make_shared: the ingress actor holds it until close(). The registry it makes
// routes through it without owning it: whoever owns the Ingress keeps it until the server
// using that registry has stopped (tutti serve, the tests).
class Ingress : public http::Placement, public std::enable_shared_from_this<Ingress> {
 public:
  explicit Ingress(IngressConfig config);
  ~Ingress() override;

  // Spawns the ingress actor and publishes it on `host`:`port` (0: any free port; TLS when
  // the actor system was configured with certificates: actors/cluster/node.hpp). Returns
  // the bound port.
  Expected<uint16_t> open(caf::actor_system& system, const std::string& host, uint16_t port, bool tls);
  // Drops every node (their requests end with executor_lost) and stops the actor, so the
  // actor system can shut down. Idempotent.
  void close();

  // The registry over the models the nodes serve; null until the first node joined. `wait`
  // waits up to `seconds` for it.
  std::shared_ptr<http::ModelRegistry> registry() const;
  std::shared_ptr<http::ModelRegistry> wait_for_registry(double seconds) const;

  // ---- the ingress actor's calls (actors.hpp: ingress_actor), with the steady clock's now
  actors::join_reply join(const actors::node_hello& hello, caf::actor_system& system, double now);
  bool beat(const std::string& token, const NodeLoad& load, double now);
  void leave(const std::string& token, bool final);
  void expire(double now);
  void lost(const caf::actor_addr& agent);  // a node's membership loop is gone (its connection dropped)
  void seen_at(const std::string& node, const std::string& host);  // the address its connection came from

  // ---- http::Placement (the I/O thread)
  std::variant<std::shared_ptr<http::ModelInstance>, http::ApiError> place(const std::string& model, Modality m,
                                                                          const http::PlacementHint& hint, bool counted) override;
  void end_sticky(const std::string& sticky) override;
  std::string render_metrics() const override;
  nlohmann::json status_json() const override;

  size_t nodes() const;
  double heartbeat_s() const { return config_.heartbeat_s; }

 private:
  struct Node {
    std::string name, token, http_url;
    caf::actor agent;  // its membership loop (monitored by the ingress actor)
    caf::actor guard;  // local: quits when the node is dropped (every sink on it watches it)
    std::map<std::string, std::shared_ptr<http::ModelInstance>> replicas;  // by model name
    NodeLoad load;
    double joined_at = 0, last_beat = 0;
    uint64_t placed = 0;  // requests routed there
  };
  // A model's front: its facts and codecs (from the first node that served it), its slot's
  // instance in the registry, and the fingerprint later nodes' fronts are compared with.
  struct Front {
    ModelFront front;
    std::shared_ptr<http::ModelInstance> instance;  // the registry slot's: facts, codecs, health over nodes
  };
  // Why `m` cannot be served under its name here (it differs from the model already served
  // under it), or "".
  std::string differs(const actors::node_model& m, const ModelFront& front) const;
  Expected<Front*> front_for(const actors::node_model& m);
  void drop(std::map<std::string, Node>::iterator it, const std::string& why);
  void refresh_health();  // every model's front: a modality is healthy while some node has it healthy
  Node* by_token(const std::string& token);

  IngressConfig config_;
  mutable std::mutex mu_;
  mutable std::condition_variable registry_ready_;
  RoutingPolicy routing_;   // before membership_, which feeds it
  Membership membership_;
  std::map<std::string, Node> nodes_;
  std::map<std::string, Front> fronts_;  // by model name
  std::shared_ptr<http::ModelRegistry> registry_;
  caf::actor actor_;
  caf::actor_system* system_ = nullptr;
  uint16_t port_ = 0;
  bool closed_ = false;
  struct Counters {
    uint64_t joins = 0, rejoins = 0, refused = 0, lost_connection = 0, lost_silent = 0, left = 0;
  } counters_;
};

}  // namespace tutti::cluster
