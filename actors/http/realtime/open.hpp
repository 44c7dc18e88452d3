// Opening a Realtime connection on an HTTP session's stream, plain or TLS, once its handler
// has checked and admitted the upgrade: the connection answers the upgrade and owns the
// stream from then on (connection.cpp).
#pragma once

#include <string>

#include "actors/http/server_state.hpp"
#include "actors/http/tls.hpp"

namespace tutti::http {

void open_realtime(PlainStream stream, ServerState& srv, const std::string& key, const bhttp::request<bhttp::string_body>& upgrade,
                   const std::string& request_id);
void open_realtime(TlsStream stream, ServerState& srv, const std::string& key, const bhttp::request<bhttp::string_body>& upgrade,
                   const std::string& request_id);

}  // namespace tutti::http
