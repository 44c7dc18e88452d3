#include "actors/cluster/ingress.hpp"

#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>

namespace tutti::cluster {

namespace {

double steady_now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::string random_token() {
  std::random_device rd;
  char buf[40];
  std::snprintf(buf, sizeof buf, "%08x%08x%08x%08x", unsigned(rd()), unsigned(rd()), unsigned(rd()), unsigned(rd()));
  return buf;
}

// Node names go into metrics labels, headers and logs: a short, plain name only.
bool valid_node_name(const std::string& n) {
  if (n.empty() || n.size() > 64) return false;
  return std::all_of(n.begin(), n.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == ':'; });
}

// Timing, as shares of [cluster] heartbeat. A node beats every quarter of it and is dropped
// once silent for 0.8 of it, checked every tenth: a node that dies or hangs right after a beat
// is out of routing within 0.9 of the heartbeat, and a live one is dropped only after missing
// three beats in a row.
constexpr double kBeatInterval = 0.25, kSilenceLimit = 0.8, kExpiryTick = 0.1;

constexpr std::array<Modality, 5> kAllModalities = {Modality::Text, Modality::Audio, Modality::Image, Modality::Video, Modality::Music};

std::vector<Modality> modalities_of(const http::ModelFacts& f) {
  std::vector<Modality> out{Modality::Text};
  for (const ModalityInfo& m : f.modalities.entries) out.push_back(m.modality);
  return out;
}

// An instance whose pipeline is on an executor node (never stopped from here): a model's
// front in the registry (no actors), or, once given the node's handles, a node's replica.
std::shared_ptr<http::ModelInstance> remote_instance(const actors::node_model& m, const ModelFront& front) {
  auto inst = std::make_shared<http::ModelInstance>();
  inst->name = m.name;
  inst->file = m.file;
  inst->facts = front.facts;
  inst->pipe.codecs = front.codecs;
  inst->pipe.remote = true;
  inst->health = std::make_shared<codecs::ModalityHealth>(modalities_of(inst->facts), 1);
  return inst;
}

struct ingress_state {
  std::shared_ptr<Ingress> ingress;
};

// The ingress actor: the typed interface in actors.hpp; every decision is the Ingress's.
actors::ingress_actor::behavior_type ingress_impl(actors::ingress_actor::stateful_pointer<ingress_state> self,
                                                  std::shared_ptr<Ingress> ingress) {
  self->state.ingress = ingress;
  // A node's membership loop gone: its connection dropped (a node killed, a cable cut) or it
  // ended. Either way the node is dropped now, not at the end of the heartbeat timeout.
  self->set_down_handler([=](caf::down_msg& down) { self->state.ingress->lost(down.source); });
  const auto tick = std::chrono::milliseconds(std::max<int64_t>(20, int64_t(ingress->heartbeat_s() * 1000 * kExpiryTick)));
  self->delayed_send(self, tick, actors::expire_atom::value);
  return {
      [=](actors::join_atom, const actors::node_hello& hello) -> actors::join_reply {
        actors::join_reply r = self->state.ingress->join(hello, self->system(), steady_now());
        if (r.accepted && hello.agent) {
          self->monitor(hello.agent);
          // A node serving on every interface says 0.0.0.0: the address it reached us from
          // is where its metrics are (for people reading the status).
          const std::string name = hello.load.node;
          if (hello.http_url.find("//0.0.0.0:") != std::string::npos || hello.http_url.find("//[::]:") != std::string::npos)
            self->request(self->system().middleman().actor_handle(), std::chrono::seconds(5), caf::get_atom::value, hello.agent.node())
                .then([=](const caf::node_id&, const std::string& host, uint16_t) { self->state.ingress->seen_at(name, host); },
                      [](caf::error&) {});
        }
        return r;
      },
      [=](actors::beat_atom, const std::string& token, const NodeLoad& load) -> bool {
        return self->state.ingress->beat(token, load, steady_now());
      },
      [=](actors::leave_atom, const std::string& token, bool final) { self->state.ingress->leave(token, final); },
      [=](actors::expire_atom) {
        self->state.ingress->expire(steady_now());
        self->delayed_send(self, tick, actors::expire_atom::value);
      },
  };
}

}  // namespace

Ingress::Ingress(IngressConfig config)
    : config_(std::move(config)), routing_(config_.routing), membership_(config_.secret, config_.heartbeat_s * kSilenceLimit, routing_) {}

Ingress::~Ingress() { close(); }

