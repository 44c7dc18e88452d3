// /v1/realtime: Realtime WebSocket sessions (text and voice). See realtime_audio.hpp for the
// wire formats and the VAD, session_support.hpp for what sessions share.
#include "actors/http/conversation.hpp"
#include "actors/http/realtime_audio.hpp"
#include "actors/http/realtime_events.hpp"
#include "actors/http/session_support.hpp"
#include "codecs/audio_tokenizer.h"
#include "codecs/opus_codec.h"

namespace tutti::http {

using namespace detail;

// The owner of a speech prefill's generation (text_request::prefill_only): nothing reaches
// the client. When it ends, the session may start the next one.
struct SpeechPrefill {
  std::function<void()> on_done;  // runs once, on the I/O thread
  void on_prompt_tokens(int32_t) {}
  void on_refused(const std::string&) { done(); }
  void on_delta(const text_delta& d) {
    if (!d.finish_reason.empty()) done();
  }
  void on_media(MediaChunk, int32_t, int32_t) {}
  void done() {
    if (auto f = std::move(on_done)) f();
    on_done = nullptr;
  }
};

// ---- /v1/realtime: the OpenAI Realtime event grammar over a WebSocket.
// Client events (parsed by realtime_events.hpp): session.update, conversation.item.create,
// response.create, response.cancel, input_audio_buffer.append / .commit / .clear.
// Server events: session.created / .updated, conversation.item.created, response.created,
// response.output_text.delta / .done, response.done (with usage), and non-fatal error events
// that carry the client's event_id. One response at a time per session.
class RealtimeSession : public std::enable_shared_from_this<RealtimeSession> {
  struct Item;  // of the conversation (below)

 public:
  // `key`: the name of the key the client presented; the session holds one of its
  // concurrent sessions (admitted by the HTTP session before the upgrade) while it lasts.
  RealtimeSession(tcp::socket socket, HttpServer::Impl& srv, std::string key)
      : ws_(std::move(socket)), srv_(srv), max_tokens_(std::min(256, srv.cfg.max_tokens)), key_(std::move(key)),
        session_hold_(srv, key_, false, true) {
    ++srv_.metrics.active_connections;
    apply_socket_options(ws_.next_layer().socket(), srv_.cfg);
  }
  ~RealtimeSession() {
    --srv_.metrics.active_connections;
    srv_.on_drain.erase(drain_id_);
    if (generating_) caf::anon_send<caf::message_priority::high>(srv_.pipe.executor, cancel_atom::value, request_id_);
    end_response("cancelled", "the client went away or the server stopped", 0, 0, video_answer_ ? "video" : "text");
    if (sink_) caf::anon_send_exit(sink_, caf::exit_reason::user_shutdown);
    if (prefill_) caf::anon_send<caf::message_priority::high>(srv_.pipe.executor, cancel_atom::value, prefill_id_);
  }

  void start(bhttp::request<bhttp::string_body> req) {
    ws_.read_message_max(srv_.cfg.max_body_bytes);
    // Half-open peers: after read_timeout without traffic the server pings, and closes the
    // session if the peer stays silent (a realtime client may idle, but it answers pings).
    beast::websocket::stream_base::timeout timeouts;
    timeouts.handshake_timeout = millis(srv_.cfg.read_timeout_s);
    timeouts.idle_timeout = millis(srv_.cfg.read_timeout_s);
    timeouts.keep_alive_pings = true;
    ws_.set_option(timeouts);
    // A browser that offers subprotocols (the key travels in one) needs one chosen back:
    // "realtime" when offered, never the key's.
    const std::string chosen = realtime::choose_subprotocol(req[bhttp::field::sec_websocket_protocol]);
    if (!chosen.empty())
      ws_.set_option(beast::websocket::stream_base::decorator(
          [chosen](beast::websocket::response_type& res) { res.set(bhttp::field::sec_websocket_protocol, chosen); }));
    drain_id_ = uint64_t(srv_.next_id++);
    srv_.on_drain[drain_id_] = [weak = std::weak_ptr<RealtimeSession>(shared_from_this())] {
      if (auto self = weak.lock()) self->go_away();
    };
    ws_.async_accept(req, [self = shared_from_this()](beast::error_code ec) {
      if (ec) return;
      self->session_id_ = "sess_" + std::to_string(self->srv_.next_id++);
      self->emit({{"type", "session.created"}, {"session", self->session_json()}});
      self->read();
    });
  }

  void on_prompt_tokens(int32_t) {}

  // The server drains: close with "going away" once the response in flight is done and
  // every event is written (flush() calls close_going_away then).
  void go_away() {
    going_away_ = true;
    flush();
  }
  void close_going_away() {
    if (closing_) return;
    closing_ = true;
    ws_.async_close(beast::websocket::close_code::going_away, [self = shared_from_this()](beast::error_code) {});
  }

