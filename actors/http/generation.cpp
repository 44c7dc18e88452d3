#include "actors/http/generation.hpp"

#include <chrono>

namespace tutti::http {

using namespace tutti::actors;

Outcome outcome_of(FinishReason finish, Modality answer) {
  switch (finish) {
    case FinishReason::Stop: return Outcome::Completed;
    case FinishReason::Length: return answer == Modality::Text ? Outcome::Incomplete : Outcome::Completed;
    case FinishReason::Cancelled: return Outcome::Cancelled;
    case FinishReason::None:
    case FinishReason::Error: return Outcome::Failed;
  }
  return Outcome::Failed;
}

const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::Completed: return "completed";
    case Outcome::Incomplete: return "incomplete";
    case Outcome::Cancelled: return "cancelled";
    case Outcome::Failed: return "failed";
    case Outcome::Refused: return "refused";
  }
  return "failed";
}

namespace {

// The one place a usage record is built.
access::UsageRecord usage_record(const GenerationSpec& spec, int64_t request_id, Outcome outcome, const std::string& error,
                                 const GenerationEnd* end) {
  access::UsageRecord r;
  r.request_id = !spec.record_id.empty() ? spec.record_id : "http-" + std::to_string(request_id);
  r.key = spec.key;
  r.model = !spec.served_by.empty() ? spec.served_by : spec.model;
  r.fallback = spec.fallback;
  if (spec.instance) r.node = spec.instance->node;
  r.endpoint = spec.endpoint;
  r.request_class = request_class_name(spec.request.request_class);
  r.outcome = outcome_name(outcome);
  r.error = error;
  if (end) {
    r.started_at = end->started_at;
    r.first_output_s = end->first_output_s;
    for (const auto& [m, n] : end->tokens_in) r.tokens_in[modality_name(m)] = n;
    for (const auto& [m, n] : end->tokens_out) r.tokens_out[modality_name(m)] = n;
  } else {
    r.started_at = ServerState::unix_seconds();
  }
  return r;
}

// The per-generation sink: asks the encoder to start the request, then hands every delta
// to the generation on the I/O thread, and quits after the last. A media answer's sink turns
// its deltas into the response's bytes here (`media`, on this CAF worker), so encoding MP3
// or H.264 never holds the I/O thread. The generation may be gone by the time a post runs
// (weak pointer): the post is then a no-op. On a cluster ingress the encoder is another
// node's, and the sink watches that node's guard: the node lost, the generation ends with
// executor_lost (and the encoder's answer is awaited only so long).
sink_actor spawn_sink(ServerState& srv, const PipelineHandles& pipe, const text_request& request, std::weak_ptr<Generation> weak,
                      std::shared_ptr<MediaOutput> media) {
  const std::shared_ptr<IoGate> io = srv.io_gate;  // not srv.ioc: the sink may outlive the server
  const encoder_actor encoder = pipe.encoder;
  const caf::actor guard = pipe.node_guard;
  const auto encode_timeout = caf::duration{std::chrono::milliseconds(int64_t(srv.cfg.encode_timeout_s * 1000))};
  return srv.system.spawn([=](sink_actor::pointer self) -> sink_actor::behavior_type {
    if (guard) {
      self->monitor(guard);
      self->set_down_handler([=](caf::down_msg&) {
        io->post([weak] { if (auto g = weak.lock()) g->executor_lost("the executor node running it was lost (it died, hung or left)"); });
        self->quit();
      });
    }
    self->request(encoder, encode_timeout, encode_atom::value, request, caf::actor_cast<sink_actor>(self))
        .then(
            [=](const encode_result& r) {
              io->post([weak, r] { if (auto g = weak.lock()) g->accepted(r); });
              if (r.code != ErrorCode::none) self->quit();
            },
            [=](caf::error& e) {
              std::string why = "the pipeline did not take the request: " + self->system().render(e);
              io->post([weak, why] { if (auto g = weak.lock()) g->failed_to_start(why); });
              self->quit();
            });
    return {[=](delta_atom, text_delta d) {
              const bool last = d.last();
              io->post([weak, d = std::move(d)] { if (auto g = weak.lock()) g->text(d); });
              if (last) self->quit();
            },
            [=](media_atom, const media_delta& d) {
              if (!media) return;  // a text request never gets media deltas
              MediaChunk chunk;
              try {  // a failure encoding this answer ends it with the reason, nothing else
                chunk = media->on_delta(d);
              } catch (const std::exception& e) {
                chunk.done = true;
                chunk.error = std::string("encoding the answer failed: ") + e.what();
              }
              if (d.token >= 0) chunk.tokens.push_back(d.token);
              media_delta meta;  // what the generation needs of the delta: not its samples
              meta.request = d.request, meta.token = d.token, meta.finish = d.finish, meta.error_code = d.error_code;
              meta.error = d.error, meta.prompt_tokens = d.prompt_tokens, meta.completion_tokens = d.completion_tokens;
              const bool last = chunk.done || d.last() || !chunk.error.empty();
              io->post([weak, chunk = std::move(chunk), meta = std::move(meta)]() mutable {
                if (auto g = weak.lock()) g->media(std::move(chunk), meta);
              });
              if (last) self->quit();
            }};
  });
}

}  // namespace

