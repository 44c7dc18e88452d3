// /v1/audio/speech and /v1/music/generations: audio in the asked format, streamed as it is
// generated (chunked transfer; the usage in a trailer).
#include "actors/http/handlers/handlers.hpp"
#include "actors/http/handlers/media_answer.hpp"

namespace tutti::http {

nlohmann::json media_usage_json(const GenerationEnd& e, Modality out) {
  return {{"input_tokens", e.prompt_tokens}, {"output_tokens", e.output_tokens}, {"total_tokens", e.prompt_tokens + e.output_tokens},
          {"input_tokens_details", {{"text_tokens", e.prompt_tokens}}},
          {"output_tokens_details", {{std::string(modality_name(out)) + "_tokens", e.output_tokens}}}};
}

namespace {

class AudioAnswer final : public GenerationOwner {
 public:
  AudioAnswer(HttpExchange& ex, const MediaRequest& m) : ex_(ex), format_(m.audio_format), modality_(m.request.modality), sse_(m.sse) {}
  std::shared_ptr<Generation> generation;

  std::function<std::shared_ptr<MediaOutput>()> output_factory(ServerState& srv) {
    const int rate = int(srv.cfg.modalities.find(modality_)->sample_rate);
    return [format = format_, rate] { return std::shared_ptr<MediaOutput>(make_audio_output(format, rate)); };
  }

  void on_media(MediaChunk& c, int32_t tokens) override {
    if (c.done) {  // the end decides whether the tail is part of a whole file
      tail_ = std::move(c.bytes);
      return;
    }
    if (!c.bytes.empty()) {
      write_chunk(c.bytes, tokens);
    } else {
      ex_.tokens_without_bytes(tokens);
    }
  }

  void on_end(const GenerationEnd& e) override {
    if (!e.ok()) {
      if (!headers_sent_) return ex_.respond_error(e.error());
      // Mid-stream: the chunked body ends without its last chunk, which clients see as a
      // failed transfer rather than a short, valid file.
      return ex_.abort_stream();
    }
    if (!tail_.empty()) write_chunk(tail_, e.output_tokens);
    send_headers();
    if (sse_) {
      ex_.stream("data: " + json{{"type", "speech.audio.done"}, {"usage", media_usage_json(e, modality_)}}.dump() + "\n\n");
      return ex_.end_stream();
    }
    ex_.stream("0\r\nX-Tutti-Usage: " + media_usage_json(e, modality_).dump() + "\r\n\r\n");
    ex_.end_stream();
  }

 private:
  void send_headers() {
    if (headers_sent_) return;
    headers_sent_ = true;
    if (sse_) return ex_.stream(ex_.stream_head("text/event-stream"));
    ex_.stream(ex_.stream_head(codecs::audio_content_type(format_), "Transfer-Encoding: chunked\r\nTrailer: X-Tutti-Usage\r\n"));
  }
  // Server-sent events (stream_format "sse"): each chunk of the encoded audio as base64.
  void write_chunk(const std::vector<uint8_t>& bytes, int32_t tokens) {
    send_headers();
    if (sse_) return ex_.stream("data: " + json{{"type", "speech.audio.delta"}, {"audio", base64_encode(bytes)}}.dump() + "\n\n", tokens);
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", bytes.size());
    ex_.stream(size + std::string(bytes.begin(), bytes.end()) + "\r\n", tokens);
  }

  HttpExchange& ex_;  // owns this answer
  codecs::AudioFormat format_;
  Modality modality_;
  bool sse_ = false;
  bool headers_sent_ = false;
  std::vector<uint8_t> tail_;
};

}  // namespace

void handle_speech(HttpExchange& ex) { start_media_answer<AudioAnswer>(ex, MediaKind::Speech); }
void handle_music(HttpExchange& ex) { start_media_answer<AudioAnswer>(ex, MediaKind::Music); }

}  // namespace tutti::http