  // An audio answer's deltas: the sink already turned samples into the session's output wire
  // format (base64 text in chunk.bytes).
  void on_media(MediaChunk c, int32_t tokens, int32_t prompt_tokens) {
    if (!generating_) return;
    if (video_answer_) return on_video(std::move(c), tokens, prompt_tokens);
    answer_ids_.insert(answer_ids_.end(), c.tokens.begin(), c.tokens.end());
    if (!c.bytes.empty() && !barged_in_) {  // after a barge-in nothing more is sent
      if (audio_sent_samples_ == 0) {
        first_audio_at_ = std::chrono::steady_clock::now();
        if (committed_at_) {  // latency of a voice turn: end of speech to first audio out
          srv_.metrics.speech_to_first_audio.observe(std::chrono::duration<double>(*first_audio_at_ - *committed_at_).count());
          committed_at_.reset();
        }
      }
      audio_sent_samples_ += int64_t(c.frames);  // frames carries samples for wire audio
      if (binary_opus_) {
        for (const std::string& packet : split_length_prefixed(c.bytes))
          send_binary(char(BinaryKind::AudioOut) + packet, tokens);
      } else {
        emit({{"type", "response.output_audio.delta"}, {"response_id", response_id_}, {"item_id", item_id_}, {"output_index", 0},
              {"content_index", 0}, {"delta", std::string(c.bytes.begin(), c.bytes.end())}}, tokens);
      }
    } else if (!c.done) {
      if (out_.empty()) credit_.delivered(srv_.pipe.executor, tokens);
      else out_.back().tokens_through = tokens;
    }
    if (!c.done && c.error.empty()) return;
    generating_ = false;
    const bool cancelled = c.error == "cancelled";
    end_response(cancelled ? "cancelled" : !c.error.empty() ? "failed" : "completed", cancelled ? "" : c.error, prompt_tokens, tokens, "audio");
    if (!c.error.empty() && !cancelled) generation_error(c.error);
    emit({{"type", "response.output_audio.done"}, {"response_id", response_id_}, {"item_id", item_id_}, {"output_index", 0}, {"content_index", 0}});
    emit({{"type", "response.output_audio_transcript.done"}, {"response_id", response_id_}, {"item_id", item_id_}, {"output_index", 0},
          {"content_index", 0}, {"transcript", ""}});
    // What could have been heard: what was sent, but no more than the time since the first
    // audio went out.
    const double elapsed = first_audio_at_ ? std::chrono::duration<double>(std::chrono::steady_clock::now() - *first_audio_at_).count() : 0;
    const int64_t played_ms = std::min<int64_t>(audio_sent_samples_ * 1000 / audio_rate(), int64_t(elapsed * 1000));
    if (cancelled && barged_in_)  // barge-in: the client learns where the user cut in
      emit({{"type", "conversation.item.truncated"}, {"item_id", item_id_}, {"content_index", 0}, {"audio_end_ms", played_ms}});
    // The answer joins the conversation as the assistant's audio: all of it when it finished,
    // what was heard when it was cut short, nothing when it failed.
    if (c.error.empty() || cancelled) remember_audio_answer(cancelled ? played_ms : -1);
    barged_in_ = false;
    const std::string status = cancelled ? "cancelled" : !c.error.empty() ? "failed" : "completed";
    emit({{"type", "response.done"},
          {"response", {{"id", response_id_}, {"object", "realtime.response"}, {"status", status}, {"modalities", {"audio"}},
                        {"usage", {{"input_tokens", prompt_tokens}, {"output_tokens", tokens}, {"total_tokens", prompt_tokens + tokens},
                                   {"input_token_details", {{"text_tokens", std::max(0, prompt_tokens - input_audio_tokens_)},
                                                            {"audio_tokens", input_audio_tokens_}}},
                                   {"output_token_details", {{"text_tokens", 0}, {"audio_tokens", tokens}}}}}}}});
  }
  // The audio answer's ids (whole frames; up to `heard_ms` when not -1) become an assistant
  // item, wrapped in the modality's begin and end tokens as a user's speech is.
  void remember_audio_answer(int64_t heard_ms) {
    const ModalityInfo& m = *srv_.pipe.codecs->info(Modality::Audio);
    const size_t stages = size_t(std::max<int64_t>(1, m.num_stages));
    size_t keep = answer_ids_.size() / stages * stages;
    if (heard_ms >= 0) {
      const int64_t frame_ms = std::max<int64_t>(1, int64_t(m.frame_size) * 1000 / m.sample_rate);
      keep = std::min(keep, size_t(heard_ms / frame_ms) * stages);
    }
    if (keep == 0) return;
    std::vector<int32_t> ids{int32_t(m.begin_token)};
    ids.insert(ids.end(), answer_ids_.begin(), answer_ids_.begin() + std::ptrdiff_t(keep));
    ids.push_back(int32_t(m.end_token));
    conversation_.push_back({"assistant", "", std::move(ids)});
    last_item_id_ = item_id_;
  }
  // A video answer (tutti extension): each finished frame as a JPEG, in a binary message of
  // kind 4 when the binary framing is on, else in a tutti.response.output_video.delta event.
  void on_video(MediaChunk c, int32_t tokens, int32_t prompt_tokens) {
    for (const std::string& jpeg : split_length_prefixed(c.bytes, 4)) {
      if (binary_opus_) {
        send_binary(char(BinaryKind::VideoOut) + jpeg, tokens);
      } else {
        emit({{"type", "tutti.response.output_video.delta"}, {"response_id", response_id_}, {"item_id", item_id_}, {"output_index", 0},
              {"content_index", 0}, {"frame_index", video_frames_sent_}, {"content_type", "image/jpeg"},
              {"delta", base64_encode(std::vector<uint8_t>(jpeg.begin(), jpeg.end()))}}, tokens);
      }
      ++video_frames_sent_;
    }
    if (c.bytes.empty() && !c.done) {
      if (out_.empty()) credit_.delivered(srv_.pipe.executor, tokens);
      else out_.back().tokens_through = tokens;
    }
    if (!c.done && c.error.empty()) return;
    generating_ = false;
    const bool cancelled = c.error == "cancelled";
    end_response(cancelled ? "cancelled" : !c.error.empty() ? "failed" : "completed", cancelled ? "" : c.error, prompt_tokens, tokens, "video");
    if (!c.error.empty() && !cancelled) generation_error(c.error);
    emit({{"type", "tutti.response.output_video.done"}, {"response_id", response_id_}, {"item_id", item_id_}, {"output_index", 0},
          {"content_index", 0}, {"frames", video_frames_sent_}});
    const std::string status = cancelled ? "cancelled" : !c.error.empty() ? "failed" : "completed";
    emit({{"type", "response.done"},
          {"response", {{"id", response_id_}, {"object", "realtime.response"}, {"status", status}, {"modalities", {"video"}},
                        {"usage", {{"input_tokens", prompt_tokens}, {"output_tokens", tokens}, {"total_tokens", prompt_tokens + tokens},
                                   {"input_token_details", {{"text_tokens", std::max(0, prompt_tokens - input_audio_tokens_)},
                                                            {"audio_tokens", input_audio_tokens_}}},
                                   {"output_token_details", {{"text_tokens", 0}, {"audio_tokens", 0}, {"tutti.video_tokens", tokens}}}}}}}});
  }

