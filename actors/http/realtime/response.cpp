// One Realtime response's output: text deltas, audio (wire audio or Opus), video frames, and
// the events that close it.
#include "actors/http/realtime/session.hpp"

namespace tutti::http {

using namespace realtime;


void RealtimeResponse::barge_in() {
  barged_in_ = true;
  srv_.metrics.barge_ins++;
  generation->cancel();
}

void RealtimeResponse::clear_audio() {
  barged_in_ = cleared_ = true;
  generation->cancel();
}

json RealtimeResponse::content_part() const {
  if (s_.modality == Modality::Text) return {{"type", "text"}, {"text", text_}};
  if (s_.modality == Modality::Audio) return {{"type", "audio"}, {"transcript", ""}};
  return {{"type", "tutti.video"}};
}

json RealtimeResponse::output_item(const char* status) const {
  json content = json::array();
  if (s_.modality == Modality::Text) content.push_back(output_text_part(s_.dialect, text_));
  if (s_.modality == Modality::Audio) content.push_back(output_audio_part(s_.dialect, ""));
  return message_item(s_.at.item_id, "assistant", content, status);
}

// response.created, the limits it counts against, and its one output item opening: the item
// (also a conversation item, after the conversation's last) and its content part.
void RealtimeResponse::opened(const std::vector<RateLimit>& limits) {
  link_.emit(response_created(response_object(s_.dialect, s_.at.response_id, "in_progress", s_.modalities, json::array(), nullptr,
                                              s_.max_output_tokens)));
  link_.emit(rate_limits_updated(limits));
  json item = output_item("in_progress");
  item["content"] = json::array();
  link_.emit(output_item_added(s_.at, item));
  link_.emit(item_added(s_.dialect, item, s_.previous_item_id));
  link_.emit(content_part_added(s_.at, content_part()));
}

void RealtimeResponse::on_text(const actors::text_delta& d) {
  if (!d.text.empty()) {  // tokens whose text is held back produce no event
    text_ += d.text;
    link_.emit(output_text_delta(s_.at, d.text), d.completion_tokens);
  } else if (!d.last()) {
    link_.tokens_without_bytes(d.completion_tokens);
  }
}

void RealtimeResponse::on_media(MediaChunk& c, int32_t tokens) {
  if (s_.modality == Modality::Video) return on_video(c, tokens);
  answer_ids_.insert(answer_ids_.end(), c.tokens.begin(), c.tokens.end());
  if (!c.bytes.empty() && !barged_in_) {  // after a barge-in nothing more is sent
    if (audio_sent_samples_ == 0) {
      first_audio_at_ = std::chrono::steady_clock::now();
      link_.emit(output_audio_buffer("started", s_.at.response_id));
      if (s_.committed_at)  // latency of a voice turn: end of speech to first audio out
        srv_.metrics.speech_to_first_audio.observe(std::chrono::duration<double>(*first_audio_at_ - *s_.committed_at).count());
    }
    audio_sent_samples_ += int64_t(c.frames);  // frames carries samples for wire audio
    if (s_.binary) {
      for (const std::string& packet : split_length_prefixed(c.bytes)) link_.send_binary(char(BinaryKind::AudioOut) + packet, tokens);
    } else {
      link_.emit(output_audio_delta(s_.at, std::string(c.bytes.begin(), c.bytes.end())), tokens);
    }
  } else if (!c.done) {
    link_.tokens_without_bytes(tokens);
  }
}

// A video answer (tutti extension): each finished frame as a JPEG, in a binary message of
// kind 4 when the binary framing is on, else in a tutti.response.output_video.delta event.
void RealtimeResponse::on_video(MediaChunk& c, int32_t tokens) {
  for (const std::string& jpeg : split_length_prefixed(c.bytes, 4)) {
    if (s_.binary) link_.send_binary(char(BinaryKind::VideoOut) + jpeg, tokens);
    else link_.emit(output_video_delta(s_.at, video_frames_sent_, base64_encode(std::vector<uint8_t>(jpeg.begin(), jpeg.end()))), tokens);
    ++video_frames_sent_;
  }
  if (c.bytes.empty() && !c.done) link_.tokens_without_bytes(tokens);
}

void RealtimeResponse::on_end(const GenerationEnd& e) {
  const bool cancelled = e.finish == FinishReason::Cancelled;
  if (!e.ok() && !cancelled) link_.error(e.error(), s_.client_event_id);
  Result r;
  r.end = e;
  r.modality = s_.modality;
  r.item_id = s_.at.item_id;
  if (e.started) {
    if (s_.modality == Modality::Text) {
      link_.emit(output_text_done(s_.at, text_));
      if (e.ok() || cancelled) r.text = text_;
    } else if (s_.modality == Modality::Audio) {
      link_.emit(output_audio_done(s_.at));
      link_.emit(output_audio_transcript_done(s_.at, ""));  // the model speaks codes, no text beside them
      // What could have been heard: what was sent, but no more than the time since the
      // first audio went out.
      const double elapsed = first_audio_at_ ? std::chrono::duration<double>(std::chrono::steady_clock::now() - *first_audio_at_).count() : 0;
      const int64_t played_ms = std::min<int64_t>(audio_sent_samples_ * 1000 / s_.audio_rate, int64_t(elapsed * 1000));
      if (cancelled && barged_in_ && !cleared_) link_.emit(item_truncated(s_.at.item_id, 0, played_ms));  // where the user cut in
      // The answer joins the conversation as the assistant's audio: all of it when it
      // finished, what was heard when it was cut short, nothing when it failed.
      if (e.ok() || cancelled) {
        const size_t stages = size_t(std::max(1, s_.audio_stages));
        size_t keep = answer_ids_.size() / stages * stages;
        if (cancelled) keep = std::min(keep, size_t(played_ms / std::max(1, s_.audio_frame_ms)) * stages);
        r.audio_ids.assign(answer_ids_.begin(), answer_ids_.begin() + std::ptrdiff_t(keep));
      }
    } else {
      link_.emit(output_video_done(s_.at, video_frames_sent_));
    }
  }
  const char* status = outcome_name(e.outcome());
  const char* item_status = std::string_view(status) == "completed" ? "completed" : "incomplete";  // cut, cancelled or failed
  link_.emit(content_part_done(s_.at, content_part()));
  json item = output_item(item_status);
  link_.emit(output_item_done(s_.at, item));
  if (s_.dialect == Dialect::Ga) link_.emit(item_done(item, s_.previous_item_id));
  if (audio_sent_samples_ > 0) link_.emit(output_audio_buffer(barged_in_ ? "cleared" : "stopped", s_.at.response_id));
  ResponseUsage usage{e.prompt_tokens, e.output_tokens, s_.input_audio_tokens, s_.modality};
  json response = response_object(s_.dialect, s_.at.response_id, status, s_.modalities, json::array({item}), &usage, s_.max_output_tokens);
  // Which model answered (a voice turn goes to the audio fallback while the default's audio
  // is unhealthy); the extension object, as in chat.
  if (generation) {
    response["tutti"] = {{"served_by", generation->served_by()}, {"fallback", generation->fallback()}};
    if (!generation->node().empty()) response["tutti"]["node"] = generation->node();  // a cluster's executor node
  }
  link_.emit(response_done(std::move(response)));
  auto done = std::move(done_);
  if (done) done(std::move(r));
}

}  // namespace tutti::http
