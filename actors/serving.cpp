#include "actors/serving.hpp"

#include <chrono>
#include <thread>

namespace tutti {


std::unique_ptr<Serving> Serving::with_actor_system(const Options& o) {
  std::unique_ptr<Serving> s(new Serving);
  actors::configure_for_compute(s->caf_config_, o.caf_workers);
  if (o.configure_actors) o.configure_actors(s->caf_config_);
  s->system_ = std::make_unique<caf::actor_system>(s->caf_config_);
  return s;
}

Expected<std::unique_ptr<Serving>> Serving::start(Model& model, std::shared_ptr<const Tokenizer> tokenizer, Options o) {
  std::unique_ptr<Serving> s = with_actor_system(o);
  o.server.fit_to(model);
  ModelEntry entry;
  entry.name = o.server.model_name;
  entry.file = model.file().path();
  auto slot = std::make_unique<http::ModelSlot>(entry);
  auto inst = http::borrow_model_instance(*s->system_, model, std::move(tokenizer), http::load_options_for(o.engine, o.pipeline, entry), slot->baselines);
  if (!inst) return inst.error();
  slot->replace(*inst);
  std::vector<std::unique_ptr<http::ModelSlot>> slots;
  slots.push_back(std::move(slot));
  s->models_ = std::make_shared<http::ModelRegistry>(std::move(slots), o.server.model_aliases);
  s->models_->system = s->system_.get();
  s->models_->load_options = [engine = o.engine, pipeline = o.pipeline](const ModelEntry& e) { return http::load_options_for(engine, pipeline, e); };
  return serve(std::move(s), std::move(o));
}

Expected<std::unique_ptr<Serving>> Serving::start(Options o) {
  const Settings engine = o.engine;
  const actors::PipelineConfig pipeline = o.pipeline;
  return start(std::move(o), [&](caf::actor_system& system) { return http::load_models(system, engine, pipeline); });
}

Expected<std::unique_ptr<Serving>> Serving::start(Options o, const ModelSource& source) {
  std::unique_ptr<Serving> s = with_actor_system(o);
  auto models = source(*s->system_);
  if (!models) {
    s->stop();
    return models.error();
  }
  s->models_ = std::move(models).value();
  return serve(std::move(s), std::move(o));
}

Expected<std::unique_ptr<Serving>> Serving::serve(std::unique_ptr<Serving> s, Options o) {
  http::ModelSlot& primary = s->models_->primary();
  if (o.server.model_name.empty()) o.server.model_name = primary.name();  // [[models]]: the first one's name
  o.server.fit_to(primary.current()->facts);
  if (primary.name().empty()) primary.name_as(o.server.model_name);
  primary.current()->name = primary.name();
  s->config_ = o.server;
  s->http_ = std::make_unique<http::HttpServer>(*s->system_, s->models_, std::move(o.server));
  auto port = s->http_->start();
  if (!port) return port.error();
  s->port_ = *port;
  return s;
}

int Serving::drain(double seconds) {
  const int cut = http_ ? http_->drain(seconds) : 0;
  stop();
  return cut;
}

void Serving::stop() {
  if (stopped_) return;
  stopped_ = true;
  for (auto& before : on_stop_) before();
  on_stop_.clear();
  if (http_) http_->stop();
  // The registry lets go of every instance: each one's actors are told to quit once nothing
  // else holds it (what the stopped sessions still hold goes with the HTTP server). Those that
  // quit now are waited for until they are destroyed (a few seconds at most): CAF 0.17's
  // actor system, destroyed while a detached executor's last references are still being let
  // go, can leave that executor's thread waiting forever (seen in the cluster tests: a node
  // stopped right after serving load).
  std::vector<caf::actor_addr> quitting;
  if (models_)
    for (http::ModelSlot* slot : models_->slots()) {
      std::shared_ptr<http::ModelInstance> inst = slot->current();
      slot->replace(nullptr);
      if (inst && !inst->pipe.remote && inst.use_count() == 1)
        for (caf::actor_addr a : {inst->pipe.encoder.address(), inst->pipe.executor.address(), inst->pipe.decoder.address()})
          if (a) quitting.push_back(a);
    }  // the last holder let go: stop_pipeline
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (const caf::actor_addr& a : quitting)
    while (caf::actor_cast<caf::strong_actor_ptr>(a) && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
}

}  // namespace tutti