  void on_refused(const std::string& message) {
    generating_ = false;
    end_response("failed", message, 0, 0, "text");
    generation_error(message);
    finish_response("failed", 0, 0);
  }
  void on_delta(const text_delta& d) {
    if (!generating_) return;
    if (!d.text.empty()) {  // tokens whose text is held back produce no event
      text_ += d.text;
      emit({{"type", "response.output_text.delta"}, {"response_id", response_id_}, {"item_id", item_id_}, {"output_index", 0},
            {"content_index", 0}, {"delta", d.text}}, d.completion_tokens);
    } else if (d.finish_reason.empty()) {
      if (out_.empty()) credit_.delivered(srv_.pipe.executor, d.completion_tokens);
      else out_.back().tokens_through = d.completion_tokens;
    }
    if (d.finish_reason.empty()) return;
    generating_ = false;
    end_response(d.finish_reason == "cancelled" ? "cancelled" : d.finish_reason == "error" ? "failed" : d.finish_reason == "length" ? "incomplete" : "completed",
                 d.error, d.prompt_tokens, d.completion_tokens, "text");
    if (d.finish_reason == "error") generation_error(d.error);
    emit({{"type", "response.output_text.done"}, {"response_id", response_id_}, {"item_id", item_id_}, {"output_index", 0},
          {"content_index", 0}, {"text", text_}});
    if (d.finish_reason != "error" && d.finish_reason != "cancelled") {
      conversation_.push_back({"assistant", text_, {}});
      last_item_id_ = item_id_;
    }
    const std::string status = d.finish_reason == "cancelled" ? "cancelled" : d.finish_reason == "error" ? "failed"
                               : d.finish_reason == "length" ? "incomplete" : "completed";
    finish_response(status, d.prompt_tokens, d.completion_tokens);
  }

 private:
  json session_json() const {
    json td = nullptr;
    if (vad_config_)
      td = {{"type", "server_vad"}, {"threshold", vad_config_->threshold}, {"prefix_padding_ms", vad_config_->prefix_padding_ms},
            {"silence_duration_ms", vad_config_->silence_duration_ms}, {"create_response", auto_response_}};
    return {{"id", session_id_}, {"object", "realtime.session"}, {"model", srv_.cfg.model_name}, {"modalities", modalities_},
            {"instructions", instructions_}, {"temperature", temperature_}, {"max_response_output_tokens", max_tokens_},
            {"input_audio_format", audio_wire_name(in_wire_)}, {"output_audio_format", audio_wire_name(out_wire_)},
            {"turn_detection", td}, {"tutti", {{"binary_audio", binary_opus_ ? "opus" : "none"}}}};
  }

  bool has_audio() const { return srv_.pipe.codecs && srv_.pipe.codecs->info(Modality::Audio); }
  bool has_video() const { return srv_.pipe.codecs && srv_.pipe.codecs->info(Modality::Video); }

