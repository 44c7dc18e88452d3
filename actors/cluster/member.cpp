#include "actors/cluster/member.hpp"

#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>

#include <chrono>
#include <cstdio>

#include "actors/cluster/front.hpp"

namespace tutti::cluster {

namespace {

// The loop's own messages (never cross nodes).
using stop_atom = caf::atom_constant<caf::atom("mstop")>;

caf::duration seconds(double s) { return caf::duration{std::chrono::milliseconds(std::max<int64_t>(1, int64_t(s * 1000)))}; }

}  // namespace

ClusterMember::ClusterMember(caf::actor_system& system, std::shared_ptr<http::ModelRegistry> models, MemberConfig config)
    : system_(system), models_(std::move(models)), config_(std::move(config)) {}

ClusterMember::~ClusterMember() {
  stop_ = true;
  {
    std::lock_guard lock(mu_);
    if (agent_) caf::anon_send<caf::message_priority::high>(agent_, stop_atom::value);
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (caf::actor_id id : announced_) system_.registry().erase(id);
}

void ClusterMember::start() { thread_ = std::thread([this] { run(); }); }

std::string ClusterMember::refusal() const {
  std::lock_guard lock(mu_);
  return refusal_;
}

bool ClusterMember::wait_joined(double seconds) const {
  std::unique_lock lock(mu_);
  changed_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return state_ != State::Connecting; });
  return state_ == State::Joined;
}

NodeLoad ClusterMember::load() const {
  std::lock_guard lock(step_mu_);
  NodeLoad l;
  l.node = config_.name;
  double step_sum = 0;
  uint64_t steps = 0;
  for (http::ModelSlot* slot : models_->slots()) {
    auto inst = slot->current();
    if (!inst) continue;
    l.models.push_back(slot->name());
    if (const auto& m = inst->pipe.metrics) {
      l.waiting += int(m->queue_depth.load());
      l.running += int(m->running.load());
      l.total_kv_blocks += m->kv_blocks_total.load();
      l.free_kv_blocks += m->kv_blocks_total.load() - m->kv_blocks_used.load();
      // The mean step time since the last beat (a quiet node keeps its last figure).
      auto& [sum, count] = step_seen_[slot->name()];
      const double s = m->step_seconds.sum();
      const uint64_t c = m->step_seconds.count();
      if (c > count) step_sum += s - sum, steps += c - count;
      sum = s, count = c;
    }
    if (inst->health)
      for (const auto& e : inst->health->snapshot())
        if (!e.healthy) l.degraded.push_back({slot->name(), e.modality, e.reason});
  }
  if (steps > 0) l.step_seconds = step_sum / double(steps);
  return l;
}

std::string ClusterMember::versions() const {
  std::string v;
  for (http::ModelSlot* slot : models_->slots())
    if (auto inst = slot->current()) v += slot->name() + "@" + std::to_string(inst->version) + ";";
  return v;
}

actors::node_hello ClusterMember::hello(caf::actor agent) const {
  actors::node_hello h;
  h.secret = config_.secret;
  h.http_url = config_.http_url;
  h.load = load();
  h.agent = std::move(agent);
  for (http::ModelSlot* slot : models_->slots()) {
    auto inst = slot->current();
    if (!inst || !inst->pipe.encoder) continue;
    actors::node_model m;
    m.name = slot->name();
    m.file = inst->file;
    m.version = inst->version;
    m.n_vocab = inst->facts.n_vocab;
    auto file = GgufFile::open(inst->file);  // mapped again: only its metadata and codec tensors are read
    if (file) m.front = model_front_bytes(**file);
    m.encoder = inst->pipe.encoder;
    m.executor = inst->pipe.executor;
    h.models.push_back(std::move(m));
  }
  return h;
}