double monotonic_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

AdmissionRequest admission_request_of(const actors::text_request& r) {
  AdmissionRequest a;
  a.cls = r.request_class;
  a.max_new_tokens = std::max(1, r.max_tokens);
  if (r.request_class == RequestClass::Realtime) {
    // A realtime answer's prompt is its conversation, mostly in the prefix cache already
    // (prefilled while the user spoke); the scheduler, which can look, counts what is not.
    a.tokens_per_second = r.tokens_per_second;
    return a;
  }
  size_t media = 0;
  for (const auto& part : r.media_parts) media += part.size();
  a.prompt_tokens = int(r.prompt.size() / 4 + media);  // about 4 bytes a token before encoding
  return a;
}

Modality routing_modality(const GenerationSpec& spec) {
  if (spec.request.modality != Modality::Text) return spec.request.modality;
  return spec.route_as.value_or(Modality::Text);
}

std::variant<std::shared_ptr<Generation>, ApiError> Generation::start(ServerState& srv, GenerationSpec spec,
                                                                      std::weak_ptr<GenerationOwner> owner) {
  if (spec.request.id == 0) spec.request.id = srv.next_id++;
  if (!spec.instance) {
    const PlacementHint hint{spec.request.modality, spec.request.prompt, spec.sticky};
    auto routed = srv.models->route(spec.model, routing_modality(spec), true, hint);
    if (auto* e = std::get_if<ApiError>(&routed)) {
      record_refusal(srv, spec, *e);
      return *e;
    }
    ModelRoute& r = std::get<ModelRoute>(routed);
    spec.instance = std::move(r.instance);
    spec.served_by = r.served_by;
    spec.fallback = r.fallback;
  }
  if (spec.served_by.empty()) spec.served_by = spec.instance->name;
  const actors::PipelineHandles& pipe = spec.instance->pipe;
  if (spec.accounted)
    if (auto refusal = srv.admit(spec.key, spec.request.modality, spec.holds_session, spec.check_limits)) {
      ApiError e{refusal->code, refusal->message, "", refusal->retry_after_s};
      record_refusal(srv, spec, e);
      return e;
    }
  // The engine's admission (its realtime capacity, the predicted wait), decided here on the
  // load the executor last published: a refusal never waits for the step in progress.
  if (!spec.request.prefill_only && pipe.admission) {
    const AdmissionDecision d = pipe.admission->admit(spec.request.id, admission_request_of(spec.request), monotonic_seconds());
    if (!d.admitted()) {
      if (spec.accounted && spec.holds_session && spec.check_limits) srv.limiter.end_session(spec.key);  // admitted above
      if (pipe.metrics) {
        const size_t cls = size_t(spec.request.request_class);
        pipe.metrics->refused_front[cls][size_t(d.outcome)]++;
        pipe.metrics->requests_refused[cls]++;
      }
      ApiError e{ErrorCode::busy, d.message, "", d.retry_after_s};
      record_refusal(srv, spec, e);
      return e;
    }
  }
  // What it may produce is held against the key's quota before it starts, so concurrent
  // answers cannot overdraw it together. An answer the quota cannot hold whole is cut to
  // what it can (the engine stops there, as at max_tokens); an image or a video, whose
  // length is its grid, is refused instead.
  int64_t reserved = 0;
  if (spec.accounted) {
    const std::string out = modality_name(spec.request.modality);
    const int64_t wanted = int64_t(spec.request.max_tokens) * std::max(1, spec.parts);
    reserved = srv.limiter.reserve(spec.key, out, wanted, ServerState::unix_seconds());
    const bool whole_only = spec.request.modality == Modality::Image || spec.request.modality == Modality::Video;
    if (reserved <= 0 || (whole_only && reserved < wanted)) {
      srv.limiter.unreserve(spec.key, out, reserved);
      if (spec.holds_session) srv.limiter.end_session(spec.key);  // admitted above
      ApiError e{ErrorCode::token_quota_exceeded, "the key's token quota is used up", "", 1};
      record_refusal(srv, spec, e);
      return e;
    }
    if (reserved < wanted) spec.request.max_tokens = int32_t(reserved);
  }
  if (spec.instance->generations++ == 0) spec.instance->first_generation_at = ServerState::unix_seconds();
  auto g = std::make_shared<Generation>(srv, std::move(spec), std::move(owner));
  g->reserved_ = reserved;
  g->launch_part();
  return g;
}