  // ---- input audio: buffered, voice-detected, encoded to audio tokens as it arrives
  VoiceInput& voice() {
    if (!voice_)
      voice_.emplace(*srv_.pipe.codecs->info(Modality::Audio), srv_.pipe.codecs->audio(Modality::Audio), vad_config_);
    return *voice_;
  }
  // The audio codec's sample rate: what input is resampled to and output comes at.
  int audio_rate() const { return srv_.pipe.codecs->audio(Modality::Audio)->sample_rate(); }

  // An image (base64 PNG/JPEG) as video tokens; an error event (and nothing) if it is not.
  std::optional<std::vector<int32_t>> image_tokens(const std::string& b64, const std::string& event_id) {
    if (!has_video()) {
      error("invalid_request_error", "video_not_supported", "this model has no video modality", event_id);
      return std::nullopt;
    }
    auto bytes = base64_decode(b64);
    if (!bytes) {
      error("invalid_request_error", "invalid_image", bytes.error().message, event_id);
      return std::nullopt;
    }
    return image_bytes_tokens(*bytes, event_id);
  }
  std::optional<std::vector<int32_t>> image_bytes_tokens(std::span<const uint8_t> bytes, const std::string& event_id) {
    if (!has_video()) {  // a binary video frame reaches here directly
      error("invalid_request_error", "video_not_supported", "this model has no video modality", event_id);
      return std::nullopt;
    }
    auto ids = image_to_video_tokens(bytes, *srv_.pipe.codecs->info(Modality::Video), *srv_.pipe.codecs->books(Modality::Video));
    if (!ids) {
      error("invalid_request_error", "invalid_image", "the image could not be decoded: " + ids.error().message, event_id);
      return std::nullopt;
    }
    return std::move(ids).value();
  }

  // Binary messages (the tutti framing): kind byte, then an Opus packet (48 kHz, 20 ms) for
  // audio in, or an image (PNG/JPEG) for a video frame in.
  void handle_binary(const std::string& msg) {
    if (!binary_opus_)
      return error("invalid_request_error", "binary_not_enabled", "binary messages need session.update tutti.binary_audio = opus", "");
    const auto bin = realtime::parse_binary_message(msg);
    if (!bin)
      return error("invalid_request_error", "unsupported_binary_kind", "binary messages of kind 1 (audio in) and 3 (video frame in) are supported", "");
    if (bin->kind == BinaryKind::VideoIn) {
      auto ids = image_bytes_tokens(bin->payload, "");
      if (!ids) return;
      const std::string id = "item_" + std::to_string(srv_.next_id++);
      conversation_.push_back({"user", "", std::move(*ids)});
      last_item_id_ = id;
      json image_part = json::object();
      image_part["type"] = "input_image";
      return emit({{"type", "conversation.item.created"},
                   {"item", {{"id", id}, {"type", "message"}, {"role", "user"}, {"content", json::array({image_part})}}}});
    }
    if (!has_audio()) return error("invalid_request_error", "audio_not_supported", "this model has no audio modality", "");
    if (!opus_in_) {
      codecs::OpusFormat f;
      f.sample_rate = 48000;
      auto d = codecs::OpusFrameDecoder::create(f);
      if (!d) return error("server_error", "", d.error().message, "");
      opus_in_ = std::move(d).value();
    }
    auto pcm = opus_in_->decode(bin->payload);
    if (!pcm) return error("invalid_request_error", "invalid_opus", pcm.error().message, "");
    feed_audio(resample_linear(*pcm, 48000, audio_rate()), "");
  }

  void send_binary(std::string data, int32_t tokens_through) {
    if (closing_) return;
    out_.push_back({std::move(data), tokens_through, true});
    flush();
  }

  void feed_audio(const std::vector<float>& pcm, const std::string& event_id) {
    if (voice().buffer_end_ms() - voice().buffer_start_ms() + int64_t(pcm.size()) / 24 > 15 * 60 * 1000)
      return error("invalid_request_error", "input_audio_buffer_full", "the input audio buffer holds at most 15 minutes", event_id);
    for (const auto& e : voice().push(pcm)) {
      if (e.started) {
        speech_start_ms_ = e.at_ms;
        speech_item_id_ = "item_" + std::to_string(srv_.next_id++);
        emit({{"type", "input_audio_buffer.speech_started"}, {"audio_start_ms", e.at_ms}, {"item_id", speech_item_id_}});
        if (generating_) {  // barge-in: the user talks over the answer
          barged_in_ = true;
          srv_.metrics.barge_ins++;
          caf::anon_send<caf::message_priority::high>(srv_.pipe.executor, cancel_atom::value, request_id_);
        }
        prefilled_ms_ = e.at_ms;
      } else {
        emit({{"type", "input_audio_buffer.speech_stopped"}, {"audio_end_ms", e.at_ms}, {"item_id", speech_item_id_}});
        commit_audio(speech_from_ms(), e.at_ms, "");
        if (auto_response_ && !generating_) start_response(realtime::ResponseCreate{}, "");
      }
    }
    if (!speech_item_id_.empty()) prefill_speech();
  }

