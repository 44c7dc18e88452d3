// /v1/streams: FFmpeg streams over ZeroMQ as jobs (the job itself is in stream_job.cpp).
#include "actors/http/generation.hpp"
#include "actors/http/handlers/handlers.hpp"
#include "actors/http/stream_job.hpp"

namespace tutti::http {

namespace {
void answer(HttpExchange& ex, std::variant<nlohmann::json, ApiError> r) {
  if (const ApiError* e = std::get_if<ApiError>(&r)) return ex.respond_error(*e);
  ex.respond_json(200, std::get<nlohmann::json>(r).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}
}  // namespace

void handle_stream_create(HttpExchange& ex) {
  auto created = stream_jobs_create(ex.server(), ex.body(), ex.key());
  if (const ApiError* e = std::get_if<ApiError>(&created); e && is_refusal(e->code)) {
    GenerationSpec spec;  // a job refused by a limit has its record, as every refusal does
    spec.key = ex.key();
    spec.endpoint = "/v1/streams";
    spec.record_id = ServerState::unguessable_id("stream_");
    Generation::record_refusal(ex.server(), spec, *e);
  }
  answer(ex, std::move(created));
}
void handle_stream_list(HttpExchange& ex) { answer(ex, stream_jobs_list(ex.server(), ex.key(), ex.admin())); }
void handle_stream_get(HttpExchange& ex) { answer(ex, stream_jobs_get(ex.server(), ex.params().at(0), ex.key(), ex.admin())); }
void handle_stream_delete(HttpExchange& ex) { answer(ex, stream_jobs_delete(ex.server(), ex.params().at(0), ex.key(), ex.admin())); }

}  // namespace tutti::http