void Generation::record_refusal(ServerState& srv, const GenerationSpec& spec, const ApiError& e) {
  if (!spec.accounted) return;
  const json code = e.wire_code();
  srv.account(usage_record(spec, spec.request.id, Outcome::Refused, code.is_string() ? code.get<std::string>() : e.message, nullptr));
}

Generation::Generation(ServerState& srv, GenerationSpec spec, std::weak_ptr<GenerationOwner> owner)
    : srv_(srv), spec_(std::move(spec)), owner_(std::move(owner)), request_(spec_.request) {
  started_at_ = ServerState::unix_seconds();
  if (spec_.accounted) {
    holding_ = true;
    srv_.metrics.generations++;
  }
}

Generation::~Generation() {
  if (ended_) return;
  // The owner let go first: its client went away, or the server stopped.
  cancel();
  if (sink_) caf::anon_send_exit(sink_, caf::exit_reason::user_shutdown);
  finish(FinishReason::Cancelled, ErrorCode::cancelled, "the client went away or the server stopped", false);
}

void Generation::launch_part() {
  request_ = spec_.request;
  if (parts_done_ > 0) request_.id = srv_.next_id++;
  if (spec_.seed_from_id) request_.seed = uint64_t(request_.id);  // n images differ
  credited_ = 0;
  prompt_now_ = output_now_ = 0;
  sink_ = spawn_sink(srv_, spec_.instance->pipe, request_, weak_from_this(), spec_.output ? spec_.output() : nullptr);
}

void Generation::delivered(int32_t tokens) {
  if (ended_ || tokens <= credited_) return;
  credited_ = tokens;
  caf::anon_send(spec_.instance->pipe.executor, credit_atom::value, request_.id, tokens);
}

void Generation::cancel() {
  if (!ended_ && spec_.instance) caf::anon_send<caf::message_priority::high>(spec_.instance->pipe.executor, cancel_atom::value, request_.id);
}

void Generation::abandon(const std::string& why) {
  if (ended_) return;
  cancel();
  if (sink_) caf::anon_send_exit(sink_, caf::exit_reason::user_shutdown);
  finish(FinishReason::Cancelled, ErrorCode::cancelled, why, false);
}

void Generation::charge() {
  if (!spec_.accounted) return;
  const double now = ServerState::unix_seconds();
  const std::string out = modality_name(spec_.request.modality);
  const int64_t produced = int64_t(output_done_) + output_now_;
  if (produced > charged_out_) {
    const int64_t n = produced - charged_out_;
    srv_.limiter.add_tokens(spec_.key, out, n, now);
    const int64_t from_reserve = std::min(n, reserved_);
    srv_.limiter.unreserve(spec_.key, out, from_reserve);
    reserved_ -= from_reserve;
    charged_out_ = produced;
  }
  const int64_t prompt = int64_t(prompt_done_) + prompt_now_;
  if (prompt > charged_in_) {
    int64_t media = 0;
    for (const auto& [m, n] : spec_.media_in) media += n;
    const int64_t text_now = std::max<int64_t>(0, prompt - media), text_before = std::max<int64_t>(0, charged_in_ - media);
    srv_.limiter.add_tokens(spec_.key, "text", text_now - text_before, now);
    if (charged_in_ == 0)
      for (const auto& [m, n] : spec_.media_in) srv_.limiter.add_tokens(spec_.key, modality_name(m), n, now);
    charged_in_ = prompt;
  }
}

void Generation::first_output() {
  if (first_output_s_ < 0) first_output_s_ = ServerState::unix_seconds() - started_at_;
}

void Generation::accepted(const encode_result& r) {
  if (ended_) return;
  auto keep = shared_from_this();
  auto owner = owner_.lock();
  if (r.code != ErrorCode::none) {
    finish(FinishReason::Error, r.code, r.error, true);
    return;
  }
  started_ = true;
  prompt_now_ = r.prompt_tokens;
  charge();
  if (owner) owner->on_prompt(r.prompt_tokens);
}

void Generation::failed_to_start(const std::string& why) {
  if (!ended_) finish(FinishReason::Error, ErrorCode::generation_failed, why, true);
}

void Generation::executor_lost(const std::string& why) {
  if (!ended_) finish(FinishReason::Error, ErrorCode::executor_lost, why, true);
}