  // Prefill while the user is still talking: every prefill_while_speaking_ms of new speech,
  // the conversation plus the speech so far is prefilled (one at a time), so that at the end
  // of the turn the request finds it in the prefix cache and computes only what came since.
  // Only between responses: during one, the conversation is about to change.
  void prefill_speech() {
    const int interval = srv_.cfg.prefill_while_speaking_ms;
    if (interval <= 0 || generating_ || prefill_ || voice().buffer_end_ms() - prefilled_ms_ < interval) return;
    prefilled_ms_ = voice().buffer_end_ms();
    const Item speech{"user", "", voice().peek(speech_from_ms())};
    trim_conversation(&speech);
    text_request r = conversation_request(&speech);
    r.prefill_only = true;
    r.request_class = "interactive";
    r.id = prefill_id_ = srv_.next_id++;
    prefill_ = std::make_shared<SpeechPrefill>();
    prefill_->on_done = [weak = std::weak_ptr<RealtimeSession>(shared_from_this())] {
      if (auto self = weak.lock()) self->prefill_.reset();
    };
    srv_.metrics.speech_prefills++;
    spawn_generation(srv_.system, srv_.ioc, srv_.pipe.encoder, r, std::weak_ptr<SpeechPrefill>(prefill_));
  }
  // The conversation stays within max_conversation_tokens (oldest_items_to_drop, in
  // conversation.hpp). Media items count their ids; text their bytes (an upper bound: every
  // token covers at least a byte); `pending` is the speech about to be prefilled.
  void trim_conversation(const Item* pending = nullptr) {
    auto cost = [](const Item& it) { return int64_t(it.ids.empty() ? it.text.size() : it.ids.size()); };
    std::vector<int64_t> costs;
    for (const Item& it : conversation_) costs.push_back(cost(it));
    if (pending) costs.push_back(cost(*pending));  // the newest: never dropped
    const size_t drop = std::min(conversation_.size(),
                                 oldest_items_to_drop(costs, int64_t(instructions_.size()), srv_.cfg.max_conversation_tokens));
    conversation_.erase(conversation_.begin(), conversation_.begin() + std::ptrdiff_t(drop));
    srv_.metrics.conversation_items_dropped += drop;
  }
  int64_t speech_from_ms() const { return std::max<int64_t>(0, speech_start_ms_ - vad_config_->prefix_padding_ms); }

  // The buffered audio from `from_ms` to `to_ms` (stream time) becomes a user item of audio
  // tokens.
  void commit_audio(int64_t from_ms, int64_t to_ms, const std::string& event_id) {
    std::vector<int32_t> ids = voice().take(from_ms, to_ms);
    if (ids.empty())
      return error("invalid_request_error", "input_audio_buffer_commit_empty", "the buffer holds less than 100 ms of audio", event_id);
    const std::string id = speech_item_id_.empty() ? "item_" + std::to_string(srv_.next_id++) : speech_item_id_;
    emit({{"type", "input_audio_buffer.committed"}, {"previous_item_id", last_item_id_.empty() ? json(nullptr) : json(last_item_id_)}, {"item_id", id}});
    conversation_.push_back({"user", "", std::move(ids)});
    last_item_id_ = id;
    emit({{"type", "conversation.item.created"},
          {"item", {{"id", id}, {"type", "message"}, {"role", "user"}, {"content", {{{"type", "input_audio"}, {"transcript", nullptr}}}}}}});
    committed_at_ = std::chrono::steady_clock::now();
    speech_item_id_.clear();
  }

  void clear_audio() {
    if (voice_) voice_->clear();
  }

  // The conversation as a prompt: text items through the chat template, audio items as
  // spliced token ids (media markers).
  // `pending`: an item not in the conversation yet (speech still being spoken) at its end.
  text_request conversation_request(const Item* pending = nullptr) const {
    std::vector<ChatMessage> messages;
    text_request r;
    if (!instructions_.empty()) messages.push_back({"system", instructions_});
    std::vector<const Item*> items;
    for (const Item& it : conversation_) items.push_back(&it);
    if (pending) items.push_back(pending);
    for (const Item* item : items) {
      const Item& it = *item;
      if (it.ids.empty()) {
        messages.push_back({it.role, without_markers(it.text)});  // marker bytes from a client are not markers
      } else {
        messages.push_back({it.role, "\x1e" + std::to_string(r.media_parts.size()) + "\x1f"});
        r.media_parts.push_back(it.ids);
      }
    }
    r.prompt = format_chat(srv_.cfg.chat_template, messages);
    return r;
  }

  void read() {
    ws_.async_read(in_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return;  // closed or protocol error: the session ends (~RealtimeSession cancels)
      const std::string text = beast::buffers_to_string(self->in_.data());
      self->in_.consume(self->in_.size());
      try {
        self->handle(text, self->ws_.got_text());
      } catch (const json::exception& e) {  // a field of the wrong type: the client's mistake, not a crash
        self->error("invalid_request_error", "invalid_value", std::string("a field has the wrong type: ") + e.what(), "");
      }
      self->read();
    });
  }