Expected<uint16_t> Ingress::open(caf::actor_system& system, const std::string& host, uint16_t port, bool tls) {
  if (config_.secret.empty()) return Error{"a cluster ingress needs a cluster secret (--cluster-secret-file or [cluster] secret_file)"};
  system_ = &system;
  auto handle = system.spawn(ingress_impl, shared_from_this());  // released when the actor quits (close())
  actor_ = caf::actor_cast<caf::actor>(handle);
  const char* in = host.empty() ? nullptr : host.c_str();
  auto bound = tls ? caf::openssl::publish(handle, port, in, true) : system.middleman().publish(handle, port, in, true);
  if (!bound) {
    close();
    return Error{"cannot publish the cluster port " + std::to_string(port) + ": " + system.render(bound.error())};
  }
  port_ = *bound;
  return *bound;
}

void Ingress::close() {
  caf::actor actor;
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    closed_ = true;
    while (!nodes_.empty()) drop(nodes_.begin(), "the ingress stopped");
    actor = std::move(actor_);
  }
  if (actor) {
    if (system_ && port_) (void)system_->middleman().unpublish(actor, port_);
    caf::anon_send<caf::message_priority::high>(actor, caf::exit_msg{actor.address(), caf::exit_reason::user_shutdown});
  }
}

std::shared_ptr<http::ModelRegistry> Ingress::registry() const {
  std::lock_guard lock(mu_);
  return registry_;
}

std::shared_ptr<http::ModelRegistry> Ingress::wait_for_registry(double seconds) const {
  std::unique_lock lock(mu_);
  registry_ready_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return registry_ != nullptr; });
  return registry_;
}

size_t Ingress::nodes() const {
  std::lock_guard lock(mu_);
  return nodes_.size();
}

Ingress::Node* Ingress::by_token(const std::string& token) {
  for (auto& [name, n] : nodes_)
    if (n.token == token) return &n;
  return nullptr;
}

std::string Ingress::differs(const actors::node_model& m, const ModelFront& front) const {
  auto it = fronts_.find(m.name);
  if (it == fronts_.end() || it->second.front.fingerprint == front.fingerprint) return "";
  for (Modality x : kAllModalities)
    if (auto why = http::cannot_stand_in(it->second.front.facts, front.facts, x))
      return "model " + m.name + " differs from the one already served under that name: " + *why;
  return "";
}

Expected<Ingress::Front*> Ingress::front_for(const actors::node_model& m) {
  auto read = read_model_front(m.front, m.n_vocab, m.name);
  if (!read) return read.error();
  if (std::string why = differs(m, *read); !why.empty()) return Error{why};
  if (auto it = fronts_.find(m.name); it != fronts_.end()) return &it->second;
  // A model first seen: its front becomes a slot of the registry (the first one the default).
  Front f;
  f.front = std::move(read).value();
  f.instance = remote_instance(m, f.front);
  ModelEntry entry;
  entry.name = m.name;
  entry.file = m.file;
  auto slot = std::make_unique<http::ModelSlot>(entry);
  slot->replace(f.instance);
  Front& stored = fronts_[m.name] = std::move(f);
  if (!registry_) {
    std::vector<std::unique_ptr<http::ModelSlot>> slots;
    slots.push_back(std::move(slot));
    registry_ = std::make_shared<http::ModelRegistry>(std::move(slots), config_.aliases);
    // The registry routes through this object without owning it (see the class comment).
    registry_->placement = std::shared_ptr<http::Placement>(this, [](http::Placement*) {});
    registry_ready_.notify_all();
  } else {
    registry_->add(std::move(slot));
  }
  std::fprintf(stderr, "tutti: cluster: model %s (%zu modalities, context %u) is served\n", m.name.c_str(),
               stored.front.facts.modalities.entries.size() + 1, stored.front.facts.context);
  return &stored;
}

