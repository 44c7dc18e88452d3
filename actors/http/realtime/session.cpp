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

void emit_item_joined(RealtimeLink& link, Dialect d, const json& item, const std::string& previous_item_id) {
  link.emit(item_added(d, item, previous_item_id));
  if (d == Dialect::Ga) link.emit(item_done(item, previous_item_id));
}

namespace {
json wire_format(AudioWire w) {
  switch (w) {
    case AudioWire::Pcm16: return {{"type", "audio/pcm"}, {"rate", 24000}};
    case AudioWire::G711Ulaw: return {{"type", "audio/pcmu"}};
    case AudioWire::G711Alaw: return {{"type", "audio/pcma"}};
  }
  return nullptr;
}
}  // namespace

void RealtimeSession::set_dialect(Dialect d) {
  settings_.dialect = d;
  if (d == Dialect::Ga && has(Modality::Audio)) settings_.modalities = {"audio"};  // GA: audio out by default
}

json RealtimeSession::item_json(const std::string& id) const {
  const auto parts = conversation_.item(id);
  if (parts.empty()) return nullptr;
  const std::string& role = parts.front()->role;
  const bool assistant = role == "assistant";
  json content = json::array();
  for (const ConversationItem* p : parts) {
    if (p->ids.empty()) content.push_back(assistant ? output_text_part(settings_.dialect, p->text) : text_part(p->text));
    else if (p->media == Modality::Audio) content.push_back(assistant ? output_audio_part(settings_.dialect, "") : audio_part());
    else content.push_back(image_part());
  }
  return message_item(id, role, content);
}

std::vector<RateLimit> RealtimeSession::rate_limits() {
  std::vector<RateLimit> out;
  const access::KeyLimits& l = srv_.limiter.limits();
  const double now = ServerState::unix_seconds();
  if (l.requests_per_minute > 0) {
    double reset = 0;
    const int64_t left = srv_.limiter.requests_left(key_, now, &reset);
    out.push_back({"requests", l.requests_per_minute, left, reset});
  }
  if (l.tokens_per_minute > 0) {
    const char* modality = has_name(settings_.modalities, "audio") ? "audio" : "text";
    out.push_back({"tokens", l.tokens_per_minute, std::max<int64_t>(0, srv_.limiter.tokens_left(key_, modality, now)), 60});
  }
  return out;
}

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

void RealtimeSession::identify(std::string session_id) {
  id = std::move(session_id);
  pin_.set(id);
  conversation_.placement = id;
}