  void handle(const std::string& text, bool is_text) {
    if (!is_text) return handle_binary(text);
    auto parsed = realtime::parse_client_event(text);
    if (auto* e = std::get_if<realtime::EventError>(&parsed)) return error("invalid_request_error", e->code, e->message, e->event_id);
    auto& ev = std::get<realtime::ClientEvent>(parsed);
    std::visit([&](auto& body) { apply(body, ev.event_id); }, ev.body);
  }

  // ---- the client events (realtime_events.hpp has their grammar)
  void apply(realtime::SessionUpdate& u, const std::string& event_id) {
    // What depends on the model; the rest was checked by the parser. Nothing applies unless
    // all of it is valid.
    if (u.modalities) {
      const auto& m = *u.modalities;
      if (std::count(m.begin(), m.end(), "audio") && !has_audio())
        return error("invalid_request_error", "invalid_value", "this model has no audio modality", event_id);
      if (std::count(m.begin(), m.end(), "video") && !has_video())
        return error("invalid_request_error", "invalid_value", "this model has no video modality", event_id);
      modalities_ = m;
    }
    if (u.instructions) instructions_ = *u.instructions;
    if (u.temperature) temperature_ = *u.temperature;
    if (u.max_output_tokens) {
      max_tokens_ = std::min(*u.max_output_tokens, srv_.cfg.max_tokens);
      max_tokens_set_ = true;
    }
    if (u.input_wire) in_wire_ = *u.input_wire;
    if (u.output_wire) out_wire_ = *u.output_wire;
    if (u.binary_opus) binary_opus_ = *u.binary_opus;
    using Turns = realtime::SessionUpdate::Turns;
    if (u.turn_detection == Turns::Manual) {
      vad_config_.reset();
      voice_.reset();
    } else if (u.turn_detection == Turns::ServerVad) {
      vad_config_ = u.vad;
      auto_response_ = u.create_response;
      voice_.reset();
    }
    emit({{"type", "session.updated"}, {"session", session_json()}});
  }

  void apply(realtime::ItemCreate& item, const std::string& event_id) {
    std::vector<std::vector<int32_t>> images;
    for (const std::string& b64 : item.images_base64) {
      auto ids = image_tokens(b64, event_id);
      if (!ids) return;  // the error event went out
      images.push_back(std::move(*ids));
    }
    json parts = json::array();
    if (!item.text.empty()) {
      conversation_.push_back({item.role, item.text, {}});
      parts.push_back({{"type", "input_text"}, {"text", item.text}});
    }
    for (auto& ids : images) {
      conversation_.push_back({item.role, "", std::move(ids)});
      json image_part = json::object();
      image_part["type"] = "input_image";
      parts.push_back(image_part);
    }
    const std::string id = item.id.empty() ? "item_" + std::to_string(srv_.next_id++) : item.id;
    last_item_id_ = id;
    emit({{"type", "conversation.item.created"}, {"item", {{"id", id}, {"type", "message"}, {"role", item.role}, {"content", parts}}}});
  }

  void apply(realtime::ResponseCreate& resp, const std::string& event_id) { start_response(resp, event_id); }

  void apply(realtime::AudioAppend& a, const std::string& event_id) {
    if (!has_audio()) return error("invalid_request_error", "audio_not_supported", "this model has no audio modality", event_id);
    auto samples = decode_wire_audio(a.audio_base64, in_wire_);
    if (!samples) return error("invalid_request_error", "invalid_audio", samples.error().message, event_id);
    feed_audio(resample_linear(*samples, audio_wire_rate(in_wire_), audio_rate()), event_id);
  }

  void apply(realtime::AudioCommit&, const std::string& event_id) {
    if (!has_audio()) return error("invalid_request_error", "audio_not_supported", "this model has no audio modality", event_id);
    commit_audio(voice().buffer_start_ms(), voice().buffer_end_ms(), event_id);
  }

  void apply(realtime::AudioClear&, const std::string&) {
    clear_audio();
    emit({{"type", "input_audio_buffer.cleared"}});
  }

  void apply(realtime::ResponseCancel&, const std::string& event_id) {
    if (!generating_) return error("invalid_request_error", "response_cancel_not_active", "no response is in progress", event_id);
    caf::anon_send<caf::message_priority::high>(srv_.pipe.executor, cancel_atom::value, request_id_);
  }

