// The message flow of the serving pipeline on one page: message types and the typed
// interface of every actor. A request travels
//
//   transport/ingress (one per session) --encode--> encoder --register--> decoder
//                                                     \--submit--> executor --events--> decoder --delta--> sink
//   transport --credit (tokens its client has taken)--> executor
//
// Encoder: turns request content into token ids (off the executor's thread). Executor: owns
// the model's engine (weights, KV cache, scheduler) and runs the step loop; the only place
// the model runs. Decoder: turns each request's new tokens into text deltas, or, for a media
// answer, into media (audio samples, finished frames) through the model's codecs, in order,
// and hands them to the request's sink (the session's transport side, which encodes them in
// the response's format).
//
// Threads: the executor is a detached actor (its own thread, compute); the others are
// event-based on CAF's worker threads and never wait on a step. See docs/architecture.md.
//
// Across machines (docs/scaling.md) the same messages cross nodes through CAF's middleman:
// an executor node joins an ingress with its encoder and executor handles; the ingress's
// sinks then ask the remote encoder, and the remote decoder sends deltas back to them.
//
//   executor node --join (secret, models, load)--> ingress; --beat (load)--> every beat interval
//   ingress sink --encode--> node's encoder;  node's decoder --deltas--> ingress sink
//   ingress --credit, cancel--> node's executor
#pragma once

#include <caf/all.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "actors/cluster/routing.hpp"
#include "pipeline/request_kinds.h"

