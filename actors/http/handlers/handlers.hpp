// The endpoints' handlers, one file per family (the route table in routes.cpp names them):
//   chat.cpp     /v1/chat/completions, /v1/completions (JSON, or server-sent events)
//   audio.cpp    /v1/audio/speech, /v1/music/generations (chunked audio)
//   images.cpp   /v1/images/generations
//   videos.cpp   /v1/videos and /v1/videos/{id}[/content] (jobs: create, poll, fetch)
//   streams.cpp  /v1/streams and /v1/streams/{id} (ZeroMQ stream jobs)
//   info.cpp     /health, /v1/models, /metrics, the browser page
//   admin.cpp    /v1/admin/models/{name}/reload and /canary (admin keys)
// and realtime/upgrade.cpp: /v1/realtime (the WebSocket upgrade).
#pragma once

#include <variant>

#include "actors/http/generation.hpp"
#include "actors/http/http_exchange.hpp"
#include "actors/http/multipart.hpp"

namespace tutti::http {

void handle_chat_completions(HttpExchange& ex);
void handle_completions(HttpExchange& ex);
void handle_speech(HttpExchange& ex);
void handle_music(HttpExchange& ex);
void handle_images(HttpExchange& ex);
void handle_image_edits(HttpExchange& ex);
void handle_transcriptions(HttpExchange& ex);
void handle_translations(HttpExchange& ex);
void handle_responses(HttpExchange& ex);
void handle_video_create(HttpExchange& ex);
void handle_video_list(HttpExchange& ex);
void handle_video_get(HttpExchange& ex);
void handle_video_delete(HttpExchange& ex);
void handle_video_content(HttpExchange& ex);
void handle_stream_create(HttpExchange& ex);
void handle_stream_list(HttpExchange& ex);
void handle_stream_get(HttpExchange& ex);
void handle_stream_delete(HttpExchange& ex);
void handle_health(HttpExchange& ex);
void handle_web_client(HttpExchange& ex);
void handle_models(HttpExchange& ex);
void handle_model(HttpExchange& ex);
void handle_metrics(HttpExchange& ex);
void handle_realtime_upgrade(HttpExchange& ex);
void handle_admin_models(HttpExchange& ex);  // admin.cpp
void handle_admin_cluster(HttpExchange& ex);  // admin.cpp: a cluster ingress's nodes
void handle_model_reload(HttpExchange& ex);
void handle_model_canary(HttpExchange& ex);

// The spec of a generation that answers an HTTP request while its connection waits: the
// request's key and path, the model it asked for, and one of the key's concurrent sessions.
inline GenerationSpec http_generation(const HttpExchange& ex, std::string model, actors::text_request request) {
  GenerationSpec spec;
  spec.key = ex.key();
  spec.endpoint = ex.path();
  spec.model = std::move(model);
  spec.request = std::move(request);
  spec.holds_session = true;
  return spec;
}

// A multipart/form-data body (uploads.cpp), or an error naming what is wrong with it.
std::variant<Form, ApiError> read_form(HttpExchange& ex);
// The body as JSON text: as sent, or a form's fields as a JSON object (clients send either).
std::variant<std::string, ApiError> json_or_form_body(HttpExchange& ex);

// Jobs of `key` running now (video: videos.cpp; stream: stream_job.cpp), for its limit.
int active_video_jobs(ServerState& srv, const std::string& key);
// Refused when `key` already runs its [access] jobs_per_key.
std::optional<ApiError> key_job_limit(ServerState& srv, const std::string& key);

// Video jobs still running are cancelled, stream jobs stopped (on the I/O thread, at stop).
void stop_all_jobs(ServerState& srv);

}  // namespace tutti::http