actors::join_reply Ingress::join(const actors::node_hello& hello, caf::actor_system& system, double now) {
  std::lock_guard lock(mu_);
  actors::join_reply reply;
  const std::string& name = hello.load.node;
  auto refuse = [&](std::string why) {
    counters_.refused++;
    std::fprintf(stderr, "tutti: cluster: node %s refused: %s\n", name.c_str(), why.c_str());
    reply.reason = std::move(why);
    return reply;
  };
  if (closed_) return refuse("the ingress is stopping");
  if (!membership_.accepts(hello.secret, name)) {
    reply.reason = "wrong cluster secret";
    return reply;
  }
  if (!valid_node_name(name)) return refuse("a node name is 1 to 64 letters, digits and -_.:");
  if (hello.models.empty()) return refuse("it serves no model");
  if (!hello.agent) return refuse("it sent no membership actor");
  // Every model first: a node is taken whole or not at all.
  std::vector<Front*> fronts;
  for (const actors::node_model& m : hello.models) {
    if (!m.encoder || !m.executor) return refuse("model " + m.name + " came without its encoder and executor");
    auto f = front_for(m);
    if (!f) return refuse(f.error().message);
    fronts.push_back(*f);
  }
  auto existing = nodes_.find(name);
  const bool same_loop = existing != nodes_.end() && existing->second.agent == hello.agent;
  // The same name from another loop: the node restarted (or a second process took its name)
  // before the old one was noticed gone. The old one's requests cannot be finished.
  if (existing != nodes_.end() && !same_loop) drop(existing, "a new process joined under its name");
  Node& n = nodes_[name];
  if (!same_loop) {
    n.name = name;
    n.token = random_token();
    n.agent = hello.agent;
    n.guard = system.spawn([](caf::event_based_actor*) -> caf::behavior { return {[](int32_t) {}}; });
    n.joined_at = now;
  }
  n.http_url = hello.http_url;
  n.last_beat = now;
  // Replicas: new ones for what the node announces now (a reload there made new actors);
  // requests running on the old ones keep them until they end.
  n.replicas.clear();
  for (size_t i = 0; i < hello.models.size(); ++i) {
    const actors::node_model& m = hello.models[i];
    auto inst = remote_instance(m, fronts[i]->front);
    inst->node = name;
    inst->version = m.version;
    inst->pipe.encoder = m.encoder;
    inst->pipe.executor = m.executor;
    inst->pipe.node_guard = n.guard;
    n.replicas[m.name] = std::move(inst);
  }
  NodeLoad load = hello.load;
  load.models.clear();
  for (const actors::node_model& m : hello.models) load.models.push_back(m.name);
  n.load = load;
  const Membership::Join joined = membership_.join(hello.secret, load, now);
  (joined == Membership::Join::Rejoined ? counters_.rejoins : counters_.joins)++;
  refresh_health();
  std::string models;
  for (const actors::node_model& m : hello.models) models += (models.empty() ? "" : ", ") + m.name + " v" + std::to_string(m.version);
  std::fprintf(stderr, "tutti: cluster: node %s %s (%s; %s)\n", name.c_str(), same_loop ? "announced its models again" : "joined",
               models.c_str(), hello.http_url.c_str());
  reply.accepted = true;
  reply.token = n.token;
  reply.beat_interval_s = config_.heartbeat_s * kBeatInterval;
  return reply;
}

bool Ingress::beat(const std::string& token, const NodeLoad& load, double now) {
  std::lock_guard lock(mu_);
  Node* n = by_token(token);
  if (!n || load.node != n->name) return false;  // dropped while silent: it joins again
  NodeLoad l = load;
  l.models.clear();
  for (auto& [model, inst] : n->replicas) l.models.push_back(model);
  l.draining = l.draining || n->load.draining;
  n->load = l;
  n->last_beat = now;
  membership_.beat(l, now);
  refresh_health();
  return true;
}

void Ingress::leave(const std::string& token, bool final) {
  std::lock_guard lock(mu_);
  Node* n = by_token(token);
  if (!n) return;
  if (!final) {
    n->load.draining = true;
    routing_.update(n->load);
    std::fprintf(stderr, "tutti: cluster: node %s is draining: nothing new goes there\n", n->name.c_str());
    return;
  }
  counters_.left++;
  drop(nodes_.find(n->name), "it left");
}

void Ingress::expire(double now) {
  std::lock_guard lock(mu_);
  for (const std::string& name : membership_.expire(now)) {
    auto it = nodes_.find(name);
    if (it == nodes_.end()) continue;
    counters_.lost_silent++;
    char why[96];
    std::snprintf(why, sizeof why, "no heartbeat for %.1f s", now - it->second.last_beat);
    drop(it, why);
  }
}

void Ingress::seen_at(const std::string& node, const std::string& host) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end() || host.empty()) return;
  std::string& url = it->second.http_url;
  for (const char* any : {"0.0.0.0", "[::]"})
    if (const size_t at = url.find(any); at != std::string::npos) url.replace(at, std::strlen(any), host.find(':') != std::string::npos ? "[" + host + "]" : host);
}

void Ingress::lost(const caf::actor_addr& agent) {
  std::lock_guard lock(mu_);
  for (auto it = nodes_.begin(); it != nodes_.end(); ++it)
    if (it->second.agent.address() == agent) {
      counters_.lost_connection++;
      drop(it, "its connection dropped");
      return;
    }
}

