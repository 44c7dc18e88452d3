// What the media endpoints share (speech, music, images; internal to handlers/): parsing the
// body into a MediaRequest and starting its generation for the exchange, and the usage object
// their answers carry.
#pragma once

#include "actors/http/generation.hpp"
#include "actors/http/handlers/handlers.hpp"
#include "actors/http/media.hpp"

namespace tutti::http {

// Starts the generation of a parsed media request under an Answer (which the exchange keeps);
// a refusal is answered here. `extend` adds to the spec before it starts (an edit's input
// image).
template <class Answer>
void start_parsed_media_answer(HttpExchange& ex, MediaKind kind, const MediaRequest& media,
                               const std::function<void(GenerationSpec&)>& extend = {}) {
  ServerState& srv = ex.server();
  auto answer = std::make_shared<Answer>(ex, media);
  GenerationSpec spec = http_generation(ex, media.model, media.request);
  spec.parts = kind == MediaKind::Image ? media.n : 1;
  spec.seed_from_id = true;
  spec.output = answer->output_factory(srv);
  if (extend) extend(spec);
  auto started = Generation::start(srv, std::move(spec), answer);
  if (const ApiError* e = std::get_if<ApiError>(&started)) return ex.respond_error(*e);
  answer->generation = std::get<std::shared_ptr<Generation>>(std::move(started));
  ex.keep(answer, answer->generation);
}

// Parses the body for `kind` and starts its generation; an invalid body is answered here.
template <class Answer>
void start_media_answer(HttpExchange& ex, MediaKind kind) {
  ServerState& srv = ex.server();
  auto parsed = parse_media_request(kind, ex.body(), srv.cfg.modalities, srv.models->served(), srv.cfg.max_media_seconds,
                                    srv.cfg.classes.of(kind));
  if (const ApiError* e = std::get_if<ApiError>(&parsed)) return ex.respond_error(*e);
  start_parsed_media_answer<Answer>(ex, kind, std::get<MediaRequest>(parsed));
}

// The usage object of a media answer (speech, music, images).
nlohmann::json media_usage_json(const GenerationEnd& e, Modality out);

// n images (generated, or edited: images.cpp, uploads.cpp), answered together as base64 PNG
// once the last is done.
class ImagesAnswer final : public GenerationOwner {
 public:
  ImagesAnswer(HttpExchange& ex, const MediaRequest& m) : ex_(ex), width_(m.out_width), height_(m.out_height) {}
  std::shared_ptr<Generation> generation;

  std::function<std::shared_ptr<MediaOutput>()> output_factory(ServerState&) {
    return [w = width_, h = height_] { return std::shared_ptr<MediaOutput>(make_image_output(w, h)); };
  }

  void on_media(MediaChunk& c, int32_t tokens) override {
    // Nothing is written until every image is there: credit as the codes arrive.
    generation->delivered(tokens);
    if (!c.bytes.empty()) images_.push_back(base64_encode(c.bytes));
  }

  void on_end(const GenerationEnd& e) override {
    if (!e.ok()) return ex_.respond_error(e.error());
    nlohmann::json data = nlohmann::json::array();
    for (const std::string& b64 : images_) data.push_back({{"b64_json", b64}});
    ex_.respond_json(200, nlohmann::json{{"created", created_}, {"data", data}, {"usage", media_usage_json(e, Modality::Image)}}.dump());
  }

 private:
  HttpExchange& ex_;  // owns this answer
  int width_, height_;
  long created_ = ServerState::unix_now();
  std::vector<std::string> images_;
};

}  // namespace tutti::http
