// /v1/admin/models (every model in detail), /v1/admin/models/{name}/reload and
// /v1/admin/models/{name}/canary: an admin key's ([access] admin_keys) view of and levers on
// the served models (the route table refuses other keys with 403).
#include "actors/http/handlers/handlers.hpp"

#include <chrono>

#include "actors/http/generation.hpp"
#include "actors/http/models.hpp"

namespace tutti::http {

namespace {

json report_json(const std::string& name, const ReloadReport& r) {
  json j = {{"object", "model.reload"}, {"model", name}, {"ok", r.ok}, {"file", r.file}, {"load_seconds", r.load_seconds},
            {"rss_before_bytes", r.rss_before}, {"peak_rss_bytes", r.peak_rss}};
  if (r.ok) j["version"] = r.version;
  else j["reason"] = r.reason;
  return j;
}

// Holds the exchange's answer while the loader thread works; dropped (and the answer with
// it) if the client goes away first. The reload itself goes on either way.
struct PendingAnswer final : GenerationOwner {
  explicit PendingAnswer(HttpExchange& e) : ex(e) {}
  HttpExchange& ex;
  void on_end(const GenerationEnd&) override {}
};

}  // namespace

void handle_admin_models(HttpExchange& ex) {
  ex.respond_json(200, json{{"object", "list"}, {"models", ex.server().models->health_json(true)}}.dump());
}

void handle_model_reload(HttpExchange& ex) {
  ServerState& srv = ex.server();
  const std::string name = ex.params().at(0);
  std::string file;
  if (!ex.body().empty()) {
    const json body = json::parse(ex.body(), nullptr, false);
    if (body.is_discarded() || !body.is_object()) return ex.respond_error(invalid_request("the body must be a JSON object"));
    if (auto it = body.find("file"); it != body.end() && !it->is_null()) {
      if (!it->is_string() || it->get<std::string>().empty()) return ex.respond_error(invalid_request("'file' must be a path", "file"));
      file = it->get<std::string>();
    }
  }
  auto answer = std::make_shared<PendingAnswer>(ex);
  std::weak_ptr<PendingAnswer> weak = answer;
  auto refused = srv.models->reload(name, file, [weak, io = srv.io_gate, name](const ReloadReport& r) {
    io->post([weak, name, r] {
      auto a = weak.lock();
      if (!a) return;
      if (r.ok) return a->ex.respond_json(200, report_json(name, r).dump());
      // Refused: the reason, and the old weights keep serving.
      ApiError e{ErrorCode::invalid_request, "the reload of " + name + " was refused: " + r.reason, "file"};
      a->ex.respond_error(e);
    });
  });
  if (refused) return ex.respond_error(*refused);
  ex.keep(answer, {});
}

void handle_model_canary(HttpExchange& ex) {
  ServerState& srv = ex.server();
  ModelSlot* slot = nullptr;
  for (ModelSlot* s : srv.models->slots())
    if (s->name() == ex.params().at(0)) slot = s;
  if (!slot) return ex.respond_error(ApiError{ErrorCode::not_found, "no model named " + ex.params().at(0), "", 0, "model_not_found"});
  auto inst = slot->current();
  if (!inst) return ex.respond_error(ApiError{ErrorCode::modality_unavailable, "model " + slot->name() + " is not loaded"});
  if (inst->pipe.remote)
    return ex.respond_error(invalid_request("this server is a cluster ingress: each executor node runs its own canaries (POST this there)"));
  struct Verdicts {
    json by_modality = json::object();
    bool all_passed = true;
  };
  auto out = std::make_shared<Verdicts>();
  // The checks run on the model's executor between its steps; a media worker waits for them
  // (each is well under a second; the timeout bounds a stuck executor).
  ex.off_thread(
      [&system = srv.system, inst, out] {
        caf::scoped_actor self{system};
        for (Modality m : codecs::canary_modalities(inst->facts.modalities)) {
          bool passed = false;
          self->request(inst->pipe.executor, std::chrono::seconds(30), actors::canary_atom::value, m)
              .receive([&](bool ok) { passed = ok; }, [&](caf::error&) { passed = false; });
          out->all_passed = out->all_passed && passed;
          out->by_modality[modality_name(m)] = passed ? "passed" : "failed";
        }
      },
      [&ex, inst, out] {
        json health = json::object();
        for (const auto& e : inst->health->snapshot()) {
          json mj = {{"state", e.healthy ? "healthy" : "degraded"}, {"passes_in_a_row", e.streak}, {"seconds", e.last_seconds}};
          if (!e.reason.empty()) mj["last_failure"] = e.reason;
          health[modality_name(e.modality)] = mj;
        }
        ex.respond_json(200, json{{"object", "model.canary"}, {"model", inst->name}, {"passed", out->all_passed},
                                  {"checks", out->by_modality}, {"health", health}}
                                 .dump());
      });
}

// GET /v1/admin/cluster: a cluster ingress's executor nodes (tutti cluster status).
void handle_admin_cluster(HttpExchange& ex) {
  ServerState& srv = ex.server();
  if (!srv.models->placement)
    return ex.respond_error(ApiError{ErrorCode::not_found, "this server is not a cluster ingress (tutti serve --role ingress)"});
  json status = srv.models->placement->status_json();
  status["object"] = "cluster";
  ex.respond_json(200, status.dump());
}

}  // namespace tutti::http