  void start_response(const realtime::ResponseCreate& resp, const std::string& event_id) {
    if (generating_) return error("invalid_request_error", "conversation_already_has_active_response", "a response is already in progress", event_id);
    if (conversation_.empty() && instructions_.empty())
      return error("invalid_request_error", "empty_conversation", "add an item before asking for a response", event_id);
    trim_conversation();
    text_request r = conversation_request();
    request_id_ = srv_.next_id++;
    r.id = request_id_;
    r.temperature = temperature_;
    const std::vector<std::string> modalities = resp.modalities.value_or(modalities_);
    const bool audio = std::count(modalities.begin(), modalities.end(), "audio") > 0;
    const bool video = std::count(modalities.begin(), modalities.end(), "video") > 0;
    if (audio && !has_audio()) return error("invalid_request_error", "audio_not_supported", "this model has no audio modality", event_id);
    if (video && !has_video()) return error("invalid_request_error", "video_not_supported", "this model has no video modality", event_id);
    if (audio && video)
      return error("invalid_request_error", "invalid_value", "a response carries one media modality: audio or video", event_id);
    // Each response counts against the key's limits (the session itself holds a session).
    const std::string answer_modality = audio ? "audio" : video ? "video" : "text";
    if (auto refusal = srv_.admit(key_, answer_modality, false)) {
      json e = {{"type", refusal->code == "server_shutting_down" ? "server_error" : "rate_limit_error"}, {"code", refusal->code},
                {"message", refusal->message}, {"retry_after_s", refusal->retry_after_s}};
      e["event_id"] = event_id.empty() ? json(nullptr) : json(event_id);
      srv_.metrics.errors++;
      return emit({{"type", "error"}, {"error", e}});
    }
    response_hold_ = Hold(srv_, key_, true, false);
    response_hold_active_ = true;
    response_started_ = HttpServer::Impl::unix_seconds();
    response_started_steady_ = std::chrono::steady_clock::now();
    request_class_ = r.request_class;
    input_audio_tokens_ = 0;
    for (const auto& part : r.media_parts) input_audio_tokens_ += int32_t(part.size());
    if (audio) {
      // An audio answer: up to max_response_output_tokens codes when set, else 10 seconds.
      r.modality = "audio";
      r.max_tokens = max_tokens_set_ ? max_tokens_ : 2000;
      r.temperature = std::max(r.temperature, 0.7f);  // greedy decoding repeats one code
      r.request_class = "realtime";  // paced against its playback clock
      r.tokens_per_second = srv_.pipe.codecs->info(Modality::Audio)->tokens_per_second();
    } else if (video) {
      // A video answer: frames of the video modality, paced at its token rate; up to
      // max_response_output_tokens codes when set, else 2 seconds.
      const ModalityInfo& v = *srv_.pipe.codecs->info(Modality::Video);
      const int per_frame = int(std::lround(v.tokens_per_second() / std::max(1.0, double(v.frame_rate))));
      r.modality = "video";
      r.max_tokens = max_tokens_set_ ? std::max(per_frame, max_tokens_ / per_frame * per_frame)
                                     : per_frame * std::max(1, int(2 * v.frame_rate));
      r.temperature = std::max(r.temperature, 0.7f);
      r.request_class = "realtime";
      r.tokens_per_second = v.tokens_per_second();
    } else {
      r.max_tokens = max_tokens_;
    }
    if (resp.tutti)  // extension: class, rate, watermarks
      if (auto e = apply_tutti_extension(*resp.tutti, r)) return error(e->type, "invalid_value", e->message, event_id);
    response_id_ = "resp_" + std::to_string(request_id_);
    item_id_ = "item_" + std::to_string(srv_.next_id++);
    response_event_id_ = event_id;
    text_.clear();
    audio_sent_samples_ = 0;
    answer_ids_.clear();
    video_frames_sent_ = 0;
    video_answer_ = video;
    first_audio_at_.reset();
    generating_ = true;
    credit_.start(request_id_);
    emit({{"type", "response.created"}, {"response", {{"id", response_id_}, {"object", "realtime.response"}, {"status", "in_progress"}, {"modalities", modalities}}}});
    std::shared_ptr<MediaOutput> out;
    if (audio) out = binary_opus_ ? make_opus_audio_output(audio_rate()) : make_wire_audio_output(out_wire_, audio_rate());
    if (video) out = make_jpeg_frame_output();
    sink_ = spawn_generation(srv_.system, srv_.ioc, srv_.pipe.encoder, r, std::weak_ptr<RealtimeSession>(shared_from_this()), out);
  }

  // A response ended: its usage record (before response.done goes out), its hold released.
  void end_response(const std::string& outcome, const std::string& err, int prompt_tokens, int output_tokens, const std::string& modality) {
    if (!response_hold_active_) return;
    response_hold_active_ = false;
    UsageRecord r;
    r.request_id = response_id_;
    r.key = key_;
    r.endpoint = "/v1/realtime";
    r.request_class = request_class_;
    r.started_at = response_started_;
    if (first_audio_at_) r.first_output_s = std::chrono::duration<double>(*first_audio_at_ - response_started_steady_).count();
    r.tokens_in["text"] = std::max(0, prompt_tokens - input_audio_tokens_);
    r.tokens_in["audio"] = input_audio_tokens_;
    r.tokens_out[modality] = output_tokens;
    r.outcome = outcome, r.error = err;
    srv_.account(std::move(r));
    response_hold_.release();
  }

