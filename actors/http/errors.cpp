#include "actors/http/errors.hpp"

#include <array>

namespace tutti::http {

namespace {

// One row per ErrorCode, in its order: how HTTP and the Realtime API say it.
struct Mapping {
  ErrorCode code;
  int status;
  const char* type;
  const char* http_code;      // nullptr: `code` is null, as OpenAI sends for plain 400s
  const char* realtime_code;  // Realtime error events always carry a code
  double retry_after_s;
};

constexpr Mapping kMappings[] = {
    {ErrorCode::none, 500, "server_error", nullptr, "server_error", 0},
    {ErrorCode::invalid_request, 400, "invalid_request_error", nullptr, "invalid_request", 0},
    {ErrorCode::model_not_found, 404, "invalid_request_error", "model_not_found", "model_not_found", 0},
    {ErrorCode::unsupported_modality, 400, "invalid_request_error", "unsupported_modality", "unsupported_modality", 0},
    {ErrorCode::context_length_exceeded, 400, "invalid_request_error", "context_length_exceeded", "context_length_exceeded", 0},
    {ErrorCode::busy, 429, "rate_limit_error", "server_busy", "server_busy", 1},
    {ErrorCode::rate_limited, 429, "rate_limit_error", "rate_limit_exceeded", "rate_limit_exceeded", 0},
    {ErrorCode::too_many_sessions, 429, "rate_limit_error", "too_many_sessions", "too_many_sessions", 0},
    {ErrorCode::token_quota_exceeded, 429, "rate_limit_error", "token_quota_exceeded", "token_quota_exceeded", 0},
    {ErrorCode::unauthorized, 401, "invalid_request_error", "invalid_api_key", "invalid_api_key", 0},
    {ErrorCode::not_found, 404, "invalid_request_error", "not_found", "not_found", 0},
    {ErrorCode::method_not_allowed, 405, "invalid_request_error", "method_not_allowed", "method_not_allowed", 0},
    {ErrorCode::request_too_large, 413, "invalid_request_error", "request_too_large", "request_too_large", 0},
    {ErrorCode::too_many_connections, 503, "server_error", "too_many_connections", "too_many_connections", 1},
    {ErrorCode::too_many_jobs, 429, "rate_limit_error", "too_many_video_jobs", "too_many_video_jobs", 1},
    {ErrorCode::not_ready, 400, "invalid_request_error", "video_not_ready", "video_not_ready", 0},
    {ErrorCode::generation_failed, 500, "server_error", "generation_failed", "generation_failed", 0},
    {ErrorCode::cancelled, 503, "server_error", "cancelled", "cancelled", 0},
    {ErrorCode::shutting_down, 503, "server_error", "server_shutting_down", "server_shutting_down", 5},
    {ErrorCode::modality_unavailable, 503, "server_error", "modality_unavailable", "modality_unavailable", 30},
    {ErrorCode::forbidden, 403, "invalid_request_error", "insufficient_permissions", "insufficient_permissions", 0},
    {ErrorCode::conflict, 409, "invalid_request_error", "conflict", "conflict", 0},
    {ErrorCode::executor_lost, 503, "server_error", "executor_lost", "executor_lost", 1},
    {ErrorCode::executor_unavailable, 503, "server_error", "executor_unavailable", "executor_unavailable", 2},
};
static_assert(std::size(kMappings) == size_t(ErrorCode::executor_unavailable) + 1, "one mapping per ErrorCode");

const Mapping& mapping(ErrorCode c) {
  const size_t i = size_t(c);
  return i < std::size(kMappings) ? kMappings[i] : kMappings[size_t(ErrorCode::generation_failed)];
}

}  // namespace

int ApiError::status() const { return mapping(code).status; }
const char* ApiError::type() const { return mapping(code).type; }
double ApiError::retry_after() const { return retry_after_s > 0 ? retry_after_s : mapping(code).retry_after_s; }

nlohmann::json ApiError::wire_code() const {
  if (!detail.empty()) return detail;
  const char* c = mapping(code).http_code;
  return c ? nlohmann::json(c) : nlohmann::json(nullptr);
}

std::string ApiError::body() const {
  nlohmann::json e = {{"message", message}, {"type", type()}, {"param", param.empty() ? nlohmann::json(nullptr) : nlohmann::json(param)},
                      {"code", wire_code()}};
  // A message may quote what a client sent (a path, an id) with bytes that are not UTF-8.
  return nlohmann::json{{"error", e}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json ApiError::realtime_event(const std::string& client_event_id) const {
  nlohmann::json e = {{"type", type()}, {"code", detail.empty() ? mapping(code).realtime_code : detail}, {"message", message}};
  e["param"] = param.empty() ? nlohmann::json(nullptr) : nlohmann::json(param);
  e["event_id"] = client_event_id.empty() ? nlohmann::json(nullptr) : nlohmann::json(client_event_id);
  if (retry_after() > 0) e["retry_after_s"] = retry_after();
  return {{"type", "error"}, {"error", e}};
}

}  // namespace tutti::http
