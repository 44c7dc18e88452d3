// One generation's lifecycle, written once for every transport (HTTP completions and media,
// Realtime responses, video jobs, stream jobs, speech prefills):
//
//   admit (draining, the key's limits) -> hold (drain waits, running gauge, the key's session)
//   -> sink (the per-generation actor the pipeline sends deltas to) -> credit (what the
//   client has taken) -> one typed end (GenerationEnd) -> one usage record, metrics, release.
//
// An owner (the transport side) implements GenerationOwner and keeps the Generation alive;
// when the owner drops it before the end (its client went away, a job was stopped), the
// generation is cancelled and recorded with every token that reached the owner. All on the
// I/O thread; the sink actor posts there.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "actors/http/errors.hpp"
#include "actors/http/media.hpp"
#include "actors/http/server_state.hpp"

namespace tutti::http {

// The ledger's outcome of a generation, and a Realtime response's status. One mapping from
// finish reason: outcome_of. A media answer's length is the duration asked for, so reaching
// it completes the answer; a text answer cut by its length is incomplete.
enum class Outcome : uint8_t { Completed, Incomplete, Cancelled, Failed, Refused };
Outcome outcome_of(FinishReason finish, Modality answer);
const char* outcome_name(Outcome o);

// How a generation ended, in full: what every owner answers its client with and what the
// ledger records.
struct GenerationEnd {
  FinishReason finish = FinishReason::None;
  ErrorCode code = ErrorCode::none;  // with Error (and Cancelled: cancelled)
  std::string message;               // for people; never parsed
  std::map<Modality, int64_t> tokens_in, tokens_out;
  int32_t prompt_tokens = 0, output_tokens = 0;  // all parts together
  double started_at = 0, first_output_s = -1, finished_at = 0;
  bool started = false;  // the encoder accepted the prompt (nothing reached a client before)
  Modality modality = Modality::Text;  // the answer's
  Outcome outcome() const { return outcome_of(finish, modality); }
  bool ok() const { return finish == FinishReason::Stop || finish == FinishReason::Length; }
  ApiError error() const { return ApiError{code, message}; }
};

// What a generation tells its owner, on the I/O thread. The end comes once, after the last
// on_text / on_media and after the usage record is committed.
class GenerationOwner {
 public:
  virtual ~GenerationOwner() = default;
  virtual void on_prompt(int32_t prompt_tokens) {}
  virtual void on_text(const actors::text_delta& d) {}
  // A media answer's bytes in its output's format; `tokens`: generated so far in this part.
  virtual void on_media(MediaChunk& chunk, int32_t tokens) {}
  virtual void on_end(const GenerationEnd& end) = 0;
};

struct GenerationSpec {
  std::string key;        // the key's name: its limits, its ledger rows ("" when open)
  std::string endpoint;   // recorded
  std::string model;      // asked for ("" : the default model)
  // Where it runs: the instance that answers its modality (ModelRegistry::route), chosen by
  // Generation::start when the caller has not; it holds the instance until the end, so a
  // reload's old weights serve it to the end.
  std::shared_ptr<ModelInstance> instance;
  std::string served_by;  // the model that answers (recorded, and sent as x-tutti-served-by)
  bool fallback = false;  // not the model asked for: its modality was unhealthy there
  // What it is routed by when it is not its answer's modality (routing_modality).
  std::optional<Modality> route_as;
  std::string record_id;  // the ledger's request id ("" : "gen-" and the first request id)
  // A Realtime session's or a stream job's id: on a cluster ingress all its generations run
  // on one executor node, where its conversation is cached ("": placed on its own).
  std::string sticky;
  actors::text_request request;  // its id (and, for parts, its seed) is assigned here
  // Prompt tokens that are media (spliced parts), by modality; the rest are text.
  std::map<Modality, int64_t> media_in;
  bool holds_session = false;  // one of the key's concurrent sessions while it runs (HTTP)
  // A speech prefill: part of a turn whose answer is billed; no admission, record or hold.
  bool accounted = true;
  // false: admitted as a whole before (a stream job's answers, admitted with the job): only
  // a drain refuses it. Its tokens still count against the key's quota.
  bool check_limits = true;
  int parts = 1;  // images: n generations in turn, one record
  bool seed_from_id = false;  // each request (each image of n) samples with its id as seed
  // A media answer's output, fresh for each part (null: a text answer).
  std::function<std::shared_ptr<MediaOutput>()> output;
};

// What the front door's admission knows of a request before it is encoded, and its clock
// (the executor's: steady seconds).
AdmissionRequest admission_request_of(const actors::text_request& r);
// The modality a request is routed by: its answer's when that is media (a voice turn: audio),
// else what the caller says (a transcription, whose upload the audio codec encodes; a speech
// prefill, part of a voice turn), else text. A text turn over a conversation that holds
// audio stays text: the tokens are there already.
Modality routing_modality(const GenerationSpec& spec);
double monotonic_seconds();

class Generation : public std::enable_shared_from_this<Generation> {
 public:
  // Admits and starts. A refusal is recorded (outcome refused) and returned in the
  // protocol-neutral form; nothing was started then.
  static std::variant<std::shared_ptr<Generation>, ApiError> start(ServerState& srv, GenerationSpec spec,
                                                                   std::weak_ptr<GenerationOwner> owner);
  // Records a request refused before any generation (its own limit, a bad field after the
  // key was known) as every refusal is recorded.
  static void record_refusal(ServerState& srv, const GenerationSpec& spec, const ApiError& e);

