// The route table: one line per endpoint, each with its handler (actors/http/handlers/, and
// the Realtime upgrade in actors/http/realtime/). A new endpoint is a handler file and one
// line in routes.cpp. Patterns are literal paths whose "{id}" segments match one segment
// each (handed to the handler in order).
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "actors/http/http_exchange.hpp"

namespace tutti::http {

using Handler = void (*)(HttpExchange&);

// Open: no key asked (health, the browser page); Key: any valid key; Admin: an admin key
// ([access] admin_keys; others get 403). An open server (no keys) has no access control.
enum class RouteAccess { Open, Key, Admin };

struct Route {
  bhttp::verb method;
  std::string_view pattern;
  RouteAccess access;
  Handler handler;
};

std::span<const Route> route_table();

struct RouteMatch {
  const Route* route = nullptr;     // null: no route for this method and path
  bool path_exists = false;         // another method would match (405 rather than 404)
  std::vector<std::string> params;  // the {id} segments
  std::string allowed;              // the methods that would match, for the 405's message
};
RouteMatch match_route(bhttp::verb method, std::string_view path);
// A query parameter of a request target ("/v1/realtime?model=x"), percent-decoded; nullopt
// when absent.
std::optional<std::string> query_param(std::string_view target, std::string_view name);

// The health check's handler: served from the connection reserve.
Handler routes_health();

}  // namespace tutti::http
