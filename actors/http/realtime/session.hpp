// The Realtime session's parts (internal to actors/http/realtime/), split by concern:
//   connection.cpp   RealtimeConnection: the WebSocket's lifecycle, framing, the queue of
//                    events to the client, and dispatch of client events to the session;
//   session.cpp      RealtimeSession: the session's settings and conversation, and what
//                    each client event does (session.update, items, response.create, audio);
//   response.cpp     RealtimeResponse: one response's output events (text, audio, video) and
//                    its end, as the owner of its generation;
//   voice_turns.cpp  VoiceTurns: input audio, VAD, barge-in, prefill while speaking, commits;
//   server_events.*  the typed builders of every server event.
// Building an answer's request is answer_request (conversation.hpp), shared with stream jobs.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "actors/http/conversation.hpp"
#include "actors/http/generation.hpp"
#include "actors/http/realtime/server_events.hpp"
#include "actors/http/realtime_audio.hpp"
#include "actors/http/realtime_events.hpp"
#include "codecs/opus_codec.h"
#include "codecs/voice_input.h"

namespace tutti::http {

using SteadyTime = std::chrono::steady_clock::time_point;

// What the session's parts write through: the connection's queue of events to its client.
class RealtimeLink {
 public:
  virtual ~RealtimeLink() = default;
  virtual void emit(json event, int32_t tokens_through = -1) = 0;
  virtual void send_binary(std::string data, int32_t tokens_through) = 0;
  virtual void tokens_without_bytes(int32_t tokens) = 0;
  virtual void credit_to(std::weak_ptr<Generation> g) = 0;
  // An error event (counted in tutti_http_errors_total); the session goes on.
  virtual void error(const ApiError& e, const std::string& client_event_id) = 0;
  virtual void response_finished() = 0;  // a draining server may close now
  // The session broke a limit (its budget): close with 1008 once what is queued is written.
  virtual void close_for_policy(const std::string& why) = 0;
  // Runs `work` on a media worker (decoding an image, audio through the codec: never on the
  // I/O thread), then `then` on the I/O thread. No further client event of this session is
  // read meanwhile, so its order holds and `work` alone touches what it uses.
  virtual void off_thread(std::function<void()> work, std::function<void()> then) = 0;
};

// What session.update sets. The GA defaults: audio out (when the model has audio; set at
// the upgrade), server VAD on.
struct RealtimeSettings {
  realtime::Dialect dialect = realtime::Dialect::Ga;
  std::vector<std::string> modalities = {"text"};
  float temperature = 0.8f;  // the Realtime API's default
  int max_tokens = 256;
  bool max_tokens_set = false;
  AudioWire in_wire = AudioWire::Pcm16, out_wire = AudioWire::Pcm16;
  std::optional<codecs::VadConfig> vad = codecs::VadConfig{};
  bool auto_response = true;
  bool binary_opus = false;  // tutti.binary_audio = "opus": audio as binary Opus messages
  bool semantic_vad = false;  // asked as semantic_vad (mapped onto the server VAD)
  std::string eagerness = "auto";
  int idle_timeout_ms = 0;
  std::string voice = "default";
};

// An item joined the conversation: GA conversation.item.added and .done (its content is
// final), beta conversation.item.created.
void emit_item_joined(RealtimeLink& link, realtime::Dialect d, const json& item, const std::string& previous_item_id);

// One response: the owner of its generation, turning its deltas into output events. When it
// ends, `done` hears what the conversation keeps of it.
class RealtimeResponse final : public GenerationOwner {
 public:
  struct Result {
    GenerationEnd end;
    Modality modality = Modality::Text;
    std::string item_id, text;       // a text answer
    std::vector<int32_t> audio_ids;  // an audio answer's codes: all, or what was heard
  };
  struct Setup {
    realtime::OutputRef at;
    Modality modality = Modality::Text;
    std::vector<std::string> modalities;
    bool binary = false;         // audio and video as binary messages
    int audio_rate = 24000;      // the codec's
    int audio_frame_ms = 20;     // one frame of codes (what a cut answer keeps whole)
    int audio_stages = 1;
    int32_t input_audio_tokens = 0;
    std::optional<SteadyTime> committed_at;  // a voice turn's end of speech
    std::string client_event_id;             // of the response.create, echoed in errors
    realtime::Dialect dialect = realtime::Dialect::Ga;
    int max_output_tokens = 0;               // the response's limit, as the client sees it
    std::string previous_item_id;            // the conversation's last item when it started
  };
  RealtimeResponse(RealtimeLink& link, ServerState& srv, Setup setup, std::function<void(Result)> done)
      : link_(link), srv_(srv), s_(std::move(setup)), done_(std::move(done)) {}
  std::shared_ptr<Generation> generation;

  // The user spoke over it: nothing more is sent, and it is cancelled.
  void barge_in();
  // output_audio_buffer.clear: as a barge-in, but asked for (not counted as one).
  void clear_audio();
  void cancel() { generation->cancel(); }
  const std::vector<std::string>& modalities() const { return s_.modalities; }

  void on_text(const actors::text_delta& d) override;
  void on_media(MediaChunk& c, int32_t tokens) override;
  void on_end(const GenerationEnd& e) override;
  // response.created and the output item's opening events.
  void opened(const std::vector<realtime::RateLimit>& limits);

