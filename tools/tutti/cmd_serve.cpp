// tutti serve: the server. Loads the models ([[models]], or --model alone), spawns each
// one's actor pipeline, serves HTTP until SIGINT or SIGTERM (SIGHUP reloads every model),
// then drains: no new work, running generations get
// `shutdown.drain_seconds` to finish, the rest end as cancelled, the ledger is flushed, and
// the process exits 0.
//
// With --role (docs/scaling.md): `ingress` serves HTTP and WebSocket for executor nodes that
// join it on --cluster-port (no model of its own: it opens its HTTP port once the first node
// has joined, whose model is the default); `executor` is the server above joined to an
// ingress (--join HOST:PORT), which routes requests to it; on SIGTERM it drains first (the
// ingress sends nothing new), then leaves.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <random>
#include <thread>

#include "actors/cluster/ingress.hpp"
#include "actors/cluster/member.hpp"
#include "actors/cluster/node.hpp"
#include "actors/http/tls.hpp"
#include "actors/serving.hpp"
#include "tools/tutti/args.h"
#include "tools/tutti/commands.h"
#include "tools/tutti/model_loading.h"

namespace tutti::cli {

namespace {

// The first signal among `signals` that arrived within `seconds` (0: none).
int signal_within(const sigset_t& signals, double seconds) {
  timespec ts{time_t(seconds), long((seconds - double(time_t(seconds))) * 1e9)};
  const int sig = sigtimedwait(&signals, nullptr, &ts);
  return sig > 0 ? sig : 0;
}

// What this process is (docs/scaling.md).
enum class Role { AllInOne, Ingress, Executor };

std::optional<Role> parse_role(const std::string& s) {
  if (s.empty()) return Role::AllInOne;
  if (s == "ingress") return Role::Ingress;
  if (s == "executor") return Role::Executor;
  return std::nullopt;
}

}  // namespace

int cmd_serve(const std::vector<std::string>& argv) {
  auto opts = engine_options();
  for (auto o : {"host", "port", "max-batch", "step-budget", "max-tokens", "max-waiting", "caf-threads", "api-key", "ledger", "tls-cert", "tls-key",
                 "tls-port", "tls-dir", "role", "cluster-host", "cluster-port", "cluster-secret-file", "join", "name"})
    opts.insert(o);
  Args args(argv, opts, {"tls-self-signed"});
  if (!args.ok()) return fail(args.error());
  auto settings = read_settings(args);
  if (!settings) return 1;
  Settings st = *settings;
  st.host = args.get("host", st.host);
  st.port = int(args.get_int("port", st.port));
  st.max_tokens = int(args.get_int("max-tokens", st.max_tokens));
  st.max_batch = int(args.get_int("max-batch", st.max_batch));
  st.step_token_budget = int(args.get_int("step-budget", st.step_token_budget));
  st.max_waiting = int(args.get_int("max-waiting", st.max_waiting));
  st.caf_workers = int(args.get_int("caf-threads", st.caf_workers));
  if (!args.ok()) return fail(args.error());
  if (st.port < 0 || st.port > 65535) return fail("--port must be 0..65535");
  if (args.has("ledger")) st.ledger_path = args.get("ledger");
  const std::optional<Role> role = parse_role(args.get("role", ""));
  if (!role) return fail("--role must be ingress or executor (none: all in one process)");
  st.cluster_host = args.get("cluster-host", st.cluster_host);
  st.cluster_port = int(args.get_int("cluster-port", st.cluster_port));
  st.cluster_secret_file = args.get("cluster-secret-file", st.cluster_secret_file);
  st.cluster_join = args.get("join", st.cluster_join);
  st.cluster_node_name = args.get("name", st.cluster_node_name);
  if (!args.ok()) return fail(args.error());
  if (st.cluster_port < 0 || st.cluster_port > 65535) return fail("--cluster-port must be 0..65535");
  st.tls_cert = args.get("tls-cert", st.tls_cert);
  st.tls_key = args.get("tls-key", st.tls_key);
  st.tls_port = int(args.get_int("tls-port", st.tls_port));
  if (!args.ok()) return fail(args.error());
  if (args.has("tls-self-signed")) {
    const std::string dir = args.get("tls-dir", ".tutti-tls");
    auto made = http::make_self_signed(dir);
    if (!made) return fail("--tls-self-signed: " + made.error().message);
    st.tls_cert = made->cert;
    st.tls_key = made->key;
    std::fprintf(stderr,
                 "tutti: --tls-self-signed is for development only: %s a localhost certificate signed by a local CA.\n"
                 "tutti: clients trust it with the CA at %s (e.g. NODE_EXTRA_CA_CERTS=%s, curl --cacert %s)\n",
                 made->reused ? "reusing" : "made", made->ca.c_str(), made->ca.c_str(), made->ca.c_str());
  }
  // --model over a [[models]] list replaces the default (first) model's file.
  if (args.has("model") && !st.models.empty()) st.models.front().file = args.get("model");
  Serving::Options options;
  options.pipeline = actors::PipelineConfig::from(st);
  options.caf_workers = st.caf_workers;
  options.engine = st;
  if (Status s = options.pipeline.validate(); !s) return fail(s.message());
  auto sc = http::ServerConfig::from(st);
  if (!sc) return fail(sc.error().message);
  options.server = std::move(sc).value();
  if (args.has("api-key"))  // never printed
    if (Status s = options.server.api_keys.add(args.get("api-key")); !s) return fail("--api-key: " + s.message());

  // A cluster node: the secret, the middleman, TLS between nodes.
  std::string secret;
  const cluster::NodeTls node_tls{st.cluster_tls_cert, st.cluster_tls_key, st.cluster_tls_ca};
  if (*role != Role::AllInOne) {
    if (st.cluster_secret_file.empty()) return fail("--role " + args.get("role") + " needs --cluster-secret-file (or [cluster] secret_file)");
    auto read = cluster::read_cluster_secret(st.cluster_secret_file);
    if (!read) return fail(read.error().message);
    secret = *read;
    if (node_tls.enabled() && (st.cluster_tls_key.empty() || st.cluster_tls_ca.empty()))
      return fail("[cluster] tls_cert needs tls_key and tls_ca too");
    options.configure_actors = [heartbeat = st.cluster_heartbeat_s, node_tls](caf::actor_system_config& cfg) {
      cluster::configure_cluster_node(cfg, heartbeat, node_tls);
    };
  }
  // An executor node joins every ingress listed (an ingress tier behind a load balancer).
  std::vector<HostPort> ingresses;
  if (*role == Role::Executor) {
    const auto bad_join = [&] {
      return fail("--role executor needs --join HOST:PORT[,HOST:PORT...] (or [cluster] join), not '" + st.cluster_join + "'");
    };
    for (const std::string& item : split_list(st.cluster_join)) {
      auto hp = parse_host_port(item);
      if (!hp) return bad_join();
      ingresses.push_back(*hp);
    }
    if (ingresses.empty()) return bad_join();
  }

  // Block the signals in every thread the runtime starts; the main thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::shared_ptr<cluster::Ingress> ingress;
  Expected<std::unique_ptr<Serving>> serving = Error{""};
  if (*role == Role::Ingress) {
    cluster::IngressConfig ic;
    ic.secret = secret;
    ic.heartbeat_s = st.cluster_heartbeat_s;
    ic.routing.prefix_bytes = size_t(st.cluster_prefix_bytes);
    ic.routing.max_imbalance = st.cluster_max_imbalance;
    ic.aliases = st.model_aliases;
    ingress = std::make_shared<cluster::Ingress>(ic);
    // Executor nodes key sequences by the ids their front servers give: this ingress's start
    // at a random high base, apart from a node's own server and from other ingresses.
    options.server.first_request_id = int64_t(1 + std::random_device{}() % (1u << 30)) << 32;
    bool stopped = false;
    serving = Serving::start(std::move(options), [&](caf::actor_system& system) -> Expected<std::shared_ptr<http::ModelRegistry>> {
      auto port = ingress->open(system, st.cluster_host, uint16_t(st.cluster_port), node_tls.enabled());
      if (!port) return port.error();
      std::fprintf(stderr, "tutti: cluster ingress on %s:%u%s; waiting for an executor node to join\n", st.cluster_host.c_str(),
                   unsigned(*port), node_tls.enabled() ? " (TLS)" : "");
      for (;;) {
        if (auto registry = ingress->wait_for_registry(0.2)) return registry;
        if (signal_within(signals, 0)) {
          stopped = true;
          ingress->close();
          return Error{"stopped before any executor node joined"};
        }
      }
    });
    if (!serving) {
      ingress->close();
      if (stopped) return 0;
      return fail(serving.error().message);
    }
    (*serving)->on_stop([ingress] { ingress->close(); });
  } else {
    serving = Serving::start(std::move(options));
  }
  if (!serving) return fail(serving.error().message);
  // One membership per ingress; declared after `serving`: destroyed (their loops stopped)
  // before the actor system.
  std::vector<std::unique_ptr<cluster::ClusterMember>> members;
  for (const HostPort& at : ingresses) {
    cluster::MemberConfig mc;
    mc.ingress_host = at.host;
    mc.ingress_port = at.port;
    mc.secret = secret;
    mc.tls = node_tls.enabled();
    mc.http_url = "http://" + (*serving)->config().host + ":" + std::to_string((*serving)->port());
    if (st.cluster_node_name.empty()) {
      char host[256] = {0};
      gethostname(host, sizeof host - 1);
      mc.name = std::string(host) + ":" + std::to_string((*serving)->port());
    } else {
      mc.name = st.cluster_node_name;
    }
    members.push_back(std::make_unique<cluster::ClusterMember>((*serving)->system(), (*serving)->registry(), mc));
    members.back()->start();
    std::fprintf(stderr, "tutti: executor node %s joining the ingress at %s:%u\n", mc.name.c_str(), mc.ingress_host.c_str(),
                 unsigned(mc.ingress_port));
  }
  const http::ServerConfig& c = (*serving)->config();
  const std::string tls = (*serving)->tls_port() ? " and https://" + c.host + ":" + std::to_string((*serving)->tls_port()) : "";
  for (const auto& slot : (*serving)->models().slots()) {
    auto inst = slot->current();
    std::string health;
    for (const auto& e : inst->health->snapshot())
      health += std::string(health.empty() ? "" : ", ") + modality_name(e.modality) + (e.healthy ? " ok" : " DEGRADED");
    std::string fallback;
    for (const auto& [m, target] : slot->fallback()) fallback += std::string(" ") + modality_name(m) + "->" + target;
    std::fprintf(stderr, "tutti: model %s: %s (version %d, loaded in %.2f s; %s)%s%s\n", slot->name().c_str(), inst->file.c_str(),
                 inst->version, inst->load_seconds, health.c_str(), fallback.empty() ? "" : "; fallback", fallback.c_str());
  }
  std::fprintf(stderr, "tutti: serving %s (chat template %s) on http://%s:%u%s; %s; ledger %s\n", c.model_name.c_str(),
               http::chat_template_name(c.chat_template), c.host.c_str(), unsigned((*serving)->port()), tls.c_str(),
               c.api_keys.enabled() ? (std::to_string(c.api_keys.size()) + " API key(s) required").c_str() : "open (no API keys)",
               c.ledger_path.empty() ? "off" : c.ledger_path.c_str());
  int sig = 0;
  // SIGHUP reloads every model from its file (the same swap as the admin endpoint's; an
  // executor node then announces the new version to its ingress).
  for (;;) {
    sig = signal_within(signals, 0.25);
    for (const auto& member : members)
      if (member->state() == cluster::ClusterMember::State::Refused) {
        std::fprintf(stderr, "tutti: the cluster refused this node (%s); stopping\n", member->refusal().c_str());
        (*serving)->drain(0);
        return 1;
      }
    if (sig == 0) continue;
    if (sig != SIGHUP) break;
    std::fprintf(stderr, "tutti: SIGHUP: reloading every model\n");
    for (const auto& slot : (*serving)->models().slots()) {
      const std::string name = slot->name();
      auto refused = (*serving)->models().reload(name, "", [name](const http::ReloadReport& r) {
        if (r.ok) std::fprintf(stderr, "tutti: model %s reloaded from %s (version %d) in %.2f s\n", name.c_str(), r.file.c_str(), r.version, r.load_seconds);
        else std::fprintf(stderr, "tutti: model %s: reload refused: %s\n", name.c_str(), r.reason.c_str());
      });
      if (refused) std::fprintf(stderr, "tutti: model %s: %s\n", name.c_str(), refused->message.c_str());
    }
  }
  std::fprintf(stderr, "tutti: signal %d, draining for up to %.0f s\n", sig, st.drain_seconds);
  if (!members.empty()) {
    // Draining here first: the ingresses send nothing new, what runs finishes, then it leaves.
    std::vector<std::thread> leaving;
    std::atomic<bool> dry{true};
    for (auto& member : members)
      leaving.emplace_back([&, m = member.get()] {
        if (!m->leave(st.drain_seconds)) dry = false;
      });
    for (auto& t : leaving) t.join();
    std::fprintf(stderr, "tutti: left the cluster%s\n", dry ? " after its sequences finished" : " with sequences still running");
  }
  const http::ServerMetrics& metrics = (*serving)->http().metrics();
  const int cut = (*serving)->drain(st.drain_seconds);
  std::fprintf(stderr, "tutti: stopped (%d generation(s) cut short); %llu usage record(s) written\n", cut,
               static_cast<unsigned long long>(metrics.ledger_records.load()));
  return 0;
}

}  // namespace tutti::cli
