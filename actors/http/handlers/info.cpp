// /health, /v1/models, /metrics and the browser page.
#include "actors/http/handlers/handlers.hpp"

namespace tutti::http {

extern const char* const kWebClientHtml;  // web_client.cpp, generated from web/index.html

// Each model's state per modality (and its last reload); "ok" while every default-model
// modality is healthy, "degraded" otherwise (still 200: the server serves, around it).
void handle_health(HttpExchange& ex) {
  ModelRegistry& models = *ex.server().models;
  auto primary = ex.server().primary();
  const bool ok = primary && primary->health->all_healthy();
  ex.respond_json(200, json{{"status", ok ? "ok" : "degraded"}, {"models", models.health_json(false)}}.dump());
}

// Static; its WebSocket presents the key like any client.
void handle_web_client(HttpExchange& ex) { ex.respond_bytes("text/html; charset=utf-8", kWebClientHtml); }

namespace {
// A model object; an alias says which model answers to it.
json model_object(const std::string& id, const std::string& served) {
  json m = {{"id", id}, {"object", "model"}, {"created", 0}, {"owned_by", "tutti"}};
  if (id != served) m["tutti"] = {{"alias_of", served}};
  return m;
}
}  // namespace

void handle_models(HttpExchange& ex) {
  const ServedModel served = ex.server().models->served();
  json data = json::array({model_object(served.name, served.name)});
  for (const std::string& other : served.others) data.push_back(model_object(other, other));
  for (const std::string& alias : served.aliases) data.push_back(model_object(alias, served.name));
  ex.respond_json(200, json{{"object", "list"}, {"data", data}}.dump());
}

void handle_model(HttpExchange& ex) {
  const ServedModel served = ex.server().models->served();
  const std::string& id = ex.params().at(0);
  if (!served.answers_to(id)) return ex.respond_error(served.not_found(id));
  ex.respond_json(200, model_object(id, served.resolve(id)).dump());
}

void handle_metrics(HttpExchange& ex) {
  const ServerMetrics& m = ex.server().metrics;
  std::string b;
  auto counter = [&](const char* name, const char* help, uint64_t v, const char* type = "counter") {
    b += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " + std::to_string(v) + "\n";
  };
  counter("tutti_http_requests_total", "HTTP requests received.", m.requests);
  counter("tutti_http_errors_total", "Requests answered with an error.", m.errors);
  counter("tutti_prompt_tokens_total", "Prompt tokens of finished generations (every transport).", m.prompt_tokens);
  counter("tutti_completion_tokens_total", "Generated tokens of finished generations (every transport).", m.completion_tokens);
  counter("tutti_http_connections", "Open HTTP connections.", m.active_connections, "gauge");
  counter("tutti_http_connections_refused_total", "Connections refused over the connection limits (all, or per peer address).",
          m.connections_refused);
  counter("tutti_realtime_barge_ins_total", "Responses cut short by the user speaking.", m.barge_ins);
  counter("tutti_realtime_speech_prefills_total", "Prefills of a user's speech started while they were still talking.", m.speech_prefills);
  counter("tutti_realtime_conversation_items_dropped_total", "Oldest realtime conversation items dropped to keep within max_conversation_tokens.",
          m.conversation_items_dropped);
  counter("tutti_auth_failures_total", "Requests refused for a missing or invalid API key.", m.auth_failures);
  counter("tutti_limit_refusals_total", "Requests refused by a key's limits (or while shutting down).", m.limit_refusals);
  counter("tutti_ledger_records_total", "Usage records committed to the ledger.", m.ledger_records);
  counter("tutti_ledger_errors_total", "Usage records the ledger could not commit.", m.ledger_errors);
  counter("tutti_io_thread_exceptions_total", "Exceptions that escaped a handler on the I/O thread (each a bug).", m.io_thread_exceptions);
  counter("tutti_generations_running", "Generations running (HTTP, realtime responses, video and stream jobs).",
          uint64_t(std::max<int64_t>(0, m.generations)), "gauge");
  b += "# HELP tutti_realtime_speech_to_first_audio_seconds End of the user's speech (commit) to the first audio delta sent.\n"
       "# TYPE tutti_realtime_speech_to_first_audio_seconds histogram\n";
  m.speech_to_first_audio.render(b, "tutti_realtime_speech_to_first_audio_seconds", "");
  // The engine's series are the default model's (one unlabelled set, as with one model);
  // every model's health, fallbacks and reloads are labelled by model.
  if (auto primary = ex.server().primary(); primary && primary->pipe.metrics) b += primary->pipe.metrics->render();
  b += ex.server().models->render_metrics();
  ex.respond_bytes("text/plain; version=0.0.4", std::move(b));
}

}  // namespace tutti::http