 private:
  void on_video(MediaChunk& c, int32_t tokens);
  json content_part() const;  // the output item's one part, as far as it has come
  json output_item(const char* status) const;
  RealtimeLink& link_;  // the connection, which owns the session, which owns this
  ServerState& srv_;
  Setup s_;
  std::function<void(Result)> done_;
  std::string text_;
  std::vector<int32_t> answer_ids_;
  int64_t audio_sent_samples_ = 0;
  int video_frames_sent_ = 0;
  std::optional<SteadyTime> first_audio_at_;
  bool barged_in_ = false;
  bool cleared_ = false;  // output_audio_buffer.clear (not a barge-in)
};

// The user's voice: input audio buffered, voice-detected and encoded as it arrives; a turn
// that ends becomes a conversation item; speech over an answer cuts it (barge-in); while the
// user talks, the conversation so far is prefilled (one prefill at a time) so the turn's
// request computes only what came since.
class VoiceTurns {
 public:
  struct Hooks {
    std::function<bool()> responding;  // a response is in progress
    std::function<void()> barge_in;    // cut it: the user talks over it
    std::function<void()> turn_ended;  // the VAD ended a turn (a response may follow)
  };
  VoiceTurns(ServerState& srv, RealtimeLink& link, Conversation& conversation, const RealtimeSettings& settings, Hooks hooks)
      : srv_(srv), link_(link), conversation_(conversation), settings_(settings), hooks_(std::move(hooks)) {}

  int audio_rate() const;
  void reset() { voice_.reset(); }  // turn detection changed
  // Audio in: `samples` (decoding the wire format, resampling to the codec's rate) and the
  // codec's encoder run off the I/O thread; the VAD's turns are applied back on it, then
  // `done` runs. A decoding error is an error event with `detail` as its code.
  void feed(std::function<Expected<std::vector<float>>()> samples, const char* detail, const std::string& event_id,
            std::function<void()> done);
  // input_audio_buffer.commit: the whole buffer becomes an item.
  void commit(const std::string& event_id);
  void clear();
  // A response ended: turn_detection.idle_timeout_ms counts from here (in input audio time).
  void response_ended();
  // When the last committed turn's speech ended (for the latency metric), once.
  std::optional<SteadyTime> take_committed_at() { return std::exchange(committed_at_, std::nullopt); }

 private:
  codecs::VoiceInput& voice();
  void on_turns(const std::vector<codecs::VoiceActivityDetector::Event>& events);
  void commit_range(int64_t from_ms, int64_t to_ms, const std::string& event_id);
  void prefill();
  int64_t speech_from_ms() const;

  ServerState& srv_;
  RealtimeLink& link_;
  Conversation& conversation_;
  const RealtimeSettings& settings_;
  Hooks hooks_;
  std::optional<codecs::VoiceInput> voice_;  // made on first use, remade when turn detection changes
  int64_t speech_start_ms_ = 0, prefilled_ms_ = 0;
  std::string speech_item_id_;
  std::optional<SteadyTime> committed_at_;
  std::shared_ptr<GenerationOwner> prefill_;  // the speech prefill in flight
  std::optional<int64_t> idle_from_ms_;       // armed after a response: silence since then counts
};

// The session: settings, conversation, voice, and the response in progress (one at a time);
// applies each client event.
class RealtimeSession {
 public:
  RealtimeSession(ServerState& srv, RealtimeLink& link, std::string key);
  // The grammar the client speaks (from the upgrade's OpenAI-Beta header) and its defaults.
  void set_dialect(realtime::Dialect d);
  json session_json() const;
  bool responding() const { return response_ != nullptr; }

  void apply(realtime::SessionUpdate& u, const std::string& event_id);
  void apply(realtime::ItemCreate& item, const std::string& event_id);
  void apply(realtime::ResponseCreate& resp, const std::string& event_id);
  void apply(realtime::AudioAppend& a, const std::string& event_id);
  void apply(realtime::AudioCommit&, const std::string& event_id);
  void apply(realtime::AudioClear&, const std::string& event_id);
  void apply(realtime::ResponseCancel&, const std::string& event_id);
  void apply(realtime::ItemRetrieve& r, const std::string& event_id);
  void apply(realtime::ItemDelete& d, const std::string& event_id);
  void apply(realtime::ItemTruncate& t, const std::string& event_id);
  void apply(realtime::OutputAudioBufferClear&, const std::string& event_id);
  void binary(const std::string& msg);

  std::string id;
  // Its id, given once the upgrade is accepted; its generations stay on one executor node of
  // a cluster while it lives.
  void identify(std::string session_id);

 private:
  bool has(Modality m) const { return srv_.codecs_for(m) && srv_.codecs_for(m)->info(m); }
  json item_json(const std::string& id) const;  // the item as the client knows it (null: none)
  std::vector<realtime::RateLimit> rate_limits();
  // After an item joins: the conversation is trimmed to its token budget and must fit the
  // session's byte budget; false (an error event and a 1008 close) when it does not.
  bool within_budget(const std::string& event_id);
  // Images (PNG, JPEG: their first frame) to video tokens, off the I/O thread; then `done`
  // with them, or an error event.
  void image_tokens(std::vector<std::vector<uint8_t>> images, const std::string& event_id,
                    std::function<void(std::vector<std::vector<int32_t>>)> done);
  void start_response(const realtime::ResponseCreate& resp, const std::string& event_id);
  void response_done(RealtimeResponse::Result r);

  ServerState& srv_;
  RealtimeLink& link_;
  std::string key_;
  RealtimeSettings settings_;
  StickyPin pin_{srv_};
  Conversation conversation_;
  VoiceTurns voice_;
  std::unique_ptr<codecs::OpusFrameDecoder> opus_in_;
  std::shared_ptr<RealtimeResponse> response_;
};

// A Realtime item or response id: the prefix and the server's next id.
std::string realtime_id(ServerState& srv, const char* prefix);

}  // namespace tutti::http
