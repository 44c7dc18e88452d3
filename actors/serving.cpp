#include "actors/serving.hpp"

namespace tutti {

Expected<std::unique_ptr<Serving>> Serving::start(Model& model, std::shared_ptr<const Tokenizer> tokenizer, Options o) {
  std::unique_ptr<Serving> s(new Serving);
  actors::configure_for_compute(s->caf_config_, o.caf_workers);
  s->system_ = std::make_unique<caf::actor_system>(s->caf_config_);
  auto pipe = actors::spawn_pipeline(*s->system_, model, std::move(tokenizer), o.pipeline);
  if (!pipe) return pipe.error();
  s->pipe_ = *pipe;
  o.server.fit_to(model);
  s->config_ = o.server;
  s->http_ = std::make_unique<http::HttpServer>(*s->system_, s->pipe_, std::move(o.server));
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
  if (http_) http_->stop();
  if (pipe_.executor) actors::stop_pipeline(pipe_);
}

}  // namespace tutti
