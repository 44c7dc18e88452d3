// /v1/images/generations: n images, one generation each in turn (one record), answered
// together as base64 PNG.
#include "actors/http/handlers/handlers.hpp"
#include "actors/http/handlers/media_answer.hpp"

namespace tutti::http {

void handle_images(HttpExchange& ex) { start_media_answer<ImagesAnswer>(ex, MediaKind::Image); }

}  // namespace tutti::http
