// What each Realtime client event does (the grammar is realtime_events.hpp): the session's
// settings, its conversation, input audio and images, and starting a response.
#include "actors/http/realtime/session.hpp"

#include <algorithm>

namespace tutti::http {

using namespace realtime;

namespace {
ApiError invalid(std::string message, const char* detail) { return ApiError{ErrorCode::invalid_request, std::move(message), "", 0, detail}; }
ApiError no_modality(Modality m) {
  return ApiError{ErrorCode::unsupported_modality, std::string("this model has no ") + modality_name(m) + " modality", "", 0,
                  m == Modality::Audio ? "audio_not_supported" : "video_not_supported"};
}
bool has_name(const std::vector<std::string>& v, const char* name) { return std::count(v.begin(), v.end(), name) > 0; }
}  // namespace

std::string realtime_id(ServerState& srv, const char* prefix) { return prefix + std::to_string(srv.next_id++); }

bool RealtimeSession::within_budget(const std::string& event_id) {
  srv_.metrics.conversation_items_dropped += conversation_.trim(srv_.cfg.max_conversation_tokens);
  if (conversation_.bytes() <= srv_.cfg.max_session_bytes) return true;
  link_.error(ApiError{ErrorCode::invalid_request, "the conversation holds more than " + std::to_string(srv_.cfg.max_session_bytes) +
                                                       " bytes, this session's budget", "", 0, "session_budget_exceeded"},
              event_id);
  link_.close_for_policy("session budget exceeded");
  return false;
}

RealtimeSession::RealtimeSession(ServerState& srv, RealtimeLink& link, std::string key)
    : srv_(srv), link_(link), key_(std::move(key)),
      voice_(srv, link, conversation_, settings_,
             VoiceTurns::Hooks{[this] { return responding(); }, [this] { response_->barge_in(); },
                               [this] {
                                 if (!responding()) start_response(ResponseCreate{}, "");
                               }}) {
  settings_.max_tokens = std::min(256, srv.cfg.max_tokens);
}

json RealtimeSession::session_json() const {
  const RealtimeSettings& s = settings_;
  json td = nullptr;
  if (s.vad)
    td = {{"type", "server_vad"}, {"threshold", s.vad->threshold}, {"prefix_padding_ms", s.vad->prefix_padding_ms},
          {"silence_duration_ms", s.vad->silence_duration_ms}, {"create_response", s.auto_response}};
  return {{"id", id}, {"object", "realtime.session"}, {"model", srv_.cfg.model_name}, {"modalities", s.modalities},
          {"instructions", conversation_.instructions}, {"temperature", s.temperature}, {"max_response_output_tokens", s.max_tokens},
          {"input_audio_format", audio_wire_name(s.in_wire)}, {"output_audio_format", audio_wire_name(s.out_wire)},
          {"turn_detection", td}, {"tutti", {{"binary_audio", s.binary_opus ? "opus" : "none"}}}};
}

void RealtimeSession::apply(SessionUpdate& u, const std::string& event_id) {
  // What depends on the model; the rest was checked by the parser. Nothing applies unless
  // all of it is valid.
  if (u.modalities) {
    for (Modality m : {Modality::Audio, Modality::Video})
      if (has_name(*u.modalities, modality_name(m)) && !has(m))
        return link_.error(invalid(std::string("this model has no ") + modality_name(m) + " modality", "invalid_value"), event_id);
    settings_.modalities = *u.modalities;
  }
  if (u.instructions) conversation_.instructions = *u.instructions;
  if (u.temperature) settings_.temperature = *u.temperature;
  if (u.max_output_tokens) {
    settings_.max_tokens = std::min(*u.max_output_tokens, srv_.cfg.max_tokens);
    settings_.max_tokens_set = true;
  }
  if (u.input_wire) settings_.in_wire = *u.input_wire;
  if (u.output_wire) settings_.out_wire = *u.output_wire;
  if (u.binary_opus) settings_.binary_opus = *u.binary_opus;
  if (u.turn_detection == SessionUpdate::Turns::Manual) {
    settings_.vad.reset();
    voice_.reset();
  } else if (u.turn_detection == SessionUpdate::Turns::ServerVad) {
    settings_.vad = u.vad;
    settings_.auto_response = u.create_response;
    voice_.reset();
  }
  link_.emit(session_updated(session_json()));
}

void RealtimeSession::apply(ItemCreate& item, const std::string& event_id) {
  std::vector<std::vector<uint8_t>> images;
  for (const std::string& b64 : item.images_base64) {
    if (!has(Modality::Video)) return link_.error(no_modality(Modality::Video), event_id);
    auto bytes = base64_decode(b64);
    if (!bytes) return link_.error(invalid(bytes.error().message, "invalid_image"), event_id);
    images.push_back(std::move(*bytes));
  }
  auto add = [this, item, event_id](std::vector<std::vector<int32_t>> image_ids) {
    json parts = json::array();
    if (!item.text.empty()) {
      conversation_.items.push_back({item.role, item.text, {}});
      parts.push_back(text_part(item.text));
    }
    for (auto& ids : image_ids) {
      conversation_.items.push_back({item.role, "", std::move(ids), Modality::Video});
      parts.push_back(image_part());
    }
    const std::string id = item.id.empty() ? realtime_id(srv_, "item_") : item.id;
    conversation_.last_item_id = id;
    if (!within_budget(event_id)) return;
    link_.emit(item_created(id, item.role, parts));
  };
  if (images.empty()) return add({});
  image_tokens(std::move(images), event_id, add);
}

void RealtimeSession::apply(ResponseCreate& resp, const std::string& event_id) { start_response(resp, event_id); }

void RealtimeSession::apply(AudioAppend& a, const std::string& event_id) {
  if (!has(Modality::Audio)) return link_.error(no_modality(Modality::Audio), event_id);
  voice_.feed(
      [audio = std::move(a.audio_base64), wire = settings_.in_wire, rate = voice_.audio_rate()]() -> Expected<std::vector<float>> {
        auto samples = decode_wire_audio(audio, wire);
        if (!samples) return samples.error();
        return resample_linear(*samples, audio_wire_rate(wire), rate);
      },
      "invalid_audio", event_id, [this, event_id] { within_budget(event_id); });  // a turn may have ended: its item joined
}

void RealtimeSession::apply(AudioCommit&, const std::string& event_id) {
  if (!has(Modality::Audio)) return link_.error(no_modality(Modality::Audio), event_id);
  voice_.commit(event_id);
  within_budget(event_id);
}

void RealtimeSession::apply(AudioClear&, const std::string&) {
  voice_.clear();
  link_.emit(audio_cleared());
}

void RealtimeSession::apply(ResponseCancel&, const std::string& event_id) {
  if (!response_) return link_.error(invalid("no response is in progress", "response_cancel_not_active"), event_id);
  response_->cancel();
}

void RealtimeSession::image_tokens(std::vector<std::vector<uint8_t>> images, const std::string& event_id,
                                   std::function<void(std::vector<std::vector<int32_t>>)> done) {
  if (!has(Modality::Video)) return link_.error(no_modality(Modality::Video), event_id);
  struct Result {
    std::vector<std::vector<int32_t>> ids;
    std::string error;
  };
  auto r = std::make_shared<Result>();
  const ModalityInfo* video = srv_.pipe.codecs->info(Modality::Video);
  auto books = srv_.pipe.codecs;  // shared, read-only
  link_.off_thread(
      [r, images = std::move(images), video, books] {
        for (const auto& bytes : images) {
          auto ids = image_to_video_tokens(bytes, *video, *books->books(Modality::Video));
          if (!ids) return void(r->error = ids.error().message);
          r->ids.push_back(std::move(ids).value());
        }
      },
      [this, r, event_id, done = std::move(done)] {
        if (!r->error.empty()) return link_.error(invalid("the image could not be decoded: " + r->error, "invalid_image"), event_id);
        done(std::move(r->ids));
      });
}

// Binary messages (the tutti framing): kind byte, then an Opus packet (48 kHz, 20 ms) for
// audio in, or an image (PNG/JPEG) for a video frame in.
void RealtimeSession::binary(const std::string& msg) {
  if (!settings_.binary_opus)
    return link_.error(invalid("binary messages need session.update tutti.binary_audio = opus", "binary_not_enabled"), "");
  const auto bin = parse_binary_message(msg);
  if (!bin) return link_.error(invalid("binary messages of kind 1 (audio in) and 3 (video frame in) are supported", "unsupported_binary_kind"), "");
  if (bin->kind == BinaryKind::VideoIn) {
    std::vector<std::vector<uint8_t>> image{std::vector<uint8_t>(bin->payload.begin(), bin->payload.end())};
    return image_tokens(std::move(image), "", [this](std::vector<std::vector<int32_t>> ids) {
      const std::string id = realtime_id(srv_, "item_");
      conversation_.items.push_back({"user", "", std::move(ids.at(0)), Modality::Video});
      conversation_.last_item_id = id;
      if (!within_budget("")) return;
      link_.emit(item_created(id, "user", json::array({image_part()})));
    });
  }
  if (!has(Modality::Audio)) return link_.error(no_modality(Modality::Audio), "");
  if (!opus_in_) {
    codecs::OpusFormat f;
    f.sample_rate = 48000;
    auto d = codecs::OpusFrameDecoder::create(f);
    if (!d) return link_.error(ApiError{ErrorCode::generation_failed, d.error().message}, "");
    opus_in_ = std::move(d).value();
  }
  const int rate = voice_.audio_rate();
  voice_.feed(
      [this, packet = std::vector<uint8_t>(bin->payload.begin(), bin->payload.end()), rate]() -> Expected<std::vector<float>> {
        auto pcm = opus_in_->decode(packet);  // the session's decoder: only this job touches it now
        if (!pcm) return pcm.error();
        return resample_linear(*pcm, 48000, rate);
      },
      "invalid_opus", "", [this] { within_budget(""); });
}

void RealtimeSession::start_response(const ResponseCreate& resp, const std::string& event_id) {
  if (response_) return link_.error(invalid("a response is already in progress", "conversation_already_has_active_response"), event_id);
  if (conversation_.items.empty() && conversation_.instructions.empty())
    return link_.error(invalid("add an item before asking for a response", "empty_conversation"), event_id);
  const std::vector<std::string> modalities = resp.modalities.value_or(settings_.modalities);
  const bool audio = has_name(modalities, "audio"), video = has_name(modalities, "video");
  if (audio && !has(Modality::Audio)) return link_.error(no_modality(Modality::Audio), event_id);
  if (video && !has(Modality::Video)) return link_.error(no_modality(Modality::Video), event_id);
  if (audio && video) return link_.error(invalid("a response carries one media modality: audio or video", "invalid_value"), event_id);
  srv_.metrics.conversation_items_dropped += conversation_.trim(srv_.cfg.max_conversation_tokens);
  // The whole request is built and checked before it is admitted: a refused one never
  // counts against the key or holds the server.
  AnswerShape shape;
  shape.modality = audio ? Modality::Audio : video ? Modality::Video : Modality::Text;
  shape.temperature = settings_.temperature;
  // Audio: up to max_response_output_tokens codes when set, else 2000 (10 s at 200 codes/s);
  // video: whole frames, else 2 seconds.
  shape.max_tokens = settings_.max_tokens_set || shape.modality == Modality::Text ? settings_.max_tokens : audio ? 2000 : 0;
  shape.media_seconds = 2;
  auto built = answer_request(conversation_.request(srv_.cfg.chat_template), shape, srv_.cfg.modalities);
  if (const ApiError* e = std::get_if<ApiError>(&built)) return link_.error(*e, event_id);
  actors::text_request request = std::get<actors::text_request>(std::move(built));
  if (resp.tutti)  // extension: class, rate, watermarks
    if (auto e = apply_tutti_extension(*resp.tutti, request)) {
      ApiError bad = *e;
      bad.detail = "invalid_value";
      return link_.error(bad, event_id);
    }
  request.id = srv_.next_id++;
  GenerationSpec spec;
  spec.key = key_;
  spec.endpoint = "/v1/realtime";
  spec.record_id = "resp_" + std::to_string(request.id);
  spec.media_in = conversation_.media_tokens();
  spec.request = std::move(request);
  RealtimeResponse::Setup setup;
  setup.at = {spec.record_id, realtime_id(srv_, "item_")};
  setup.modality = shape.modality;
  setup.modalities = modalities;
  setup.binary = settings_.binary_opus;
  setup.input_audio_tokens = int32_t(spec.media_in[Modality::Audio]);
  setup.client_event_id = event_id;
  if (audio) {
    const ModalityInfo& m = *srv_.pipe.codecs->info(Modality::Audio);
    setup.audio_rate = voice_.audio_rate();
    setup.audio_stages = int(m.num_stages);
    setup.audio_frame_ms = std::max<int>(1, int(int64_t(m.frame_size) * 1000 / m.sample_rate));
    setup.committed_at = voice_.take_committed_at();
    spec.output = [binary = settings_.binary_opus, wire = settings_.out_wire, rate = setup.audio_rate] {
      return std::shared_ptr<MediaOutput>(binary ? make_opus_audio_output(rate) : make_wire_audio_output(wire, rate));
    };
  } else if (video) {
    spec.output = [] { return std::shared_ptr<MediaOutput>(make_jpeg_frame_output()); };
  }
  auto response = std::make_shared<RealtimeResponse>(link_, srv_, std::move(setup), [this](RealtimeResponse::Result r) { response_done(std::move(r)); });
  auto started = Generation::start(srv_, std::move(spec), response);
  if (const ApiError* e = std::get_if<ApiError>(&started)) return link_.error(*e, event_id);
  response->generation = std::get<std::shared_ptr<Generation>>(std::move(started));
  link_.credit_to(response->generation);
  response_ = response;
  link_.emit(response_created(response->generation->spec().record_id, modalities));
}

// A response ended: the conversation keeps the assistant's answer (text, or the audio heard).
void RealtimeSession::response_done(RealtimeResponse::Result r) {
  response_.reset();
  if (r.modality == Modality::Text && r.end.ok()) {
    conversation_.items.push_back({"assistant", r.text, {}});
    conversation_.last_item_id = r.item_id;
  } else if (!r.audio_ids.empty()) {
    const ModalityInfo& m = *srv_.pipe.codecs->info(Modality::Audio);
    std::vector<int32_t> ids{int32_t(m.begin_token)};
    ids.insert(ids.end(), r.audio_ids.begin(), r.audio_ids.end());
    ids.push_back(int32_t(m.end_token));
    conversation_.items.push_back({"assistant", "", std::move(ids), Modality::Audio});
    conversation_.last_item_id = r.item_id;
  }
  link_.response_finished();
}

}  // namespace tutti::http
