#include "actors/http/media.hpp"

#include <algorithm>
#include <cmath>
#include <map>

#include "codecs/audio_tokenizer.h"
#include "codecs/media_decoder.h"
#include "codecs/patch_tokenizer.h"
#include "actors/http/openai.hpp"
#include "pipeline/unicode.h"

namespace tutti::http {

using json = nlohmann::json;

namespace {

ApiError bad(const std::string& message, const std::string& param = "") { return invalid_request(message, param); }

const json* field(const json& j, const char* name) {
  auto it = j.find(name);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::optional<ApiError> string_field(const json& j, const char* name, bool required, std::string& out) {
  const json* v = field(j, name);
  if (!v) return required ? std::optional<ApiError>(bad(std::string("'") + name + "' is required", name)) : std::nullopt;
  if (!v->is_string()) return bad(std::string("'") + name + "' must be a string", name);
  out = v->get<std::string>();
  return std::nullopt;
}

std::optional<ApiError> number_field(const json& j, const char* name, double lo, double hi, double& out) {
  const json* v = field(j, name);
  if (!v) return std::nullopt;
  if (!v->is_number() || v->get<double>() < lo || v->get<double>() > hi)
    return bad(std::string("'") + name + "' must be a number from " + json(lo).dump() + " to " + json(hi).dump(), name);
  out = v->get<double>();
  return std::nullopt;
}

// "WxH" with both positive.
bool parse_size(const std::string& s, int& w, int& h) {
  const size_t x = s.find('x');
  if (x == std::string::npos) return false;
  try {
    w = std::stoi(s.substr(0, x));
    h = std::stoi(s.substr(x + 1));
  } catch (...) {
    return false;
  }
  return w > 0 && h > 0 && std::to_string(w) + "x" + std::to_string(h) == s;
}

}  // namespace

std::string orpheus_voice(const std::string& voice) {
  // OpenAI's voice names to the speakers Orpheus was fine-tuned on; its own names pass.
  static const std::map<std::string, std::string> kVoices = {
      {"alloy", "tara"}, {"ash", "dan"},  {"ballad", "leo"}, {"coral", "leah"}, {"echo", "zac"},    {"fable", "jess"},
      {"nova", "mia"},   {"onyx", "leo"}, {"sage", "zoe"},   {"shimmer", "mia"}, {"verse", "tara"}, {"marin", "leah"}, {"cedar", "dan"}};
  auto it = kVoices.find(voice);
  return it == kVoices.end() ? voice : it->second;
}

std::string speech_prompt(const ModalityInfo& audio, const std::string& voice, double speed, const std::string& text) {
  if (audio.layout == TokenLayout::Orpheus) {
    // As Orpheus's server formats it: start of human, "voice: text" (the tokenizer adds BOS
    // to it), end of text, end of human, start of AI; the executor then opens the speech
    // span (start of speech, 128257) and the codes follow.
    return "\x1d<custom_token_3>\x1f" + orpheus_voice(voice) + ": " + text + "\x1d<|eot_id|>\x1f\x1d<custom_token_4>\x1f\x1d<custom_token_5>\x1f";
  }
  return "voice: " + voice + "\nspeed: " + json(speed).dump() + "\n" + text;
}

std::variant<MediaRequest, ApiError> parse_media_request(MediaKind kind, const std::string& body, const ModalityTable& modalities,
                                                         const ServedModel& served_model, double max_seconds,
                                                         RequestClass default_class) {
  if (!unicode::is_valid_utf8(body)) return bad("the request body is not valid UTF-8");
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) return bad("the request body is not valid JSON");
  if (!j.is_object()) return bad("the request body must be a JSON object");
  MediaRequest r;
  r.kind = kind;
  r.model = served_model.name;
  r.request.request_class = default_class;
  if (const json* t = field(j, "tutti")) {
    const json* cls = t->is_object() ? field(*t, "class") : nullptr;
    const auto parsed = cls && cls->is_string() ? parse_request_class(cls->get<std::string>()) : std::nullopt;
    if (!t->is_object() || (cls && (!parsed || *parsed == RequestClass::Realtime)))
      return bad("'tutti' must be an object whose 'class' is interactive or batch", "tutti.class");
    if (parsed) r.request.request_class = *parsed;
  }
  if (auto e = string_field(j, "model", false, r.model)) return *e;
  if (!served_model.answers_to(r.model)) return served_model.not_found(r.model);
  r.model = served_model.resolve(r.model);
  const Modality modality = kind == MediaKind::Speech ? Modality::Audio : kind == MediaKind::Music ? Modality::Music
                            : kind == MediaKind::Image ? Modality::Image : Modality::Video;
  const ModalityInfo* m = modalities.find(modality);
  if (!m) return ApiError{ErrorCode::unsupported_modality, std::string("this model has no ") + modality_name(modality) + " modality", "model"};
  r.request.modality = modality;
  r.request.temperature = 1.0f;  // media want variety; greedy decoding repeats one code
  double temperature = 1.0;
  if (auto e = number_field(j, "temperature", 0, 2, temperature)) return *e;
  r.request.temperature = float(temperature);

