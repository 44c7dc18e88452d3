// /v1/streams: FFmpeg streams over ZeroMQ as jobs (the job itself is in stream_job.cpp).
#include "actors/http/handlers/handlers.hpp"
#include "actors/http/stream_job.hpp"

namespace tutti::http {

namespace {
void answer(HttpExchange& ex, std::variant<nlohmann::json, ApiError> r) {
  if (const ApiError* e = std::get_if<ApiError>(&r)) return ex.respond_error(*e);
  ex.respond_json(200, std::get<nlohmann::json>(r).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}
}  // namespace

void handle_stream_create(HttpExchange& ex) { answer(ex, stream_jobs_create(ex.server(), ex.body(), ex.key())); }
void handle_stream_get(HttpExchange& ex) { answer(ex, stream_jobs_get(ex.server(), ex.params().at(0))); }
void handle_stream_delete(HttpExchange& ex) { answer(ex, stream_jobs_delete(ex.server(), ex.params().at(0))); }

}  // namespace tutti::http
