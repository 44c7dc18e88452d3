// TLS for the HTTP and WebSocket front door (OpenSSL through Boost.Asio/Beast): the server's
// context from a certificate chain and key, and a development certificate authority with a
// localhost certificate (`tutti serve --tls-self-signed`). Only the session, the Realtime
// connection and the listener include this; handlers never see a transport.
#pragma once

#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>

#include <memory>
#include <string>

#include "pipeline/expected.h"

namespace tutti::http {

using PlainStream = boost::beast::tcp_stream;
using TlsStream = boost::beast::ssl_stream<boost::beast::tcp_stream>;

// A server context (TLS 1.2 and 1.3 only) holding `cert_file` (PEM: the certificate, then
// any intermediates) and `key_file` (PEM private key), which must match.
Expected<std::shared_ptr<boost::asio::ssl::context>> make_server_tls_context(const std::string& cert_file,
                                                                           const std::string& key_file);

// A development-only certificate authority and a certificate it signs for localhost,
// 127.0.0.1 and ::1, written into `dir` as ca.pem (what clients trust), cert.pem and key.pem.
// Existing files that are still valid for at least a day are reused, so a client's trust in
// the CA survives restarts.
struct SelfSignedFiles {
  std::string ca, cert, key;
  bool reused = false;
};
Expected<SelfSignedFiles> make_self_signed(const std::string& dir);

}  // namespace tutti::http
