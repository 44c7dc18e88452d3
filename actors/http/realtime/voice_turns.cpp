// A Realtime session's voice: VAD turns, barge-in, prefill while speaking, commits.
#include "actors/http/realtime/session.hpp"

namespace tutti::http {

using namespace realtime;

namespace {

// The owner of a speech prefill's generation (text_request::prefill_only): nothing reaches
// the client. When it ends, the next one may start.
class SpeechPrefill final : public GenerationOwner {
 public:
  explicit SpeechPrefill(std::function<void()> on_done) : on_done_(std::move(on_done)) {}
  std::shared_ptr<Generation> generation;
  void on_end(const GenerationEnd&) override {
    if (auto f = std::move(on_done_)) f();
  }

 private:
  std::function<void()> on_done_;
};

}  // namespace

int VoiceTurns::audio_rate() const { return srv_.codecs_for(Modality::Audio)->audio(Modality::Audio)->sample_rate(); }

codecs::VoiceInput& VoiceTurns::voice() {
  if (!voice_)
    voice_.emplace(*srv_.codecs_for(Modality::Audio)->info(Modality::Audio), srv_.codecs_for(Modality::Audio)->audio(Modality::Audio), settings_.vad);
  return *voice_;
}

int64_t VoiceTurns::speech_from_ms() const {
  return std::max<int64_t>(0, speech_start_ms_ - (settings_.vad ? settings_.vad->prefix_padding_ms : 0));
}

void VoiceTurns::feed(std::function<Expected<std::vector<float>>()> samples, const char* detail, const std::string& event_id,
                      std::function<void()> done) {
  struct Result {
    std::optional<ApiError> error;
    std::vector<codecs::VoiceActivityDetector::Event> events;
  };
  auto r = std::make_shared<Result>();
  link_.off_thread(
      [this, r, samples = std::move(samples), detail] {  // a media worker: the wire format, resampling, the codec
        auto pcm = samples();
        if (!pcm) return void(r->error = ApiError{ErrorCode::invalid_request, pcm.error().message, "", 0, detail});
        if (voice().buffer_end_ms() - voice().buffer_start_ms() + int64_t(pcm->size()) * 1000 / audio_rate() > 15 * 60 * 1000)
          return void(r->error = ApiError{ErrorCode::invalid_request, "the input audio buffer holds at most 15 minutes", "", 0, "input_audio_buffer_full"});
        r->events = voice().push(*pcm);
      },
      [this, r, event_id, done = std::move(done)] {
        if (r->error) link_.error(*r->error, event_id);
        else on_turns(r->events);
        if (done) done();
      });
}

// The VAD's turns, on the I/O thread.
void VoiceTurns::on_turns(const std::vector<codecs::VoiceActivityDetector::Event>& events) {
  for (const auto& e : events) {
    if (e.started) {
      speech_start_ms_ = e.at_ms;
      speech_item_id_ = realtime_id(srv_, "item_");
      link_.emit(speech_started(e.at_ms, speech_item_id_));
      if (hooks_.responding()) hooks_.barge_in();  // the user talks over the answer
      prefilled_ms_ = e.at_ms;
    } else {
      link_.emit(speech_stopped(e.at_ms, speech_item_id_));
      commit_range(speech_from_ms(), e.at_ms, "");
      if (settings_.auto_response) hooks_.turn_ended();
    }
  }
  if (!speech_item_id_.empty()) prefill();
  // turn_detection.idle_timeout_ms: silence that long after a response (in input audio
  // time) is committed as a turn of its own, and answered when responses follow turns.
  const int idle = settings_.idle_timeout_ms;
  if (idle > 0 && idle_from_ms_ && speech_item_id_.empty() && !hooks_.responding() && voice().buffer_end_ms() - *idle_from_ms_ >= idle) {
    const int64_t from = std::max(*idle_from_ms_, voice().buffer_start_ms()), to = voice().buffer_end_ms();
    idle_from_ms_.reset();  // once per response
    speech_item_id_ = realtime_id(srv_, "item_");
    link_.emit(audio_timeout_triggered(from, to, speech_item_id_));
    commit_range(from, to, "");
    if (settings_.auto_response) hooks_.turn_ended();
  }
}

void VoiceTurns::response_ended() {
  if (settings_.idle_timeout_ms > 0 && srv_.codecs_for(Modality::Audio) && srv_.codecs_for(Modality::Audio)->info(Modality::Audio)) idle_from_ms_ = voice().buffer_end_ms();
}

void VoiceTurns::commit(const std::string& event_id) { commit_range(voice().buffer_start_ms(), voice().buffer_end_ms(), event_id); }

void VoiceTurns::clear() {
  if (voice_) voice_->clear();
  speech_item_id_.clear();
}

// The buffered audio from `from_ms` to `to_ms` (stream time) becomes a user item of audio
// tokens.
void VoiceTurns::commit_range(int64_t from_ms, int64_t to_ms, const std::string& event_id) {
  std::vector<int32_t> ids = voice().take(from_ms, to_ms);
  if (ids.empty())
    return link_.error(ApiError{ErrorCode::invalid_request, "the buffer holds less than 100 ms of audio", "", 0, "input_audio_buffer_commit_empty"},
                       event_id);
  const std::string id = speech_item_id_.empty() ? realtime_id(srv_, "item_") : speech_item_id_;
  const std::string previous = conversation_.last_item_id;
  link_.emit(audio_committed(previous, id));
  conversation_.items.push_back({"user", "", std::move(ids), Modality::Audio, id});
  conversation_.last_item_id = id;
  emit_item_joined(link_, settings_.dialect, message_item(id, "user", json::array({audio_part()})), previous);
  committed_at_ = std::chrono::steady_clock::now();
  speech_item_id_.clear();
}

// Every prefill_while_speaking_ms of new speech, the conversation plus the speech so far is
// prefilled (one at a time), so that at the end of the turn the request finds it in the
// prefix cache. Only between responses: during one, the conversation is about to change.
void VoiceTurns::prefill() {
  const int interval = srv_.cfg.prefill_while_speaking_ms;
  if (interval <= 0 || hooks_.responding() || prefill_ || voice().buffer_end_ms() - prefilled_ms_ < interval) return;
  prefilled_ms_ = voice().buffer_end_ms();
  const ConversationItem speech{"user", "", voice().peek(speech_from_ms()), Modality::Audio};
  srv_.metrics.conversation_items_dropped += conversation_.trim(srv_.cfg.max_conversation_tokens, &speech);
  GenerationSpec spec;
  spec.request = conversation_.request(srv_.cfg.chat_template, &speech);
  spec.request.prefill_only = true;
  spec.accounted = false;  // part of the turn, whose answer is billed
  spec.route_as = Modality::Audio;  // where the voice turn's answer will run
  spec.sticky = conversation_.placement;
  auto owner = std::make_shared<SpeechPrefill>([this] { prefill_.reset(); });
  auto started = Generation::start(srv_, std::move(spec), owner);
  if (!std::holds_alternative<std::shared_ptr<Generation>>(started)) return;
  owner->generation = std::get<std::shared_ptr<Generation>>(std::move(started));
  prefill_ = owner;
  srv_.metrics.speech_prefills++;
}

}  // namespace tutti::http
