// FFmpeg streams over ZeroMQ: a stream job subscribes to an FFmpeg `zmq:` publisher (its
// input URL), demuxes and decodes the MPEG-TS as it arrives, treats the audio as a voice
// conversation (VAD, audio tokens), and publishes each spoken answer as MPEG-TS (AAC) on
// its output URL, which `ffplay zmq:tcp://…` or another ffmpeg reads. Events (speech
// started/stopped, answers, gaps) are kept on the job for GET /v1/streams/{id}.
//
// Threads: a receiver thread (the SUB socket) feeds a ByteQueue; a decoder thread runs
// FFmpeg over it, the VAD and the audio tokenizer, and posts finished turns to the I/O
// thread, which owns the job's state, its generations and the PUB socket. PUB/SUB drops
// what a slow reader misses: the decoder resynchronises on the container and counts gaps.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <variant>

#include "actors/http/errors.hpp"
#include "actors/http/stream_address.hpp"
#include "pipeline/request_kinds.h"

namespace tutti::http {

struct StreamJobRequest {
  std::string input, output, task = "respond";
  StreamAddress input_address, output_address;  // resolved and allowed
  double max_response_seconds = 5;
  // What the answers are: audio (AAC in MPEG-TS on the output), video (H.264 in MPEG-TS on
  // the output) or text (response.output_text.delta events on the job, nothing published).
  Modality modality = Modality::Audio;
};
// zmq:tcp://HOST:PORT URLs for input and output, both inside `allowed` (see
// stream_address.hpp; loopback when not given) and different; task "respond"; modality
// audio|video|text.
std::variant<StreamJobRequest, ApiError> parse_stream_job(const std::string& body, const std::vector<HostRange>& allowed);
std::variant<StreamJobRequest, ApiError> parse_stream_job(const std::string& body);

class ServerState;
// The jobs' endpoints (handlers/streams.cpp calls these), on the I/O thread: the job's JSON,
// or the error. `key`: the name of the key that created the job; its answers are recorded
// under it.
std::variant<nlohmann::json, ApiError> stream_jobs_create(ServerState& srv, const std::string& body, const std::string& key);
// A job is seen (read, listed, stopped) only by the key that created it, or an admin key;
// to any other it does not exist (404).
std::variant<nlohmann::json, ApiError> stream_jobs_list(ServerState& srv, const std::string& key, bool admin);
std::variant<nlohmann::json, ApiError> stream_jobs_get(ServerState& srv, const std::string& id, const std::string& key, bool admin);
std::variant<nlohmann::json, ApiError> stream_jobs_delete(ServerState& srv, const std::string& id, const std::string& key, bool admin);
void stream_jobs_stop_all(ServerState& srv);
int active_stream_jobs(ServerState& srv, const std::string& key);

}  // namespace tutti::http