void Generation::text(const text_delta& d) {
  if (ended_) return;
  auto keep = shared_from_this();
  auto owner = owner_.lock();
  if (d.prompt_tokens > 0) prompt_now_ = d.prompt_tokens;
  output_now_ = d.completion_tokens;
  if (d.completion_tokens > 0) first_output();
  charge();
  if (!d.last()) {
    if (owner) owner->on_text(d);
    return;
  }
  // The record before the last bytes: a client that has its whole answer is in the ledger.
  finish(d.finish, d.error_code, d.error, false);
  if (owner) {
    owner->on_text(d);
    owner->on_end(end_);
  }
}

void Generation::media(MediaChunk chunk, const media_delta& d) {
  if (ended_) return;
  auto keep = shared_from_this();
  auto owner = owner_.lock();
  if (d.prompt_tokens > 0) prompt_now_ = d.prompt_tokens;
  output_now_ = d.completion_tokens;
  if (!chunk.bytes.empty()) first_output();
  charge();
  const bool output_failed = !chunk.error.empty();
  if (!d.last() && !output_failed && !chunk.done) {
    if (owner) owner->on_media(chunk, d.completion_tokens);
    return;
  }
  // This part's end. The delta's finish says why; an output that failed on its own
  // (encoding) fails the answer, and its sequence may still be running.
  FinishReason f = d.finish;
  ErrorCode code = d.error_code;
  std::string message = d.error;
  if (f == FinishReason::None) {
    cancel();
    f = FinishReason::Error, code = ErrorCode::generation_failed, message = chunk.error;
  } else if (output_failed && (f == FinishReason::Stop || f == FinishReason::Length)) {
    f = FinishReason::Error, code = ErrorCode::generation_failed, message = chunk.error;
  }
  chunk.done = true;
  if ((f == FinishReason::Stop || f == FinishReason::Length) && parts_done_ + 1 < spec_.parts) {
    prompt_done_ += prompt_now_, output_done_ += output_now_;
    ++parts_done_;
    if (owner) owner->on_media(chunk, d.completion_tokens);
    launch_part();
    return;
  }
  // The record before the last bytes: a client that has its whole answer is in the ledger.
  finish(f, code, message, false);
  if (owner) {
    owner->on_media(chunk, d.completion_tokens);
    owner->on_end(end_);
  }
}

void Generation::finish(FinishReason f, ErrorCode code, std::string message, bool tell_owner) {
  ended_ = true;
  charge();
  if (reserved_ > 0) srv_.limiter.unreserve(spec_.key, modality_name(spec_.request.modality), reserved_);
  reserved_ = 0;
  if (f == FinishReason::Cancelled) code = ErrorCode::cancelled;
  if (f == FinishReason::Stop || f == FinishReason::Length) code = ErrorCode::none, message.clear();
  if (f == FinishReason::Error && code == ErrorCode::none) code = ErrorCode::generation_failed;
  GenerationEnd& e = end_;
  e.finish = f, e.code = code, e.message = std::move(message);
  e.started = started_;
  e.modality = spec_.request.modality;
  e.prompt_tokens = prompt_done_ + prompt_now_;
  e.output_tokens = output_done_ + output_now_;
  int64_t media = 0;
  for (const auto& [m, n] : spec_.media_in) media += n;
  e.tokens_in[Modality::Text] = std::max<int64_t>(0, int64_t(e.prompt_tokens) - media);
  for (const auto& [m, n] : spec_.media_in) e.tokens_in[m] += n;
  e.tokens_out[spec_.request.modality] = e.output_tokens;
  e.started_at = started_at_;
  e.first_output_s = first_output_s_;
  e.finished_at = ServerState::unix_seconds();
  if (spec_.accounted) {
    srv_.metrics.prompt_tokens += uint64_t(e.prompt_tokens);
    srv_.metrics.completion_tokens += uint64_t(e.output_tokens);
    srv_.account(usage_record(spec_, spec_.request.id, e.outcome(), e.ok() ? "" : e.message, &e));
  }
  if (holding_) {
    holding_ = false;
    srv_.metrics.generations--;
    if (spec_.holds_session) srv_.limiter.end_session(spec_.key);
  }
  if (tell_owner)
    if (auto owner = owner_.lock()) owner->on_end(e);
}

void OutgoingQueue::tokens_without_bytes(int32_t tokens) {
  if (!pieces_.empty()) {
    pieces_.back().tokens_through = tokens;
    return;
  }
  if (auto g = credit_.lock()) g->delivered(tokens);
}

void OutgoingQueue::written() {
  const int32_t through = pieces_.front().tokens_through;
  bytes_ -= pieces_.front().data.size();
  pieces_.pop_front();
  if (through >= 0)
    if (auto g = credit_.lock()) g->delivered(through);
}

}  // namespace tutti::http
