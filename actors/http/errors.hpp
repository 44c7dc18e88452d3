// Errors in the protocols' own forms, mapped once from the typed ErrorCode
// (pipeline/expected.h) that travels through the actors: to an HTTP status with OpenAI's
// error object, and to a Realtime `error` event. Nothing here reads a message to learn what
// went wrong; the code says it.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "pipeline/expected.h"

namespace tutti::http {

// An error as a client is answered with it. `code` is the category; `detail` is an optional
// finer wire code some endpoints have always used (input_audio_buffer_commit_empty,
// audio_not_supported, video_not_found): presentation only, it never changes the category.
struct ApiError {
  ApiError(ErrorCode c = ErrorCode::invalid_request, std::string m = "", std::string p = "", double retry = 0, std::string d = "")
      : code(c), message(std::move(m)), param(std::move(p)), retry_after_s(retry), detail(std::move(d)) {}
  ErrorCode code = ErrorCode::invalid_request;
  std::string message;
  std::string param;
  double retry_after_s = 0;  // > 0: a Retry-After header (limits, busy, shutting down)
  std::string detail;

  int status() const;                // the HTTP status
  double retry_after() const;        // retry_after_s, or the code's own hint (busy: 1 s)
  const char* type() const;          // OpenAI's error type: invalid_request_error, rate_limit_error, ...
  nlohmann::json wire_code() const;  // the error object's `code` (null where OpenAI sends none)
  std::string body() const;          // {"error": {message, type, param, code}}
  // The Realtime `error` event: {"type": "error", "error": {type, code, message, param, event_id}}.
  nlohmann::json realtime_event(const std::string& client_event_id) const;
};

// A refusal by the server's limits (the key's, the job slots, a drain) rather than a mistake
// in the request: recorded in the ledger as `refused`.
inline bool is_refusal(ErrorCode c) {
  return c == ErrorCode::rate_limited || c == ErrorCode::too_many_sessions || c == ErrorCode::token_quota_exceeded ||
         c == ErrorCode::too_many_jobs || c == ErrorCode::shutting_down || c == ErrorCode::busy || c == ErrorCode::modality_unavailable;
}

// A request's own mistake, naming the field.
inline ApiError invalid_request(std::string message, std::string param = "") {
  return ApiError{ErrorCode::invalid_request, std::move(message), std::move(param)};
}
// An Error from below (a Status, an Expected) keeps its code.
inline ApiError api_error(const Error& e) { return ApiError{e.code, e.message}; }

}  // namespace tutti::http
