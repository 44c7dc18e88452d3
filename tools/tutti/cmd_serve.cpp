// tutti serve: the server. Loads the models ([[models]], or --model alone), spawns each
// one's actor pipeline, serves HTTP until SIGINT or SIGTERM (SIGHUP reloads every model),
// then drains: no new work, running generations get
// `shutdown.drain_seconds` to finish, the rest end as cancelled, the ledger is flushed, and
// the process exits 0.
#include <csignal>
#include <cstdio>

#include "actors/http/tls.hpp"
#include "actors/serving.hpp"
#include "tools/tutti/commands.h"
#include "tools/tutti/model_loading.h"

namespace tutti::cli {

int cmd_serve(const std::vector<std::string>& argv) {
  auto opts = engine_options();
  for (auto o : {"host", "port", "max-batch", "step-budget", "max-tokens", "max-waiting", "caf-threads", "api-key", "ledger", "tls-cert", "tls-key",
                 "tls-port", "tls-dir"})
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

  // Block the signals in every thread the runtime starts; the main thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto serving = Serving::start(std::move(options));
  if (!serving) return fail(serving.error().message);
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
  // SIGHUP reloads every model from its file (the same swap as the admin endpoint's).
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
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
  const http::ServerMetrics& metrics = (*serving)->http().metrics();
  const int cut = (*serving)->drain(st.drain_seconds);
  std::fprintf(stderr, "tutti: stopped (%d generation(s) cut short); %llu usage record(s) written\n", cut,
               static_cast<unsigned long long>(metrics.ledger_records.load()));
  return 0;
}

}  // namespace tutti::cli