  Generation(ServerState& srv, GenerationSpec spec, std::weak_ptr<GenerationOwner> owner);
  ~Generation();  // before the end: cancelled, recorded with what reached the owner
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  int64_t request_id() const { return request_.id; }
  const std::string& served_by() const { return spec_.served_by; }
  // The executor node it runs on (a cluster ingress's; "": this process), sent as x-tutti-node.
  const std::string& node() const { return spec_.instance->node; }
  bool fallback() const { return spec_.fallback; }
  const GenerationSpec& spec() const { return spec_; }
  bool running() const { return !ended_; }
  // Flow control: the client's socket has taken the first `tokens` of the current part.
  void delivered(int32_t tokens);
  // Asks the executor to stop; the end arrives as cancelled, as any other end does.
  void cancel();
  // Ends it now as cancelled (a stopped job): the executor is told, the owner hears nothing.
  void abandon(const std::string& why);

  // ---- the sink's posts (I/O thread)
  void accepted(const actors::encode_result& r);
  void text(const actors::text_delta& d);
  void media(MediaChunk chunk, const actors::media_delta& d);
  void failed_to_start(const std::string& why);  // the encoder was unreachable
  void executor_lost(const std::string& why);    // the executor node running it is gone

 private:
  void launch_part();
  void finish(FinishReason finish, ErrorCode code, std::string message, bool tell_owner);
  void first_output();
  // The key's token quota: charges what was produced (and the prompt) since the last charge,
  // from the reservation taken at the start.
  void charge();

  // Tokens charged to the key's quota so far, and held for what may still come.
  int64_t charged_in_ = 0, charged_out_ = 0, reserved_ = 0;

  ServerState& srv_;
  GenerationSpec spec_;
  std::weak_ptr<GenerationOwner> owner_;
  actors::text_request request_;  // the part running now
  actors::sink_actor sink_;
  int parts_done_ = 0;
  bool ended_ = false, started_ = false, holding_ = false;
  // Tokens of the finished parts, and of the part running now as far as the owner has it.
  int32_t prompt_done_ = 0, output_done_ = 0, prompt_now_ = 0, output_now_ = 0;
  int32_t credited_ = 0;  // credit sent for the current part
  double started_at_ = 0, first_output_s_ = -1;
  GenerationEnd end_;
};

// A hold on the server outside a generation: a Realtime WebSocket is one of its key's
// concurrent sessions for as long as it lasts. Released once. I/O thread only.
class SessionHold {
 public:
  SessionHold(ServerState& srv, std::string key) : srv_(&srv), key_(std::move(key)) {}
  ~SessionHold() { srv_->limiter.end_session(key_); }
  SessionHold(const SessionHold&) = delete;
  SessionHold& operator=(const SessionHold&) = delete;

 private:
  ServerState* srv_;
  std::string key_;
};

// A Realtime session's or stream job's pin to one executor node on a cluster ingress, where
// its conversation is cached (GenerationSpec::sticky carries its id; routing keeps the node
// while it lives). Released with its owner. Nothing happens on a single process.
class StickyPin {
 public:
  explicit StickyPin(ServerState& srv) : srv_(&srv) {}
  ~StickyPin() { release(); }
  StickyPin(const StickyPin&) = delete;
  StickyPin& operator=(const StickyPin&) = delete;
  void set(std::string id) {
    release();
    id_ = std::move(id);
  }
  const std::string& id() const { return id_; }

 private:
  void release() {
    if (!id_.empty() && srv_->models->placement) srv_->models->placement->end_sticky(id_);
    id_.clear();
  }
  ServerState* srv_;
  std::string id_;
};

// A transport's outgoing data, written one piece at a time in order. Each piece carries the
// token count its client has once it is written, which becomes credit for the generation
// in flight (the one credit idiom of every socket transport).
class OutgoingQueue {
 public:
  struct Piece {
    std::string data;
    int32_t tokens_through = -1;  // -1: carries no tokens
    bool binary = false;          // a WebSocket binary message (the Opus framing)
  };
  void credit_to(std::weak_ptr<Generation> g) { credit_ = std::move(g); }
  void push(std::string data, int32_t tokens_through = -1, bool binary = false) {
    bytes_ += data.size();
    pieces_.push_back({std::move(data), tokens_through, binary});
  }
  size_t bytes() const { return bytes_; }  // queued, not yet written
  // A token with no bytes of its own: the client has it once what is queued is written.
  void tokens_without_bytes(int32_t tokens);
  bool empty() const { return pieces_.empty(); }
  size_t size() const { return pieces_.size(); }
  const Piece& front() const { return pieces_.front(); }
  // The front piece is written: it leaves, and its tokens are credited.
  void written();
  void clear() { pieces_.clear(), bytes_ = 0; }

 private:
  std::deque<Piece> pieces_;
  size_t bytes_ = 0;
  std::weak_ptr<Generation> credit_;
};

}  // namespace tutti::http