  if (kind == MediaKind::Speech || kind == MediaKind::Music) {
    std::string format = "mp3", text, voice = "alloy";
    if (auto e = string_field(j, "response_format", false, format)) return *e;
    auto f = codecs::parse_audio_format(format);
    if (!f) return bad(f.error().message, "response_format");
    r.audio_format = *f;
    if (kind == MediaKind::Speech) {
      if (auto e = string_field(j, "input", true, text)) return *e;
      if (text.empty() || text.size() > 4096) return bad("'input' must be 1 to 4096 characters", "input");
      if (auto e = string_field(j, "voice", false, voice)) return *e;
      std::string stream_format = "audio";
      if (auto e = string_field(j, "stream_format", false, stream_format)) return *e;
      if (stream_format != "audio" && stream_format != "sse") return bad("'stream_format' must be audio or sse", "stream_format");
      r.sse = stream_format == "sse";
      double speed = 1.0;
      if (auto e = number_field(j, "speed", 0.25, 4.0, speed)) return *e;
      // Roughly 12 characters a second at speed 1, plus a second; at most max_seconds.
      r.seconds = std::min(max_seconds, 1.0 + double(text.size()) / (12.0 * speed));
      r.request.prompt = speech_prompt(*m, without_markers(voice), speed, without_markers(text));
    } else {
      if (auto e = string_field(j, "prompt", true, text)) return *e;
      std::string lyrics;
      if (auto e = string_field(j, "lyrics", false, lyrics)) return *e;
      r.seconds = 10;
      if (auto e = number_field(j, "duration", 1, max_seconds, r.seconds)) return *e;
      r.request.prompt = without_markers(text + (lyrics.empty() ? "" : "\nlyrics: " + lyrics));
    }
    r.request.max_tokens = int32_t(std::ceil(r.seconds * m->tokens_per_second()));
    return r;
  }

  std::string prompt, size = std::to_string(m->width) + "x" + std::to_string(m->height);
  if (auto e = string_field(j, "prompt", true, prompt)) return *e;
  if (prompt.empty()) return bad("'prompt' must not be empty", "prompt");
  r.request.prompt = without_markers(prompt);  // client text never splices media or control tokens
  if (auto e = string_field(j, "size", false, size)) return *e;
  if (!parse_size(size, r.out_width, r.out_height) || r.out_width > 2048 || r.out_height > 2048 || r.out_width < 16 ||
      r.out_height < 16 || (kind == MediaKind::Video && (r.out_width % 2 || r.out_height % 2)))
    return bad("'size' must be WIDTHxHEIGHT between 16 and 2048 pixels" + std::string(kind == MediaKind::Video ? ", even" : ""), "size");
  const int codes_per_frame = int((m->width / m->patch_size) * (m->height / m->patch_size) * m->num_stages);
  if (kind == MediaKind::Image) {
    double n = 1;
    if (auto e = number_field(j, "n", 1, 4, n)) return *e;
    if (n != std::floor(n)) return bad("'n' must be an integer", "n");
    r.n = int(n);
    std::string rf = "b64_json";
    if (auto e = string_field(j, "response_format", false, rf)) return *e;
    if (rf != "b64_json") return bad("'response_format' must be b64_json (this server keeps no image URLs)", "response_format");
    r.request.max_tokens = codes_per_frame;
    return r;
  }
  // Video: seconds may come as a number or a string ("4"), as clients send both.
  r.seconds = 4;
  if (const json* s = field(j, "seconds")) {
    double v = -1;
    if (s->is_number()) v = s->get<double>();
    if (s->is_string()) {
      try {
        v = std::stod(s->get<std::string>());
      } catch (...) {
      }
    }
    if (!(v >= 1 && v <= max_seconds)) return bad("'seconds' must be from 1 to " + json(max_seconds).dump(), "seconds");
    r.seconds = v;
  }
  const int frames = std::max(1, int(std::lround(r.seconds * m->frame_rate)));
  r.request.max_tokens = frames * codes_per_frame;
  return r;
}

std::string base64_encode(const std::vector<uint8_t>& in) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = (uint32_t(in[i]) << 16) | (uint32_t(in[i + 1]) << 8) | in[i + 2];
    out += k[v >> 18], out += k[(v >> 12) & 63], out += k[(v >> 6) & 63], out += k[v & 63];
  }
  if (i + 1 == in.size()) {
    const uint32_t v = uint32_t(in[i]) << 16;
    out += k[v >> 18], out += k[(v >> 12) & 63], out += "==";
  } else if (i + 2 == in.size()) {
    const uint32_t v = (uint32_t(in[i]) << 16) | (uint32_t(in[i + 1]) << 8);
    out += k[v >> 18], out += k[(v >> 12) & 63], out += k[(v >> 6) & 63], out += '=';
  }
  return out;
}

