// tutti serve: the server. Loads the model, spawns the actor pipeline, serves HTTP until
// SIGINT or SIGTERM.
#include <csignal>
#include <cstdio>

#include "actors/http/server.hpp"
#include "actors/pipeline.hpp"
#include "tools/tutti/commands.h"
#include "tools/tutti/engine.h"

namespace tutti::cli {

int cmd_serve(const std::vector<std::string>& argv) {
  auto opts = engine_options();
  for (auto o : {"host", "port", "max-batch", "step-budget", "max-tokens", "max-waiting", "caf-threads"}) opts.insert(o);
  Args args(argv, opts, {});
  if (!args.ok()) return fail(args.error());
  EngineConfig ec;
  if (args.has("config")) {
    auto c = load_engine_config(args.get("config"));
    if (!c) return fail(c.error().message);
    ec = *c;
  }
  const std::string model_path = args.get("model", ec.model.empty() ? default_model_path() : ec.model);
  http::ServerConfig sc;
  sc.host = args.get("host", "127.0.0.1");
  const long long port = args.get_int("port", 8080);
  sc.max_tokens = int(args.get_int("max-tokens", 1024));
  actors::PipelineConfig pc;
  pc.kv_cache_bytes = size_t(args.get_int("kv-cache-mb", static_cast<long long>(ec.kv_cache_bytes >> 20))) << 20;
  pc.kv_cache_type = args.get("kv-cache-type", ec.kv_cache_type) == "f32" ? TensorType::F32 : TensorType::F16;
  pc.scheduler.max_sequences_per_step = int(args.get_int("max-batch", 32));
  pc.scheduler.step_token_budget = int(args.get_int("step-budget", 512));
  pc.scheduler.prefill_chunk = std::min(pc.scheduler.step_token_budget, ec.prefill_chunk);
  pc.scheduler.max_waiting = int(args.get_int("max-waiting", 64));
  const int threads = int(args.get_int("threads", ec.threads));
  const int caf_threads = int(args.get_int("caf-threads", 2));
  if (!args.ok()) return fail(args.error());
  if (port < 0 || port > 65535) return fail("--port must be 0..65535");
  sc.port = uint16_t(port);
  if (Status s = pc.validate(); !s) return fail(s.message());

  std::unique_ptr<Backend> backend;
  try {
    backend = make_cpu_backend({threads, args.get("kernels", ec.kernels)});
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

  // Block the signals in every thread the runtime starts; the main thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  caf::actor_system_config cfg;
  cfg.set("scheduler.max-threads", caf_threads);
  cfg.set("scheduler.max-throughput", 100);
  caf::actor_system system{cfg};
  auto pipe = actors::spawn_pipeline(system, **model, tokenizer, pc);
  if (!pipe) return fail(pipe.error().message);
  http::HttpServer server(system, *pipe, sc);
  auto bound = server.start();
  if (!bound) return fail(bound.error().message);
  std::fprintf(stderr, "tutti: serving %s (%s, chat template %s) on http://%s:%u with %s\n", model_path.c_str(),
               sc.model_name.c_str(), http::chat_template_name(sc.chat_template), sc.host.c_str(), unsigned(*bound),
               backend->describe().c_str());
  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "tutti: signal %d, shutting down\n", sig);
  server.stop();
  caf::anon_send_exit(pipe->encoder, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(pipe->executor, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(pipe->decoder, caf::exit_reason::user_shutdown);
  return 0;
}

}  // namespace tutti::cli
