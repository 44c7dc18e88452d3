#include "actors/http/routes.hpp"

#include "actors/http/handlers/handlers.hpp"

namespace tutti::http {

namespace {

using bhttp::verb;
constexpr RouteAccess Open = RouteAccess::Open, Key = RouteAccess::Key;

constexpr Route kRoutes[] = {
    {verb::get, "/health", Open, handle_health},
    {verb::get, "/", Open, handle_web_client},
    {verb::get, "/index.html", Open, handle_web_client},
    {verb::get, "/v1/models", Key, handle_models},
    {verb::get, "/metrics", Key, handle_metrics},
    {verb::post, "/v1/chat/completions", Key, handle_chat_completions},
    {verb::post, "/v1/completions", Key, handle_completions},
    {verb::post, "/v1/audio/speech", Key, handle_speech},
    {verb::post, "/v1/music/generations", Key, handle_music},
    {verb::post, "/v1/images/generations", Key, handle_images},
    {verb::post, "/v1/videos", Key, handle_video_create},
    {verb::get, "/v1/videos", Key, handle_video_list},
    {verb::get, "/v1/videos/{id}", Key, handle_video_get},
    {verb::delete_, "/v1/videos/{id}", Key, handle_video_delete},
    {verb::get, "/v1/videos/{id}/content", Key, handle_video_content},
    {verb::post, "/v1/streams", Key, handle_stream_create},
    {verb::get, "/v1/streams", Key, handle_stream_list},
    {verb::get, "/v1/streams/{id}", Key, handle_stream_get},
    {verb::delete_, "/v1/streams/{id}", Key, handle_stream_delete},
    {verb::get, "/v1/realtime", Key, handle_realtime_upgrade},
};

std::vector<std::string_view> segments(std::string_view path) {
  std::vector<std::string_view> out;
  size_t at = 1;
  while (at <= path.size()) {
    const size_t slash = path.find('/', at);
    const size_t end = slash == std::string_view::npos ? path.size() : slash;
    out.push_back(path.substr(at, end - at));
    at = end + 1;
  }
  return out;
}

// The {id} segments when `path` fits `pattern`, else nullopt.
std::optional<std::vector<std::string>> fit(std::string_view pattern, std::string_view path) {
  if (path.empty() || path[0] != '/') return std::nullopt;
  const auto want = segments(pattern), got = segments(path);
  if (want.size() != got.size()) return std::nullopt;
  std::vector<std::string> params;
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] == "{id}") {
      if (got[i].empty()) return std::nullopt;
      params.emplace_back(got[i]);
    } else if (want[i] != got[i]) {
      return std::nullopt;
    }
  }
  return params;
}

}  // namespace

std::span<const Route> route_table() { return kRoutes; }
Handler routes_health() { return handle_health; }

RouteMatch match_route(bhttp::verb method, std::string_view path) {
  RouteMatch m;
  for (const Route& r : kRoutes) {
    auto params = fit(r.pattern, path);
    if (!params) continue;
    if (r.method == method) {
      m.route = &r;
      m.params = std::move(*params);
      return m;
    }
    m.path_exists = true;
    if (!m.allowed.empty()) m.allowed += " or ";
    m.allowed += std::string(bhttp::to_string(r.method));
  }
  return m;
}

}  // namespace tutti::http
