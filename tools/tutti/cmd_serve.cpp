// tutti serve: the server. Loads the model, spawns the actor pipeline, serves HTTP until
// SIGINT or SIGTERM, then drains: no new work, running generations get
// `shutdown.drain_seconds` to finish, the rest end as cancelled, the ledger is flushed, and
// the process exits 0.
#include <csignal>
#include <cstdio>

#include "actors/http/server.hpp"
#include "actors/pipeline.hpp"
#include "tools/tutti/commands.h"
#include "tools/tutti/engine.h"

namespace tutti::cli {

int cmd_serve(const std::vector<std::string>& argv) {
  auto opts = engine_options();
  for (auto o : {"host", "port", "max-batch", "step-budget", "max-tokens", "max-waiting", "caf-threads", "api-key", "ledger"}) opts.insert(o);
  Args args(argv, opts, {});
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
  const std::string model_path = st.model_path;
  http::ServerConfig sc;
  sc.host = st.host;
  sc.port = uint16_t(st.port);
  sc.max_tokens = st.max_tokens;
  sc.max_body_bytes = size_t(st.max_body_bytes);
  sc.max_connections = st.max_connections;
  sc.read_timeout_s = st.read_timeout_s;
  sc.write_timeout_s = st.write_timeout_s;
  sc.send_buffer_bytes = st.send_buffer_bytes;
  sc.prefill_while_speaking_ms = st.prefill_while_speaking_ms;
  sc.max_conversation_tokens = st.max_conversation_tokens;
  // Access: keys from the settings, the key file and --api-key (never printed).
  for (const std::string& k : st.api_keys)
    if (Status s = sc.api_keys.add(k); !s) return fail("[access] api_keys: " + s.message());
  if (!st.api_key_file.empty())
    if (Status s = sc.api_keys.add_file(st.api_key_file); !s) return fail(s.message());
  if (args.has("api-key"))
    if (Status s = sc.api_keys.add(args.get("api-key")); !s) return fail("--api-key: " + s.message());
  sc.key_limits = {st.requests_per_minute, st.concurrent_sessions, st.tokens_per_minute};
  sc.ledger_path = args.get("ledger", st.ledger_path);
  sc.ledger_synchronous = st.ledger_synchronous;
  actors::PipelineConfig pc;
  pc.kv_cache_bytes = size_t(st.kv_cache_mb) << 20;
  pc.kv_cache_type = st.kv_cache_type == "f32" ? TensorType::F32 : TensorType::F16;
  pc.kv_block_tokens = st.kv_block_tokens;
  pc.prefix_cache = st.prefix_cache;
  pc.scheduler.max_sequences_per_step = st.max_batch;
  pc.scheduler.step_token_budget = st.step_token_budget;
  pc.scheduler.prefill_chunk = std::min(st.prefill_chunk, st.step_token_budget);
  pc.scheduler.max_waiting = st.max_waiting;
  pc.scheduler.max_running = st.max_running;
  pc.scheduler.pacing = st.pacing;
  pc.scheduler.client_window = st.client_window;
  pc.pacing.low_watermark_s = st.low_watermark_ms / 1000.0;
  pc.pacing.high_watermark_s = st.high_watermark_ms / 1000.0;
  const int caf_threads = st.caf_workers;
  if (Status s = pc.validate(); !s) return fail(s.message());

  std::unique_ptr<Backend> backend;
  try {
    backend = make_backend(st);
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  auto model = Model::load(model_path, *backend);
  if (!model) return fail(model.error().message);
  auto tok = Tokenizer::from_gguf((*model)->file());
  if (!tok) return fail(tok.error().message);
  std::shared_ptr<const Tokenizer> tokenizer(std::move(tok).value());
  auto tmpl = (*model)->file().get_string("tokenizer.chat_template");
  sc.chat_template = tmpl && *tmpl ? http::detect_chat_template(**tmpl) : http::ChatTemplate::Plain;
  sc.model_name = (*model)->hparams().name.empty() ? "tutti" : (*model)->hparams().name;
  sc.modalities = (*model)->config().modalities;
  if (const uint32_t context = (*model)->hparams().n_ctx_train; context > 0)
    sc.max_conversation_tokens = std::min(sc.max_conversation_tokens, int(context));

  // Block the signals in every thread the runtime starts; the main thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  caf::actor_system_config cfg;
  actors::configure_for_compute(cfg, caf_threads);
  caf::actor_system system{cfg};
  auto pipe = actors::spawn_pipeline(system, **model, tokenizer, pc);
  if (!pipe) return fail(pipe.error().message);
  http::HttpServer server(system, *pipe, sc);
  auto bound = server.start();
  if (!bound) return fail(bound.error().message);
  std::fprintf(stderr, "tutti: serving %s (%s, chat template %s) on http://%s:%u with %s; %s; ledger %s\n", model_path.c_str(),
               sc.model_name.c_str(), http::chat_template_name(sc.chat_template), sc.host.c_str(), unsigned(*bound),
               backend->describe().c_str(),
               sc.api_keys.enabled() ? (std::to_string(sc.api_keys.size()) + " API key(s) required").c_str() : "open (no API keys)",
               sc.ledger_path.empty() ? "off" : sc.ledger_path.c_str());
  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "tutti: signal %d, draining for up to %.0f s\n", sig, st.drain_seconds);
  const int cut = server.drain(st.drain_seconds);
  std::fprintf(stderr, "tutti: stopped (%d generation(s) cut short); %llu usage record(s) written\n", cut,
               static_cast<unsigned long long>(server.metrics().ledger_records.load()));
  caf::anon_send_exit(pipe->encoder, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(pipe->executor, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(pipe->decoder, caf::exit_reason::user_shutdown);
  return 0;
}

}  // namespace tutti::cli