  void finish_response(const std::string& status, int prompt_tokens, int completion_tokens) {
    emit({{"type", "response.done"},
          {"response", {{"id", response_id_}, {"object", "realtime.response"}, {"status", status},
                        {"usage", {{"input_tokens", prompt_tokens}, {"output_tokens", completion_tokens},
                                   {"total_tokens", prompt_tokens + completion_tokens}}}}}});
  }

  // A response that could not be generated: busy (the server's queue is full: retry), a
  // refusal of the request, or a failure while generating.
  void generation_error(const std::string& message) {
    if (message.rfind("busy", 0) == 0) return error("rate_limit_error", "server_busy", message, response_event_id_);
    if (message.rfind("request needs", 0) == 0 || message.rfind("this model has no", 0) == 0)
      return error("invalid_request_error", "invalid_request", message, response_event_id_);
    error("server_error", "generation_failed", message, response_event_id_);
  }

  void error(const std::string& type, const std::string& code, const std::string& message, const std::string& event_id) {
    srv_.metrics.errors++;
    json e = {{"type", type}, {"message", message}};
    e["code"] = code.empty() ? json(nullptr) : json(code);
    e["event_id"] = event_id.empty() ? json(nullptr) : json(event_id);
    emit({{"type", "error"}, {"error", e}});
  }

  // Queues an event for the client. Generated text is bounded by credit (the client window);
  // what else a client can make the server say is one event per message it sends, so a client
  // that sends without reading is closed once max_pending_events pile up.
  void emit(json event, int32_t tokens_through = -1) {
    if (closing_) return;
    event["event_id"] = "event_" + std::to_string(srv_.next_id++);
    if (out_.size() >= srv_.cfg.max_pending_events) {
      closing_ = true;
      out_.clear();
      beast::get_lowest_layer(ws_).close();  // its write never completes: cut the socket
      return;
    }
    out_.push_back({event.dump(), tokens_through});
    flush();
  }
  void flush() {
    if (writing_) return;
    if (out_.empty()) {
      if (going_away_ && !generating_) close_going_away();
      return;
    }
    writing_ = true;
    ws_.binary(out_.front().binary);
    ws_.async_write(net::buffer(out_.front().data), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) return self->out_.clear();
      const int32_t through = self->out_.front().tokens_through;
      self->out_.pop_front();
      if (through >= 0 && self->generating_) self->credit_.delivered(self->srv_.pipe.executor, through);
      self->flush();
    });
  }

  beast::websocket::stream<beast::tcp_stream> ws_;
  HttpServer::Impl& srv_;
  beast::flat_buffer in_;
  std::deque<Outgoing> out_;
  DeliveryCredit credit_;
  bool writing_ = false, closing_ = false;
  std::string session_id_, instructions_;
  float temperature_ = 0.8f;  // the Realtime API's default
  int max_tokens_;
  bool max_tokens_set_ = false;
  struct Item {
    std::string role, text;
    std::vector<int32_t> ids;  // audio the user spoke, as tokens (then text is empty)
  };
  std::vector<Item> conversation_;
  // Audio settings and input state.
  std::vector<std::string> modalities_ = {"text"};
  AudioWire in_wire_ = AudioWire::Pcm16, out_wire_ = AudioWire::Pcm16;
  std::optional<VadConfig> vad_config_ = VadConfig{};
  bool auto_response_ = true;
  std::optional<VoiceInput> voice_;  // made on first use, remade when turn detection changes
  bool binary_opus_ = false;         // tutti.binary_audio = "opus": audio as binary Opus messages
  std::unique_ptr<codecs::OpusFrameDecoder> opus_in_;
  int64_t speech_start_ms_ = 0, audio_sent_samples_ = 0;
  std::vector<int32_t> answer_ids_;  // the audio answer's generated ids so far
  int32_t input_audio_tokens_ = 0;
  std::string speech_item_id_, last_item_id_;
  std::optional<std::chrono::steady_clock::time_point> committed_at_, first_audio_at_;
  bool barged_in_ = false;
  bool generating_ = false;
  bool video_answer_ = false;   // the response in progress is video (frames as JPEG)
  int video_frames_sent_ = 0;
  int64_t request_id_ = 0;
  std::string response_id_, item_id_, response_event_id_, text_;
  sink_actor sink_;
  // Access and accounting: the client's key, the session's hold (one of the key's concurrent
  // sessions) and the response's (a running generation), and what its record needs.
  std::string key_;
  Hold session_hold_, response_hold_;
  bool response_hold_active_ = false;
  double response_started_ = 0;
  std::chrono::steady_clock::time_point response_started_steady_;
  std::string request_class_;
  uint64_t drain_id_ = 0;
  bool going_away_ = false;
  // The speech prefill in flight (one at a time), and the buffer time it reached.
  std::shared_ptr<SpeechPrefill> prefill_;
  int64_t prefill_id_ = 0, prefilled_ms_ = 0;
};

void start_realtime(tcp::socket socket, bhttp::request<bhttp::string_body> req, HttpServer::Impl& srv, const std::string& key) {
  std::make_shared<RealtimeSession>(std::move(socket), srv, key)->start(std::move(req));
}

}  // namespace tutti::http
