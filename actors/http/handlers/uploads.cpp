// The multipart upload endpoints: /v1/audio/transcriptions and /v1/audio/translations (an
// audio file of any format FFmpeg reads, turned into audio tokens and answered by the unified
// model as text), and /v1/images/edits (an image and a prompt in, an image out). Decoding and
// tokenizing run on a media worker, never on the I/O thread.
#include "actors/http/conversation.hpp"
#include "actors/http/generation.hpp"
#include "actors/http/handlers/handlers.hpp"
#include "actors/http/handlers/media_answer.hpp"
#include "actors/http/multipart.hpp"
#include "codecs/media_decoder.h"
#include "codecs/voice_input.h"

namespace tutti::http {

std::variant<Form, ApiError> read_form(HttpExchange& ex) {
  const auto boundary = multipart_boundary(std::string(ex.request()[bhttp::field::content_type]));
  if (!boundary) return invalid_request(ex.path() + " takes multipart/form-data (with a boundary)");
  return parse_multipart(ex.body(), *boundary);
}

std::variant<std::string, ApiError> json_or_form_body(HttpExchange& ex) {
  if (!multipart_boundary(std::string(ex.request()[bhttp::field::content_type]))) return ex.body();
  auto form = read_form(ex);
  if (auto* e = std::get_if<ApiError>(&form)) return *e;
  return std::get<Form>(form).fields_json().dump();
}

namespace {

enum class Task { Transcribe, Translate };
enum class TranscriptFormat { Json, Text, VerboseJson };

// One transcription's answer: the text whole (json, text, verbose_json), or streamed as
// transcript.text.delta events and a transcript.text.done with the usage.
class TranscriptAnswer final : public GenerationOwner {
 public:
  TranscriptAnswer(HttpExchange& ex, Task task, TranscriptFormat format, bool stream, double seconds, std::string language, int32_t audio_tokens)
      : ex_(ex), task_(task), format_(format), stream_(stream), seconds_(seconds), language_(std::move(language)), audio_tokens_(audio_tokens) {}
  std::shared_ptr<Generation> generation;

  void on_text(const actors::text_delta& d) override {
    text_ += d.text;
    if (!stream_) {
      if (!d.last()) generation->delivered(d.completion_tokens);
      return;
    }
    if (d.last() && (d.text.empty() || d.finish == FinishReason::Error)) return;  // the end is on_end's
    if (!started_) {
      started_ = true;
      ex_.stream(ex_.stream_head("text/event-stream"));
    }
    if (d.text.empty()) return ex_.tokens_without_bytes(d.completion_tokens);
    ex_.stream("data: " + json{{"type", "transcript.text.delta"}, {"delta", d.text}}.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n",
               d.completion_tokens);
  }

