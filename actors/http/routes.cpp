#include "actors/http/routes.hpp"

#include "actors/http/handlers/handlers.hpp"

namespace tutti::http {

namespace {

using bhttp::verb;
constexpr RouteAccess Open = RouteAccess::Open, Key = RouteAccess::Key, Admin = RouteAccess::Admin;

constexpr Route kRoutes[] = {
    {verb::get, "/health", Open, handle_health},
    {verb::get, "/", Open, handle_web_client},
    {verb::get, "/index.html", Open, handle_web_client},
    {verb::get, "/v1/models", Key, handle_models},
    {verb::get, "/v1/models/{id}", Key, handle_model},
    {verb::get, "/metrics", Key, handle_metrics},
    {verb::post, "/v1/chat/completions", Key, handle_chat_completions},
    {verb::post, "/v1/completions", Key, handle_completions},
    {verb::post, "/v1/audio/speech", Key, handle_speech},
    {verb::post, "/v1/music/generations", Key, handle_music},
    {verb::post, "/v1/images/generations", Key, handle_images},
    {verb::post, "/v1/images/edits", Key, handle_image_edits},
    {verb::post, "/v1/audio/transcriptions", Key, handle_transcriptions},
    {verb::post, "/v1/audio/translations", Key, handle_translations},
    {verb::post, "/v1/responses", Key, handle_responses},
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
    {verb::get, "/v1/admin/models", Admin, handle_admin_models},
    {verb::get, "/v1/admin/cluster", Admin, handle_admin_cluster},
    {verb::post, "/v1/admin/models/{id}/reload", Admin, handle_model_reload},
    {verb::post, "/v1/admin/models/{id}/canary", Admin, handle_model_canary},
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

std::optional<std::string> query_param(std::string_view target, std::string_view name) {
  const size_t q = target.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  std::string_view rest = target.substr(q + 1);
  auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; };
  while (!rest.empty()) {
    const size_t amp = rest.find('&');
    const std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    const size_t eq = pair.find('=');
    if (pair.substr(0, eq) != name) continue;
    std::string value;
    const std::string_view raw = eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '+') value += ' ';
      else if (raw[i] == '%' && i + 2 < raw.size() && hex(raw[i + 1]) >= 0 && hex(raw[i + 2]) >= 0) {
        value += char(hex(raw[i + 1]) * 16 + hex(raw[i + 2]));
        i += 2;
      } else value += raw[i];
    }
    return value;
  }
  return std::nullopt;
}
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