void Ingress::drop(std::map<std::string, Node>::iterator it, const std::string& why) {
  Node& n = it->second;
  std::fprintf(stderr, "tutti: cluster: node %s dropped (%s); its requests in flight end with executor_lost\n", n.name.c_str(), why.c_str());
  membership_.leave(n.name);
  // Every sink on the node watches its guard: each in-flight request ends now.
  if (n.guard) caf::anon_send_exit(n.guard, caf::exit_reason::user_shutdown);
  nodes_.erase(it);
  refresh_health();
}

void Ingress::refresh_health() {
  // A modality of a model is healthy on the front while some node serves it healthy; each
  // replica mirrors its own node's verdicts.
  std::map<std::pair<std::string, Modality>, bool> any_healthy;
  for (auto& [name, n] : nodes_)
    for (auto& [model, inst] : n.replicas)
      for (Modality m : modalities_of(inst->facts)) {
        std::string why;
        bool ok = true;
        for (const DegradedModality& d : n.load.degraded)
          if (d.model == model && d.modality == m) ok = false, why = d.reason;
        inst->health->mirror(m, ok, "node " + name + ": " + why);
        any_healthy[{model, m}] = any_healthy[{model, m}] || ok;
      }
  for (auto& [model, f] : fronts_)
    for (Modality m : modalities_of(f.instance->facts)) {
      auto it = any_healthy.find({model, m});
      // No node serves it now: the front stays as it was (routing answers executor_unavailable).
      if (it != any_healthy.end()) f.instance->health->mirror(m, it->second, "degraded on every node that serves it");
    }
}

std::variant<std::shared_ptr<http::ModelInstance>, http::ApiError> Ingress::place(const std::string& model, Modality m,
                                                                                 const http::PlacementHint& hint, bool counted) {
  std::lock_guard lock(mu_);
  auto unavailable = [&] {
    return http::ApiError{ErrorCode::executor_unavailable, "no executor node serves model " + model +
                                                               (m == Modality::Text ? "" : std::string(" with its ") + modality_name(m) + " modality healthy") +
                                                               " now; retry shortly"};
  };
  std::optional<std::string> node;
  if (!counted) {
    // A look-up (the codecs, a probe): any node that could take it; nothing is counted.
    for (auto& [name, n] : nodes_)
      if (n.load.serves(model, m) && n.replicas.count(model)) return n.replicas[model];
    return unavailable();
  }
  if (!hint.sticky.empty()) node = routing_.route_session(model, hint.sticky, m);
  else if (hint.answer == Modality::Text) node = routing_.route_text(model, hint.prompt, m);
  else node = routing_.route_least_loaded(model, m);
  if (!node) return unavailable();
  auto it = nodes_.find(*node);
  if (it == nodes_.end() || !it->second.replicas.count(model)) return unavailable();
  it->second.placed++;
  return it->second.replicas[model];
}

void Ingress::end_sticky(const std::string& sticky) {
  std::lock_guard lock(mu_);
  routing_.end_session(sticky);
}

