// /v1/images/generations: n images, one generation each in turn (one record), answered
// together as base64 PNG.
#include "actors/http/handlers/handlers.hpp"
#include "actors/http/handlers/media_answer.hpp"

namespace tutti::http {

namespace {

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
    json data = json::array();
    for (const std::string& b64 : images_) data.push_back({{"b64_json", b64}});
    ex_.respond_json(200, json{{"created", created_}, {"data", data}, {"usage", media_usage_json(e, Modality::Image)}}.dump());
  }

 private:
  HttpExchange& ex_;  // owns this answer
  int width_, height_;
  long created_ = ServerState::unix_now();
  std::vector<std::string> images_;
};

}  // namespace

void handle_images(HttpExchange& ex) { start_media_answer<ImagesAnswer>(ex, MediaKind::Image); }

}  // namespace tutti::http