Expected<std::vector<int32_t>> image_to_video_tokens(std::span<const uint8_t> image, const ModalityInfo& video,
                                                     const codecs::Codebooks& books) {
  const codecs::PatchGeometry g{int(video.width), int(video.height), int(video.patch_size)};
  codecs::ByteQueue q(image.size() + 1);
  (void)q.push(image);
  q.close();
  std::vector<uint8_t> rgb;
  codecs::DecodeLimits limits;
  limits.max_seconds = 60;
  limits.max_frames = 1;  // an image is its first frame; a video sent as one is not decoded whole
  limits.max_pixels = int64_t(8192) * 8192;
  limits.max_decode_s = 2;  // on a media worker, but still: no image costs more than this
  const Status s = codecs::decode_video(q, g.width, g.height, [&](const codecs::VideoFrame& f) {
    if (rgb.empty()) rgb = f.rgb;
  }, limits);
  if (!s) return s.error();
  if (rgb.empty()) return Error{"the image has no frame"};
  const auto codes = codecs::encode_frame(g, books, rgb);
  std::vector<int32_t> ids = {int32_t(video.begin_token)};
  const auto tokens = codecs::codes_to_tokens(video, codes);
  ids.insert(ids.end(), tokens.begin(), tokens.end());
  ids.push_back(int32_t(video.end_token));
  return ids;
}

namespace {

class AudioOutput final : public MediaOutput {
 public:
  AudioOutput(codecs::AudioFormat f, int rate) {
    auto e = codecs::make_audio_encoder(f, rate, [this](std::span<const uint8_t> b) { pending_.insert(pending_.end(), b.begin(), b.end()); });
    if (e) encoder_ = std::move(e).value();
    else error_ = e.error().message;
  }
  MediaChunk on_delta(const actors::media_delta& d) override {
    MediaChunk c;
    if (error_.empty() && !d.samples.empty())
      if (Status s = encoder_->push(d.samples); !s) error_ = s.message();
    if (d.last()) {
      c.done = true;
      if (d.finish == FinishReason::Error) error_ = d.error.empty() ? "generation failed" : d.error;
      else if (error_.empty())
        if (Status s = encoder_->finish(); !s) error_ = s.message();
    }
    c.error = error_;
    c.bytes.swap(pending_);
    return c;
  }

 private:
  std::unique_ptr<codecs::AudioStreamEncoder> encoder_;
  std::vector<uint8_t> pending_;
  std::string error_;
};

class ImageOutput final : public MediaOutput {
 public:
  ImageOutput(int w, int h) : w_(w), h_(h) {}
  MediaChunk on_delta(const actors::media_delta& d) override {
    MediaChunk c;
    if (!d.rgb.empty()) {
      auto png = codecs::encode_image("png", w_, h_, codecs::scale_rgb(d.rgb, d.width, d.height, w_, h_));
      if (png) c.bytes = std::move(png).value(), c.frames = 1;
      else error_ = png.error().message;
    }
    if (d.last()) {
      c.done = true;
      if (d.finish == FinishReason::Error) error_ = d.error;
      else if (d.finish != FinishReason::Length && error_.empty()) error_ = std::string("the image ended early (") + finish_reason_name(d.finish) + ")";
    }
    c.error = error_;
    return c;
  }

 private:
  int w_, h_;
  std::string error_;
};

class VideoOutput final : public MediaOutput {
 public:
  VideoOutput(int w, int h, double fps, const std::string& container) : w_(w), h_(h) {
    auto e = codecs::make_video_encoder(container, w, h, fps, [this](std::span<const uint8_t> b) { pending_.insert(pending_.end(), b.begin(), b.end()); });
    if (e) encoder_ = std::move(e).value();
    else error_ = e.error().message;
  }
  MediaChunk on_delta(const actors::media_delta& d) override {
    MediaChunk c;
    if (error_.empty() && !d.rgb.empty()) {
      if (Status s = encoder_->push(codecs::scale_rgb(d.rgb, d.width, d.height, w_, h_)); !s) error_ = s.message();
      ++frames_;
    }
    if (d.last()) {
      c.done = true;
      if (d.finish == FinishReason::Error) error_ = d.error.empty() ? "generation failed" : d.error;
      else if (error_.empty())
        if (Status s = encoder_->finish(); !s) error_ = s.message();
    }
    c.error = error_;
    c.frames = frames_;
    c.bytes.swap(pending_);
    return c;
  }

 private:
  int w_, h_, frames_ = 0;
  std::unique_ptr<codecs::VideoStreamEncoder> encoder_;
  std::vector<uint8_t> pending_;
  std::string error_;
};

}  // namespace

std::unique_ptr<MediaOutput> make_audio_output(codecs::AudioFormat f, int rate) { return std::make_unique<AudioOutput>(f, rate); }
std::unique_ptr<MediaOutput> make_image_output(int w, int h) { return std::make_unique<ImageOutput>(w, h); }
std::unique_ptr<MediaOutput> make_video_output(int w, int h, double fps, const std::string& container) {
  return std::make_unique<VideoOutput>(w, h, fps, container);
}

}  // namespace tutti::http
