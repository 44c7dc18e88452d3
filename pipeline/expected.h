// Error model for the pipeline: functions that can fail on bad input (files, text, capacity)
// return Expected<T> (a value or an Error), never throw and never abort. Invariants that only
// a bug could break are asserts. Callers turn an Error into their protocol's own form.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace tutti {

// What kind of failure an Error is: the category the protocols at the edge answer with
// (actors/http/errors.cpp maps each code once to HTTP and once to Realtime error events).
// It travels with the error from where it happens (the scheduler knows "busy", the encoder
// "invalid_request") so that no one downstream has to read the message to learn it.
// Names follow OpenAI's error codes where OpenAI has one.
enum class ErrorCode : uint8_t {
  none = 0,
  invalid_request,          // the request itself is wrong (a field, a prompt, a sampling value)
  model_not_found,          // names a model this server does not serve
  unsupported_modality,     // asks for a modality the model lacks
  context_length_exceeded,  // prompt plus answer do not fit the context (the KV cache)
  busy,                     // the server's queue is full: retry
  rate_limited,             // the key's requests per minute
  too_many_sessions,        // the key's concurrent sessions
  token_quota_exceeded,     // the key's tokens per minute in a modality
  unauthorized,             // no key, or a key that is not valid
  not_found,                // no such route, video or stream
  method_not_allowed,
  request_too_large,        // the body exceeds max_body_bytes
  too_many_connections,
  too_many_jobs,            // video jobs in flight
  not_ready,                // a video that is not finished yet
  generation_failed,        // the model, the decoder or an encoder failed while answering
  cancelled,                // the client (or a barge-in, or DELETE) cancelled it
  shutting_down,            // the server is draining
  modality_unavailable,     // the model's modality is unhealthy and no fallback can answer it
  forbidden,                // a valid key without the right (admin endpoints)
  conflict,                 // the thing is busy with the same operation (a model's reload)
  executor_lost,            // the executor node running it died, hung or left (a cluster ingress)
  executor_unavailable,     // no executor node serves the model now (a cluster ingress): retry
};
const char* error_code_name(ErrorCode c);
inline std::string to_string(ErrorCode c) { return error_code_name(c); }

struct Error {
  std::string message;
  ErrorCode code = ErrorCode::invalid_request;
};

template <class T>
class [[nodiscard]] Expected {
 public:
  Expected(T value) : v_(std::move(value)) {}
  Expected(Error error) : v_(std::move(error)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const { assert(!ok()); return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

// For operations that produce nothing but can fail.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error.message)), code_(error.code), failed_(true) {}
  static Status Ok() { return Status(); }

  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  const std::string& message() const { return error_; }
  ErrorCode code() const { return code_; }
  Error error() const { return Error{error_, code_}; }

 private:
  std::string error_;
  ErrorCode code_ = ErrorCode::none;
  bool failed_ = false;
};

}  // namespace tutti
