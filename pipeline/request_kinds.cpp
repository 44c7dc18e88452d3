#include "pipeline/request_kinds.h"

namespace tutti {

namespace {
constexpr const char* kModalityNames[] = {"text", "audio", "image", "video", "music"};
}

const char* modality_name(Modality m) { return kModalityNames[int(m)]; }

std::optional<Modality> parse_modality(const std::string& name) {
  for (int i = 0; i < 5; ++i)
    if (name == kModalityNames[i]) return Modality(i);
  return std::nullopt;
}

const char* request_class_name(RequestClass c) {
  switch (c) {
    case RequestClass::Realtime: return "realtime";
    case RequestClass::Interactive: return "interactive";
    case RequestClass::Batch: return "batch";
  }
  return "unknown";
}

std::optional<RequestClass> parse_request_class(const std::string& name) {
  for (RequestClass c : {RequestClass::Realtime, RequestClass::Interactive, RequestClass::Batch})
    if (name == request_class_name(c)) return c;
  return std::nullopt;
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "none";
    case FinishReason::Length: return "length";
    case FinishReason::Stop: return "stop";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "unknown";
}

const char* error_code_name(ErrorCode c) {
  switch (c) {
    case ErrorCode::none: return "none";
    case ErrorCode::invalid_request: return "invalid_request";
    case ErrorCode::model_not_found: return "model_not_found";
    case ErrorCode::unsupported_modality: return "unsupported_modality";
    case ErrorCode::context_length_exceeded: return "context_length_exceeded";
    case ErrorCode::busy: return "busy";
    case ErrorCode::rate_limited: return "rate_limited";
    case ErrorCode::too_many_sessions: return "too_many_sessions";
    case ErrorCode::token_quota_exceeded: return "token_quota_exceeded";
    case ErrorCode::unauthorized: return "unauthorized";
    case ErrorCode::not_found: return "not_found";
    case ErrorCode::method_not_allowed: return "method_not_allowed";
    case ErrorCode::request_too_large: return "request_too_large";
    case ErrorCode::too_many_connections: return "too_many_connections";
    case ErrorCode::too_many_jobs: return "too_many_jobs";
    case ErrorCode::not_ready: return "not_ready";
    case ErrorCode::generation_failed: return "generation_failed";
    case ErrorCode::cancelled: return "cancelled";
    case ErrorCode::shutting_down: return "shutting_down";
    case ErrorCode::modality_unavailable: return "modality_unavailable";
    case ErrorCode::forbidden: return "forbidden";
    case ErrorCode::conflict: return "conflict";
    case ErrorCode::executor_lost: return "executor_lost";
    case ErrorCode::executor_unavailable: return "executor_unavailable";
  }
  return "unknown";
}

}  // namespace tutti