namespace tutti::actors {

// ---- message payloads

// A text generation request as a transport accepted it.
struct text_request {
  int64_t id = 0;                 // unique per server
  std::string prompt;             // already formatted (chat template applied by the transport)
  int32_t max_tokens = 16;
  float temperature = 0.f;
  float top_p = 1.f;
  int32_t top_k = 0;
  uint64_t seed = 0;
  RequestClass request_class = RequestClass::Interactive;
  double tokens_per_second = 0;               // realtime pacing rate
  double low_watermark_s = -1;                // realtime target lead; -1: the server's default
  double high_watermark_s = -1;
  bool add_special = true;
  bool ignore_eos = false;        // keep generating past end-of-generation tokens (benchmarks)
  // The answer's modality: text, or audio | image | video | music (codes of that modality's
  // range, decoded into media by the decoder). For media, max_tokens counts codes.
  Modality modality = Modality::Text;
  // Token ids spliced into the prompt (audio a user spoke, an image): the prompt names part k
  // with the marker "\x1e" k "\x1f" where it belongs; the text between is tokenized. A chat
  // template's control tokens (<|im_start|>, <|eot_id|>, ...) are named "\x1d" text "\x1f" and
  // become the vocabulary's id for that text. Client text never carries these marker bytes
  // (the transports strip them: http::without_markers).
  std::vector<std::vector<int32_t>> media_parts;
  // Only compute the prompt's K/V, cut right after the last media part, and finish without
  // an answer (the sink gets a final delta, finish "length", no text): a realtime session
  // prefills the speech it has so far while the user is still talking, and the prefix cache
  // keeps it for the turn's real request.
  bool prefill_only = false;
};

// One executor step's outcome for the requests it advanced (parallel arrays).
struct step_events {
  std::vector<int64_t> request;
  std::vector<int32_t> token;       // -1: no token in this event
  std::vector<FinishReason> finish;
  std::vector<ErrorCode> code;      // for FinishReason::Error: what kind of failure
  std::vector<std::string> error;   // its message, for people (never parsed)
};

// What a sink receives: new text of one request, and at the end why it finished.
struct text_delta {
  int64_t request = 0;
  std::string text;
  FinishReason finish = FinishReason::None;  // None until the last delta
  ErrorCode error_code = ErrorCode::none;    // with FinishReason::Error
  std::string error;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  bool last() const { return finish != FinishReason::None; }
};

// What a media answer's sink receives: new audio, or a finished frame, and at the end why it
// finished.
struct media_delta {
  int64_t request = 0;
  std::vector<float> samples;  // audio, music: new mono samples at the modality's rate
  std::vector<uint8_t> rgb;    // image, video: one finished frame (RGB24)
  int32_t width = 0, height = 0;
  int32_t token = -1;          // the generated id this delta decodes (-1: none, as in the final one)
  FinishReason finish = FinishReason::None;  // None until the last delta
  ErrorCode error_code = ErrorCode::none;    // with FinishReason::Error
  std::string error;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  bool last() const { return finish != FinishReason::None; }
};

// The encoder's answer to a request: its prompt's token count, or why it was refused (an
// empty prompt, a marker naming no media part) before it reached the executor.
struct encode_result {
  int32_t prompt_tokens = 0;
  ErrorCode code = ErrorCode::none;
  std::string error;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, text_request& x) {
  return f(caf::meta::type_name("text_request"), x.id, x.prompt, x.max_tokens, x.temperature, x.top_p, x.top_k, x.seed,
           x.request_class, x.tokens_per_second, x.low_watermark_s, x.high_watermark_s, x.add_special, x.ignore_eos,
           x.modality, x.media_parts, x.prefill_only);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, media_delta& x) {
  return f(caf::meta::type_name("media_delta"), x.request, x.samples, x.rgb, x.width, x.height, x.token, x.finish,
           x.error_code, x.error, x.prompt_tokens, x.completion_tokens);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, step_events& x) {
  return f(caf::meta::type_name("step_events"), x.request, x.token, x.finish, x.code, x.error);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, text_delta& x) {
  return f(caf::meta::type_name("text_delta"), x.request, x.text, x.finish, x.error_code, x.error, x.prompt_tokens,
           x.completion_tokens);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, encode_result& x) {
  return f(caf::meta::type_name("encode_result"), x.prompt_tokens, x.code, x.error);
}

// ---- atoms
using encode_atom = caf::atom_constant<caf::atom("encode")>;
using submit_atom = caf::atom_constant<caf::atom("submit")>;
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;
using step_atom = caf::atom_constant<caf::atom("step")>;
using relook_atom = caf::atom_constant<caf::atom("relook")>;
using events_atom = caf::atom_constant<caf::atom("events")>;
using register_atom = caf::atom_constant<caf::atom("register")>;
using delta_atom = caf::atom_constant<caf::atom("delta")>;
using credit_atom = caf::atom_constant<caf::atom("credit")>;
using media_atom = caf::atom_constant<caf::atom("media")>;
using connect_atom = caf::atom_constant<caf::atom("connect")>;
using canary_atom = caf::atom_constant<caf::atom("canary")>;
using join_atom = caf::atom_constant<caf::atom("join")>;
using beat_atom = caf::atom_constant<caf::atom("beat")>;
using leave_atom = caf::atom_constant<caf::atom("leave")>;
using expire_atom = caf::atom_constant<caf::atom("expire")>;

// ---- interfaces

// The transport side of a session: receives the text (or media) of its requests as it is
// produced.
using sink_actor = caf::typed_actor<caf::reacts_to<delta_atom, text_delta>, caf::reacts_to<media_atom, media_delta>>;

// Executor: admits tokenized requests (replies with nothing; a refusal reaches the sink as a
// final delta with the error), cancels, and runs the step loop by sending itself step_atom
// while work remains. At most one step_atom is queued at a time; when work exists but none
// is due (streams ahead of playback), one relook_atom arrives a little later (one timer,
// never a chain per wake-up), so the mailbox never fills with steps ahead of a submit.
//
// Canaries (codecs/model_canary.h) run here too, between steps, one modality per message so
// streams keep their pace: (canary_atom, m) checks one modality, records the verdict in the
// model's ModalityHealth and replies whether it passed; a plain canary_atom starts a round of
// every modality (the periodic timer's, every [health] canary_interval_s).
//
// Backpressure is credit from the far end: a session's transport reports (credit_atom, id,
// n) once its client's socket has taken the first n generated tokens, and the executor runs
// a sequence only while it is less than the client window ahead of that. So every queue
// between executor and socket (decoder, sink, session) holds at most a window of one
// request's tokens, and a client that stops reading pauses only its own sequence.
using executor_actor = caf::typed_actor<caf::reacts_to<submit_atom, text_request, std::vector<int32_t>, sink_actor>,
                                        caf::reacts_to<cancel_atom, int64_t>, caf::reacts_to<credit_atom, int64_t, int32_t>,
                                        caf::reacts_to<step_atom>, caf::reacts_to<relook_atom>,
                                        caf::replies_to<canary_atom, Modality>::with<bool>, caf::reacts_to<canary_atom>>;

// Decoder: learns which sink each request belongs to (its prompt size and answer modality),
// then turns step events into deltas for it. A request's deltas leave in token order.
// It is told the executor once at start (connect_atom): a request whose decoding fails is
// ended with the error and its sequence cancelled there.
using decoder_actor = caf::typed_actor<caf::reacts_to<register_atom, int64_t, int32_t, Modality, sink_actor>,
                                       caf::reacts_to<events_atom, step_events>, caf::reacts_to<connect_atom, executor_actor>>;

// Encoder: tokenizes a request and passes it on; replies with the prompt's token count, or
// the typed reason it was refused (empty prompt, a bad marker) that the transport turns into
// its protocol's form. Refusals after that (busy, too long for the cache, no such modality)
// reach the sink as a final delta with their code.
using encoder_actor = caf::typed_actor<caf::replies_to<encode_atom, text_request, sink_actor>::with<encode_result>>;

// ---- the cluster (actors/cluster/, docs/scaling.md): executor nodes joining an ingress

// One model an executor node serves, as it announces it: the handles of the node's encoder
// and executor that the ingress's generations talk to, and the model's front (a GGUF of the
// file's metadata and codec tensors, without the transformer's weights or the vocabulary's
// arrays: actors/cluster/front.hpp), from which the ingress learns the model's modalities,
// chat template and context and encodes its users' media.
struct node_model {
  std::string name;       // the name it is served under ([[models]] name)
  std::string file;       // on the node (for people)
  int32_t version = 1;    // the node's instance (a reload there makes a new one: announced again)
  uint32_t n_vocab = 0;
  std::vector<uint8_t> front;
  encoder_actor encoder;
  executor_actor executor;
};

// An executor node joining (or, after a reload there, announcing its models again).
struct node_hello {
  std::string secret;    // the cluster's shared secret; compared in constant time
  std::string http_url;  // where the node serves its own /metrics and /health (for people)
  cluster::NodeLoad load;  // its name, models and capacity now
  std::vector<node_model> models;
  // The node's membership loop: the ingress monitors it, so a lost connection (or the loop
  // ending) drops the node at once.
  caf::actor agent;
};

struct join_reply {
  bool accepted = false;
  std::string reason;  // why not (a wrong secret, a model that differs from one already served)
  std::string token;   // the node's, for its beats and its leave
  double beat_interval_s = 1;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_model& x) {
  return f(caf::meta::type_name("node_model"), x.name, x.file, x.version, x.n_vocab, x.front, x.encoder, x.executor);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_hello& x) {
  return f(caf::meta::type_name("node_hello"), x.secret, x.http_url, x.load, x.models, x.agent);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, join_reply& x) {
  return f(caf::meta::type_name("join_reply"), x.accepted, x.reason, x.token, x.beat_interval_s);
}

// Ingress (one per cluster front, published on its cluster port, actors/cluster/ingress.*):
//   join:   a node with the cluster secret and its models is a member (a node with the wrong
//           secret is refused, and the refusal logged); the same node joining again
//           re-announces its models (a reload there) or replaces a lost self;
//   beat:   its load now, every beat interval; false: not a member (dropped while it was
//           silent): join again;
//   leave:  draining (false: nothing new goes there, what runs there finishes), then gone;
//   expire: (its own timer) drops every node silent for longer than [cluster] heartbeat.
// A dropped node's in-flight requests end with executor_lost; its sessions move on their
// next turn.
using ingress_actor = caf::typed_actor<caf::replies_to<join_atom, node_hello>::with<join_reply>,
                                       caf::replies_to<beat_atom, std::string, cluster::NodeLoad>::with<bool>,
                                       caf::reacts_to<leave_atom, std::string, bool>, caf::reacts_to<expire_atom>>;

}  // namespace tutti::actors

namespace tutti::cluster {

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, DegradedModality& x) {
  return f(caf::meta::type_name("degraded_modality"), x.model, x.modality, x.reason);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, NodeLoad& x) {
  return f(caf::meta::type_name("node_load"), x.node, x.models, x.waiting, x.running, x.free_kv_blocks, x.total_kv_blocks,
           x.step_seconds, x.healthy, x.draining, x.degraded);
}

}  // namespace tutti::cluster