std::string Ingress::render_metrics() const {
  std::lock_guard lock(mu_);
  std::string b;
  auto family = [&](const char* name, const char* type, const char* help) {
    b += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  auto per_node = [&](const char* name, const char* type, const char* help, auto value) {
    family(name, type, help);
    for (auto& [node, n] : nodes_) b += std::string(name) + "{node=\"" + node + "\"} " + value(n) + "\n";
  };
  family("tutti_cluster_nodes", "gauge", "Executor nodes joined to this ingress.");
  b += "tutti_cluster_nodes " + std::to_string(nodes_.size()) + "\n";
  per_node("tutti_cluster_node_up", "gauge", "1 while the node is a member (0: draining).",
           [](const Node& n) { return std::string(n.load.draining ? "0" : "1"); });
  per_node("tutti_cluster_node_waiting", "gauge", "Sequences waiting on the node (its last heartbeat, plus what was sent since).",
           [](const Node& n) { return std::to_string(n.load.waiting); });
  per_node("tutti_cluster_node_running", "gauge", "Sequences running on the node (its last heartbeat).",
           [](const Node& n) { return std::to_string(n.load.running); });
  per_node("tutti_cluster_node_kv_free_blocks", "gauge", "Free KV blocks on the node.",
           [](const Node& n) { return std::to_string(n.load.free_kv_blocks); });
  per_node("tutti_cluster_node_step_seconds", "gauge", "The node's recent mean step time.",
           [](const Node& n) { return std::to_string(n.load.step_seconds); });
  per_node("tutti_cluster_node_load", "gauge", "The load score routing compares (docs/scaling.md).",
           [](const Node& n) { return std::to_string(RoutingPolicy::load_of(n.load)); });
  per_node("tutti_cluster_node_requests_total", "counter", "Requests this ingress routed to the node since it joined.",
           [](const Node& n) { return std::to_string(n.placed); });
  per_node("tutti_cluster_node_degraded_modalities", "gauge", "Modalities of the node's models its canaries found broken.",
           [](const Node& n) { return std::to_string(n.load.degraded.size()); });
  family("tutti_cluster_joins_total", "counter", "Nodes that joined, by kind (join, rejoin: models announced again).");
  b += "tutti_cluster_joins_total{kind=\"join\"} " + std::to_string(counters_.joins) + "\n";
  b += "tutti_cluster_joins_total{kind=\"rejoin\"} " + std::to_string(counters_.rejoins) + "\n";
  family("tutti_cluster_joins_refused_total", "counter", "Nodes refused, by reason.");
  b += "tutti_cluster_joins_refused_total{reason=\"secret\"} " + std::to_string(membership_.refused()) + "\n";
  b += "tutti_cluster_joins_refused_total{reason=\"other\"} " + std::to_string(counters_.refused) + "\n";
  family("tutti_cluster_nodes_lost_total", "counter", "Nodes dropped, by why: connection (died), silent (hung), left (drained).");
  b += "tutti_cluster_nodes_lost_total{why=\"connection\"} " + std::to_string(counters_.lost_connection) + "\n";
  b += "tutti_cluster_nodes_lost_total{why=\"silent\"} " + std::to_string(counters_.lost_silent) + "\n";
  b += "tutti_cluster_nodes_lost_total{why=\"left\"} " + std::to_string(counters_.left) + "\n";
  const RoutingPolicy::Counters& c = routing_.counters();
  family("tutti_cluster_routing_decisions_total", "counter", "Routing decisions by kind.");
  for (auto [kind, v] : {std::pair{"affinity", c.affinity}, {"imbalance_override", c.imbalance_overrides}, {"least_loaded", c.least_loaded},
                         {"session_placed", c.sessions_placed}, {"sticky", c.sticky}, {"session_moved", c.sessions_moved}, {"no_node", c.no_node}})
    b += std::string("tutti_cluster_routing_decisions_total{kind=\"") + kind + "\"} " + std::to_string(v) + "\n";
  family("tutti_cluster_sticky_sessions", "gauge", "Realtime sessions and stream jobs pinned to a node.");
  b += "tutti_cluster_sticky_sessions " + std::to_string(routing_.sessions()) + "\n";
  return b;
}

nlohmann::json Ingress::status_json() const {
  std::lock_guard lock(mu_);
  const double now = steady_now();
  nlohmann::json nodes = nlohmann::json::array();
  for (auto& [name, n] : nodes_) {
    nlohmann::json models = nlohmann::json::array();
    for (auto& [model, inst] : n.replicas) {
      nlohmann::json degraded = nlohmann::json::array();
      for (const DegradedModality& d : n.load.degraded)
        if (d.model == model) degraded.push_back({{"modality", modality_name(d.modality)}, {"reason", d.reason}});
      models.push_back({{"name", model}, {"version", inst->version}, {"file", inst->file}, {"degraded", degraded}});
    }
    nodes.push_back({{"name", name},
                     {"url", n.http_url},
                     {"state", n.load.draining ? "draining" : n.load.degraded.empty() ? "healthy" : "degraded"},
                     {"models", models},
                     {"load",
                      {{"waiting", n.load.waiting},
                       {"running", n.load.running},
                       {"free_kv_blocks", n.load.free_kv_blocks},
                       {"total_kv_blocks", n.load.total_kv_blocks},
                       {"step_seconds", n.load.step_seconds},
                       {"score", RoutingPolicy::load_of(n.load)}}},
                     {"requests_routed", n.placed},
                     {"last_beat_s_ago", now - n.last_beat},
                     {"member_for_s", now - n.joined_at}});
  }
  const RoutingPolicy::Counters& c = routing_.counters();
  return {{"port", port_},
          {"heartbeat_s", config_.heartbeat_s},
          {"nodes", nodes},
          {"routing",
           {{"affinity", c.affinity}, {"imbalance_overrides", c.imbalance_overrides}, {"least_loaded", c.least_loaded},
            {"sessions_placed", c.sessions_placed}, {"sticky", c.sticky}, {"sessions_moved", c.sessions_moved}, {"no_node", c.no_node}}},
          {"joins", counters_.joins},
          {"rejoins", counters_.rejoins},
          {"refused", membership_.refused() + counters_.refused},
          {"lost", {{"connection", counters_.lost_connection}, {"silent", counters_.lost_silent}, {"left", counters_.left}}}};
}

}  // namespace tutti::cluster