json RealtimeSession::session_json() const {
  const RealtimeSettings& s = settings_;
  json td = nullptr;
  if (s.vad && s.semantic_vad) {
    td = {{"type", "semantic_vad"}, {"eagerness", s.eagerness}, {"create_response", s.auto_response}, {"interrupt_response", true}};
  } else if (s.vad) {
    td = {{"type", "server_vad"}, {"threshold", s.vad->threshold}, {"prefix_padding_ms", s.vad->prefix_padding_ms},
          {"silence_duration_ms", s.vad->silence_duration_ms}, {"create_response", s.auto_response}, {"interrupt_response", true},
          {"idle_timeout_ms", s.idle_timeout_ms > 0 ? json(s.idle_timeout_ms) : json(nullptr)}};
  }
  const json tutti = {{"binary_audio", s.binary_opus ? "opus" : "none"}, {"temperature", s.temperature}};
  if (s.dialect == Dialect::Beta)
    return {{"id", id}, {"object", "realtime.session"}, {"model", srv_.cfg.model_name}, {"modalities", s.modalities},
            {"instructions", conversation_.instructions}, {"temperature", s.temperature}, {"max_response_output_tokens", s.max_tokens},
            {"input_audio_format", audio_wire_name(s.in_wire)}, {"output_audio_format", audio_wire_name(s.out_wire)},
            {"voice", s.voice}, {"turn_detection", td}, {"tutti", tutti}};
  return {{"type", "realtime"}, {"object", "realtime.session"}, {"id", id}, {"model", srv_.cfg.model_name},
          {"output_modalities", s.modalities}, {"instructions", conversation_.instructions}, {"max_output_tokens", s.max_tokens},
          {"audio",
           {{"input", {{"format", wire_format(s.in_wire)}, {"turn_detection", td}, {"transcription", nullptr}, {"noise_reduction", nullptr}}},
            {"output", {{"format", wire_format(s.out_wire)}, {"voice", s.voice}, {"speed", 1.0}}}}},
          {"tools", json::array()}, {"tool_choice", "auto"}, {"tracing", nullptr}, {"truncation", "auto"}, {"prompt", nullptr},
          {"include", nullptr}, {"tutti", tutti}};
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
  if (u.voice) settings_.voice = *u.voice;
  if (u.turn_detection == SessionUpdate::Turns::Manual) {
    settings_.vad.reset();
    settings_.idle_timeout_ms = 0;
    voice_.reset();
  } else if (u.turn_detection == SessionUpdate::Turns::ServerVad) {
    settings_.vad = u.vad;
    settings_.auto_response = u.create_response;
    settings_.semantic_vad = u.semantic;
    settings_.eagerness = u.eagerness;
    settings_.idle_timeout_ms = u.idle_timeout_ms;
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
  if (!item.id.empty() && !conversation_.item(item.id).empty())
    return link_.error(invalid("the conversation already has an item '" + item.id + "'", "item_id_already_exists"), event_id);
  auto add = [this, item, event_id](std::vector<std::vector<int32_t>> image_ids) {
    const std::string id = item.id.empty() ? realtime_id(srv_, "item_") : item.id;
    const std::string previous = conversation_.last_item_id;
    if (!item.text.empty()) conversation_.items.push_back({item.role, item.text, {}, Modality::Audio, id});
    for (auto& ids : image_ids) conversation_.items.push_back({item.role, "", std::move(ids), Modality::Video, id});
    conversation_.last_item_id = id;
    if (!within_budget(event_id)) return;
    emit_item_joined(link_, settings_.dialect, item_json(id), previous);
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

void RealtimeSession::apply(ItemRetrieve& r, const std::string& event_id) {
  json item = item_json(r.item_id);
  if (item.is_null()) return link_.error(invalid("the conversation has no item '" + r.item_id + "'", "item_not_found"), event_id);
  link_.emit(item_retrieved(std::move(item)));
}

void RealtimeSession::apply(ItemDelete& d, const std::string& event_id) {
  if (!conversation_.erase(d.item_id))
    return link_.error(invalid("the conversation has no item '" + d.item_id + "'", "item_not_found"), event_id);
  link_.emit(item_deleted(d.item_id));
}

// An assistant's audio cut at audio_end_ms: the conversation keeps the whole frames before it,
// so the next answer follows what the user heard.
void RealtimeSession::apply(ItemTruncate& t, const std::string& event_id) {
  ConversationItem* audio = nullptr;
  for (ConversationItem& it : conversation_.items)
    if (it.id == t.item_id && it.role == "assistant" && !it.ids.empty() && it.media == Modality::Audio) audio = &it;
  if (!audio || t.content_index != 0)
    return link_.error(invalid("no assistant audio item '" + t.item_id + "' (content_index 0) to truncate", "item_truncate_invalid_item_id"),
                       event_id);
  const ModalityInfo& m = *srv_.codecs_for(Modality::Audio)->info(Modality::Audio);
  const int64_t frame_ms = std::max<int64_t>(1, int64_t(m.frame_size) * 1000 / m.sample_rate);
  const size_t stages = std::max<size_t>(1, m.num_stages);
  const size_t codes = audio->ids.size() >= 2 ? audio->ids.size() - 2 : 0;  // between begin and end
  const int64_t audio_ms = int64_t(codes / stages) * frame_ms;
  if (t.audio_end_ms > audio_ms)
    return link_.error(invalid("audio_end_ms " + std::to_string(t.audio_end_ms) + " is past the item's " + std::to_string(audio_ms) + " ms",
                               "invalid_value"),
                       event_id);
  const size_t keep = size_t(t.audio_end_ms / frame_ms) * stages;
  std::vector<int32_t> ids{audio->ids.front()};
  ids.insert(ids.end(), audio->ids.begin() + 1, audio->ids.begin() + 1 + std::ptrdiff_t(keep));
  ids.push_back(audio->ids.back());
  audio->ids = std::move(ids);
  link_.emit(item_truncated(t.item_id, t.content_index, t.audio_end_ms));
}

void RealtimeSession::apply(OutputAudioBufferClear&, const std::string& event_id) {
  if (!response_ || !has_name(response_->modalities(), "audio"))
    return link_.error(invalid("no audio response is playing", "response_cancel_not_active"), event_id);
  response_->clear_audio();
}

void RealtimeSession::image_tokens(std::vector<std::vector<uint8_t>> images, const std::string& event_id,
                                   std::function<void(std::vector<std::vector<int32_t>>)> done) {
  if (!has(Modality::Video)) return link_.error(no_modality(Modality::Video), event_id);
  struct Result {
    std::vector<std::vector<int32_t>> ids;
    std::string error;
  };
  auto r = std::make_shared<Result>();
  auto books = srv_.codecs_for(Modality::Video);  // shared, read-only; holds `video`
  const ModalityInfo* video = books->info(Modality::Video);
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
      const std::string previous = conversation_.last_item_id;
      conversation_.items.push_back({"user", "", std::move(ids.at(0)), Modality::Video, id});
      conversation_.last_item_id = id;
      if (!within_budget("")) return;
      emit_item_joined(link_, settings_.dialect, item_json(id), previous);
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
  const bool limited = resp.max_output_tokens || settings_.max_tokens_set;
  const int limit = resp.max_output_tokens ? std::min(*resp.max_output_tokens, srv_.cfg.max_tokens) : settings_.max_tokens;
  shape.max_tokens = limited || shape.modality == Modality::Text ? limit : audio ? 2000 : 0;
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
  spec.sticky = conversation_.placement;
  spec.media_in = conversation_.media_tokens();
  spec.request = std::move(request);
  RealtimeResponse::Setup setup;
  setup.at = {spec.record_id, realtime_id(srv_, "item_")};
  setup.modality = shape.modality;
  setup.modalities = modalities;
  setup.binary = settings_.binary_opus;
  setup.input_audio_tokens = int32_t(spec.media_in[Modality::Audio]);
  setup.client_event_id = event_id;
  setup.dialect = settings_.dialect;
  setup.max_output_tokens = shape.max_tokens;
  setup.previous_item_id = conversation_.last_item_id;
  if (audio) {
    const ModalityInfo& m = *srv_.codecs_for(Modality::Audio)->info(Modality::Audio);
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
  response->opened(rate_limits());
}

// A response ended: the conversation keeps the assistant's answer (text, or the audio heard).
void RealtimeSession::response_done(RealtimeResponse::Result r) {
  response_.reset();
  voice_.response_ended();
  if (r.modality == Modality::Text && !r.text.empty()) {  // a cut answer keeps what was said
    conversation_.items.push_back({"assistant", r.text, {}, Modality::Audio, r.item_id});
    conversation_.last_item_id = r.item_id;
  } else if (!r.audio_ids.empty()) {
    const ModalityInfo& m = *srv_.codecs_for(Modality::Audio)->info(Modality::Audio);
    std::vector<int32_t> ids{int32_t(m.begin_token)};
    ids.insert(ids.end(), r.audio_ids.begin(), r.audio_ids.end());
    ids.push_back(int32_t(m.end_token));
    conversation_.items.push_back({"assistant", "", std::move(ids), Modality::Audio, r.item_id});
    conversation_.last_item_id = r.item_id;
  }
  link_.response_finished();
}

}  // namespace tutti::http