void ClusterMember::run() {
  caf::scoped_actor self{system_, true};
  {
    std::lock_guard lock(mu_);
    agent_ = caf::actor_cast<caf::actor>(self);
  }
  auto set_state = [&](State s, std::string why = "") {
    {
      std::lock_guard lock(mu_);
      state_ = s;
      if (!why.empty()) refusal_ = std::move(why);
    }
    changed_.notify_all();
  };
  bool said_unreachable = false;
  while (!stop_) {
    auto ingress = config_.tls
                       ? caf::openssl::remote_actor<actors::ingress_actor>(system_, config_.ingress_host, config_.ingress_port)
                       : system_.middleman().remote_actor<actors::ingress_actor>(config_.ingress_host, config_.ingress_port);
    if (!ingress) {
      if (!said_unreachable)
        std::fprintf(stderr, "tutti: cluster: the ingress at %s:%u is not reachable (%s); trying every %.1f s\n",
                     config_.ingress_host.c_str(), unsigned(config_.ingress_port), system_.render(ingress.error()).c_str(), config_.retry_s);
      said_unreachable = true;
      self->receive([&](stop_atom) {}, caf::after(seconds(config_.retry_s)) >> [] {});
      continue;
    }
    said_unreachable = false;
    self->monitor(*ingress);
    std::string token, announced;
    double beat_s = 1;
    bool connected = true;
    auto join = [&]() -> bool {
      actors::node_hello h = hello(caf::actor_cast<caf::actor>(self));
      for (const actors::node_model& m : h.models) announced_.insert(m.encoder.id()), announced_.insert(m.executor.id());
      announced = versions();
      bool ok = false;
      self->request(*ingress, seconds(config_.request_timeout_s), actors::join_atom::value, std::move(h))
          .receive(
              [&](const actors::join_reply& r) {
                if (!r.accepted) {
                  std::fprintf(stderr, "tutti: cluster: the ingress refused this node: %s\n", r.reason.c_str());
                  stop_ = true;
                  set_state(State::Refused, r.reason);
                  return;
                }
                token = r.token;
                beat_s = r.beat_interval_s;
                ok = true;
              },
              [&](caf::error& e) { std::fprintf(stderr, "tutti: cluster: joining failed: %s\n", system_.render(e).c_str()); });
      return ok;
    };
    if (!join()) {
      if (!stop_) self->receive([&](stop_atom) {}, caf::after(seconds(config_.retry_s)) >> [] {});
      continue;
    }
    std::fprintf(stderr, "tutti: cluster: node %s joined the ingress at %s:%u\n", config_.name.c_str(), config_.ingress_host.c_str(),
                 unsigned(config_.ingress_port));
    set_state(State::Joined);
    while (!stop_ && connected) {
      bool beat_due = false;
      self->receive(
          [&](caf::down_msg&) {
            connected = false;
            std::fprintf(stderr, "tutti: cluster: the ingress is gone; what it was streaming is cancelled; waiting to join again\n");
          },
          [&](actors::leave_atom, bool final) {
            self->send(*ingress, actors::leave_atom::value, token, final);
            if (final) stop_ = true;
          },
          [&](stop_atom) {}, caf::after(seconds(beat_s)) >> [&] { beat_due = true; });
      if (!beat_due || stop_) continue;
      // A reload here made new actors: announce them (the ingress keeps the node).
      if (versions() != announced) {
        if (!join()) connected = false;
        continue;
      }
      // A beat unanswered within two beat intervals: the connection is suspect (this node may
      // have been stopped, and dropped meanwhile): reach the ingress anew.
      bool member = true, answered = true;
      self->request(*ingress, seconds(std::min(config_.request_timeout_s, 2 * beat_s)), actors::beat_atom::value, token, load())
          .receive([&](bool m) { member = m; },
                   [&](caf::error& e) {
                     answered = false;
                     std::fprintf(stderr, "tutti: cluster: a heartbeat went unanswered: %s\n", system_.render(e).c_str());
                   });
      if (!answered) connected = false;
      else if (!member && !join()) connected = false;  // dropped while silent: join again
    }
    self->demonitor(ingress->address());
    if (state_ == State::Joined) set_state(State::Connecting);
  }
  if (state_ != State::Refused) set_state(State::Stopped);
  std::lock_guard lock(mu_);
  agent_ = nullptr;
}

bool ClusterMember::leave(double seconds_to_drain) {
  caf::actor agent;
  {
    std::lock_guard lock(mu_);
    agent = agent_;
  }
  if (!agent || state_ != State::Joined) return true;
  caf::anon_send<caf::message_priority::high>(agent, actors::leave_atom::value, false);
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds_to_drain);
  bool dry = false;
  while (std::chrono::steady_clock::now() < until) {
    const NodeLoad l = load();
    if (l.waiting == 0 && l.running == 0) {
      dry = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  caf::anon_send<caf::message_priority::high>(agent, actors::leave_atom::value, true);
  if (thread_.joinable()) thread_.join();
  return dry;
}

}  // namespace tutti::cluster