  void on_end(const GenerationEnd& e) override {
    const json usage = {{"type", "tokens"}, {"input_tokens", e.prompt_tokens}, {"output_tokens", e.output_tokens},
                        {"total_tokens", e.prompt_tokens + e.output_tokens},
                        {"input_token_details", {{"audio_tokens", audio_tokens_}, {"text_tokens", std::max(0, e.prompt_tokens - audio_tokens_)}}}};
    if (stream_ && started_) {
      if (!e.ok()) ex_.stream("data: " + e.error().body() + "\n\n");
      else ex_.stream("data: " + json{{"type", "transcript.text.done"}, {"text", text_}, {"usage", usage}}.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n");
      return ex_.end_stream();
    }
    if (!e.ok()) return ex_.respond_error(e.error());
    if (stream_) {  // nothing was generated: the done event alone
      ex_.stream(ex_.stream_head("text/event-stream"));
      ex_.stream("data: " + json{{"type", "transcript.text.done"}, {"text", text_}, {"usage", usage}}.dump() + "\n\n");
      return ex_.end_stream();
    }
    if (format_ == TranscriptFormat::Text) return ex_.respond_bytes("text/plain; charset=utf-8", text_ + "\n");
    json body = {{"text", text_}, {"usage", usage}};
    if (format_ == TranscriptFormat::VerboseJson) {
      body = {{"task", task_ == Task::Transcribe ? "transcribe" : "translate"},
              {"language", task_ == Task::Translate ? "english" : language_.empty() ? "unknown" : language_},
              {"duration", seconds_},
              {"text", text_},
              {"segments", json::array({{{"id", 0}, {"seek", 0}, {"start", 0.0}, {"end", seconds_}, {"text", text_}, {"tokens", json::array()},
                                         {"temperature", 0.0}, {"avg_logprob", 0.0}, {"compression_ratio", 0.0}, {"no_speech_prob", 0.0}}})},
              {"usage", {{"type", "duration"}, {"seconds", seconds_}}}};
    }
    ex_.respond_json(200, body.dump(-1, ' ', false, json::error_handler_t::replace));
  }

 private:
  HttpExchange& ex_;  // owns this answer
  Task task_;
  TranscriptFormat format_;
  bool stream_;
  double seconds_;
  std::string language_, text_;
  int32_t audio_tokens_;
  bool started_ = false;
};

std::optional<ApiError> text_field(const Form& form, const char* name, std::string& out, bool required = false) {
  const FormPart* p = form.find(name);
  if (!p) return required ? std::optional<ApiError>(invalid_request(std::string("'") + name + "' is required", name)) : std::nullopt;
  if (p->filename) return invalid_request(std::string("'") + name + "' must be a field, not a file", name);
  out = p->data;
  return std::nullopt;
}

void handle_transcript(HttpExchange& ex, Task task) {
  ServerState& srv = ex.server();
  auto parsed = read_form(ex);
  if (auto* e = std::get_if<ApiError>(&parsed)) return ex.respond_error(*e);
  const Form form = std::get<Form>(std::move(parsed));
  const FormPart* file = form.find("file");
  if (!file || !file->filename) return ex.respond_error(invalid_request("'file' (an audio file) is required", "file"));
  if (file->data.empty()) return ex.respond_error(invalid_request("'file' is empty", "file"));
  std::string model, format_name = "json", language, prompt, stream = "false", temperature = "0";
  for (auto [name, out, required] : {std::tuple{"model", &model, true}, std::tuple{"response_format", &format_name, false},
                                     std::tuple{"language", &language, false}, std::tuple{"prompt", &prompt, false},
                                     std::tuple{"stream", &stream, false}, std::tuple{"temperature", &temperature, false}})
    if (auto e = text_field(form, name, *out, required)) return ex.respond_error(*e);
  const ServedModel served = srv.models->served();
  if (!served.answers_to(model)) return ex.respond_error(served.not_found(model));
  TranscriptFormat format;
  if (format_name == "json") format = TranscriptFormat::Json;
  else if (format_name == "text") format = TranscriptFormat::Text;
  else if (format_name == "verbose_json") format = TranscriptFormat::VerboseJson;
  else return ex.respond_error(invalid_request("'response_format' must be json, text or verbose_json (no subtitles: srt, vtt)", "response_format"));
  if (stream != "true" && stream != "false") return ex.respond_error(invalid_request("'stream' must be true or false", "stream"));
  float temp = 0;
  try {
    temp = std::stof(temperature);
  } catch (...) {
    temp = -1;
  }
  if (!(temp >= 0 && temp <= 1)) return ex.respond_error(invalid_request("'temperature' must be a number from 0 to 1", "temperature"));
  const ModalityInfo* audio = srv.cfg.modalities.find(Modality::Audio);
  if (!audio || !srv.codecs_for(Modality::Audio) || !srv.codecs_for(Modality::Audio)->audio(Modality::Audio))
    return ex.respond_error(ApiError{ErrorCode::unsupported_modality, "this model has no audio modality", "model"});

  struct Decoded {
    std::vector<int32_t> ids;
    double seconds = 0;
    std::string error;
  };
  auto d = std::make_shared<Decoded>();
  auto codec = srv.codecs_for(Modality::Audio)->audio(Modality::Audio);
  const double max_seconds = std::max(30.0, srv.cfg.max_media_seconds * 20);
  ex.off_thread(
      [d, bytes = file->data, info = *audio, codec, max_seconds] {
        codecs::DecodeLimits limits;
        limits.max_seconds = max_seconds;
        limits.max_decode_s = 20;
        auto pcm = codecs::decode_audio_bytes(std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), codec->sample_rate(), limits);
        if (!pcm) return void(d->error = pcm.error().message);
        d->seconds = double(pcm->size()) / codec->sample_rate();
        codecs::VoiceInput voice(info, codec, std::nullopt);
        voice.push(*pcm);
        d->ids = voice.take(voice.buffer_start_ms(), voice.buffer_end_ms());
        if (d->ids.empty()) d->error = "the audio is shorter than 100 ms";
      },
      [&ex, &srv, d, task, format, stream, language, prompt, model = served.name, temp] {
        if (!d->error.empty()) return ex.respond_error(invalid_request("'file' could not be read as audio: " + d->error, "file"));
        Conversation c;
        c.instructions = task == Task::Translate ? "Translate the user's speech into English. Answer with the translation only."
                                                 : "Transcribe the user's speech" + (language.empty() ? std::string() : " (language: " + language + ")") +
                                                       ". Answer with the transcript only.";
        if (!prompt.empty()) c.instructions += "\nContext: " + prompt;
        const int32_t audio_tokens = int32_t(d->ids.size());
        c.items.push_back({"user", "", std::move(d->ids), Modality::Audio});
        AnswerShape shape;
        shape.temperature = temp;
        shape.max_tokens = srv.cfg.max_tokens;
        auto built = answer_request(c.request(srv.cfg.chat_template), shape, srv.cfg.modalities);
        if (const ApiError* e = std::get_if<ApiError>(&built)) return ex.respond_error(*e);
        auto answer = std::make_shared<TranscriptAnswer>(ex, task, format, stream == "true", d->seconds, language, audio_tokens);
        GenerationSpec spec = http_generation(ex, model, std::get<actors::text_request>(std::move(built)));
        spec.media_in = c.media_tokens();
        spec.route_as = Modality::Audio;  // the upload was encoded by the audio codec
        auto started = Generation::start(srv, std::move(spec), answer);
        if (const ApiError* e = std::get_if<ApiError>(&started)) return ex.respond_error(*e);
        answer->generation = std::get<std::shared_ptr<Generation>>(std::move(started));
        ex.keep(answer, answer->generation);
      });
}

}  // namespace

void handle_transcriptions(HttpExchange& ex) { handle_transcript(ex, Task::Transcribe); }
void handle_translations(HttpExchange& ex) { handle_transcript(ex, Task::Translate); }

// The input image becomes the prompt's image tokens (the image modality's own codebooks),
// followed by the prompt: the model generates the edited image from both.
void handle_image_edits(HttpExchange& ex) {
  ServerState& srv = ex.server();
  auto parsed = read_form(ex);
  if (auto* e = std::get_if<ApiError>(&parsed)) return ex.respond_error(*e);
  const Form form = std::get<Form>(std::move(parsed));
  const FormPart* image = form.find("image");
  if (!image) image = form.find("image[]");  // the SDK's spelling for one or more images
  if (!image || !image->filename || image->data.empty()) return ex.respond_error(invalid_request("'image' (an image file) is required", "image"));
  if (form.find("mask")) return ex.respond_error(invalid_request("'mask' is not supported: the whole image is edited", "mask"));
  json fields = form.fields_json();
  fields.erase("image");
  auto media = parse_media_request(MediaKind::Image, fields.dump(), srv.cfg.modalities, srv.models->served(), srv.cfg.max_media_seconds,
                                   srv.cfg.classes.of(MediaKind::Image));
  if (const ApiError* e = std::get_if<ApiError>(&media)) return ex.respond_error(*e);
  auto req = std::make_shared<MediaRequest>(std::get<MediaRequest>(std::move(media)));
  const ModalityInfo* info = srv.cfg.modalities.find(Modality::Image);
  auto books = srv.codecs_for(Modality::Image) ? srv.codecs_for(Modality::Image)->books(Modality::Image) : nullptr;
  if (!info || !books) return ex.respond_error(ApiError{ErrorCode::unsupported_modality, "this model has no image modality", "model"});
  struct Tokens {
    std::vector<int32_t> ids;
    std::string error;
  };
  auto t = std::make_shared<Tokens>();
  auto codecs_held = srv.codecs_for(Modality::Image);  // shared, read-only
  ex.off_thread(
      [t, bytes = image->data, info = *info, books, codecs_held] {
        auto ids = image_to_video_tokens(std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), info, *books);
        if (!ids) return void(t->error = ids.error().message);
        t->ids = std::move(ids).value();
      },
      [&ex, t, req] {
        if (!t->error.empty()) return ex.respond_error(invalid_request("'image' could not be decoded: " + t->error, "image"));
        start_parsed_media_answer<ImagesAnswer>(ex, MediaKind::Image, *req, [t](GenerationSpec& spec) {
          spec.media_in[Modality::Image] = int64_t(t->ids.size());
          spec.request.prompt = "\x1e" "0\x1f" + spec.request.prompt;  // the input image, then the prompt
          spec.request.media_parts = {std::move(t->ids)};
        });
      });
}

}  // namespace tutti::http
