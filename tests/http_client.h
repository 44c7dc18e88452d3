// What the transport tests share: one HTTP request on a fresh loopback connection, a
// Realtime WebSocket client, and what FFmpeg's own ffprobe says of a file (so tests check
// media with a decoder that is not ours).
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace tutti::test {

struct Reply {
  int status = 0;
  std::string body, content_type;
  std::string retry_after, www_authenticate;
  std::string request_id;  // x-request-id
  std::string served_by;   // x-tutti-served-by
  std::string node;        // x-tutti-node (a cluster ingress: the executor node that ran it)
};

// One request (with extra header fields, e.g. Authorization) to `host` (loopback unless
// said); reads until the response ends or the server closes. Bodies up to 64 MiB.
inline Reply http_call_at(const std::string& host, uint16_t port, boost::beast::http::verb verb, const std::string& target,
                          const std::string& body = "", const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  namespace beast = boost::beast;
  namespace bhttp = boost::beast::http;
  boost::asio::io_context ioc;
  beast::tcp_stream stream(ioc);
  beast::error_code connect_ec;
  stream.connect(boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address(host), port), connect_ec);
  if (connect_ec) return {};
  bhttp::request<bhttp::string_body> req{verb, target, 11};
  req.set(bhttp::field::host, host);
  req.set(bhttp::field::content_type, "application/json");
  for (const auto& [name, value] : headers) req.set(name, value);
  req.body() = body;
  req.prepare_payload();
  bhttp::write(stream, req);
  beast::flat_buffer buf;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(64 << 20);
  beast::error_code ec;
  bhttp::read(stream, buf, parser, ec);
  const auto& res = parser.get();
  return {int(res.result_int()), res.body(), std::string(res[bhttp::field::content_type]), std::string(res[bhttp::field::retry_after]),
          std::string(res[bhttp::field::www_authenticate]), std::string(res["x-request-id"]), std::string(res["x-tutti-served-by"]),
          std::string(res["x-tutti-node"])};
}
inline Reply http_call(uint16_t port, boost::beast::http::verb verb, const std::string& target, const std::string& body = "",
                       const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  return http_call_at("127.0.0.1", port, verb, target, body, headers);
}

// A Realtime WebSocket client on the test's thread (synchronous: one thread reads and
// writes). A refused upgrade leaves `refused` at the HTTP status; `protocol` is the
// subprotocol the server chose. `ws` is there for what a test does below the events
// (binary messages, oversized frames, close codes).
// One value of a metric from the server's /metrics text: the first line that starts with
// `name_and_labels` and a space (-1 if none).
inline double metric_at(const std::string& host, uint16_t port, const std::string& name_and_labels) {
  const std::string text = http_call_at(host, port, boost::beast::http::verb::get, "/metrics").body;
  size_t at = 0;
  while ((at = text.find(name_and_labels + " ", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') return std::stod(text.substr(at + name_and_labels.size() + 1));
    at += name_and_labels.size();
  }
  return -1;
}
inline double metric(uint16_t port, const std::string& name_and_labels) { return metric_at("127.0.0.1", port, name_and_labels); }

struct RealtimeWs {
  boost::asio::io_context ioc;
  boost::beast::websocket::stream<boost::asio::ip::tcp::socket> ws{ioc};
  int refused = 0;
  std::string protocol;

  // `headers`: more upgrade headers (e.g. OpenAI-Beta for the beta dialect).
  explicit RealtimeWs(uint16_t port, const std::string& subprotocols = "", const std::string& bearer = "",
                      std::vector<std::pair<std::string, std::string>> headers = {}, const std::string& host = "127.0.0.1") {
    namespace bhttp = boost::beast::http;
    ws.next_layer().connect(boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address(host), port));
    ws.set_option(boost::beast::websocket::stream_base::decorator([&](boost::beast::websocket::request_type& req) {
      if (!subprotocols.empty()) req.set(bhttp::field::sec_websocket_protocol, subprotocols);
      if (!bearer.empty()) req.set(bhttp::field::authorization, "Bearer " + bearer);
      for (const auto& [name, value] : headers) req.set(name, value);
    }));
    boost::beast::websocket::response_type res;
    boost::beast::error_code ec;
    ws.handshake(res, host, "/v1/realtime", ec);
    if (ec) refused = int(res.result_int());
    protocol = std::string(res[bhttp::field::sec_websocket_protocol]);
  }
  void send(const nlohmann::json& event) { ws.write(boost::asio::buffer(event.dump())); }
  // A message as it is, in the stream's current mode (ws.binary(true) for binary ones).
  void send_raw(const std::string& message) { ws.write(boost::asio::buffer(message)); }
  nlohmann::json next() {
    boost::beast::flat_buffer b;
    ws.read(b);
    return nlohmann::json::parse(boost::beast::buffers_to_string(b.data()));
  }
  // Events until one of `type` (all of them into `seen`); a test failure if none comes.
  nlohmann::json until(const std::string& type, std::vector<nlohmann::json>* seen = nullptr) {
    for (int i = 0; i < 100000; ++i) {
      nlohmann::json e = next();
      if (seen) seen->push_back(e);
      if (e["type"] == type) return e;
    }
    ADD_FAILURE() << "no " << type;
    return {};
  }
};

// A request whose answer is read as it arrives (a stream under way, a node lost mid-answer):
// the raw bytes so far, the head's x-tutti-node.
struct StreamingCall {
  boost::asio::io_context ioc;
  boost::beast::tcp_stream stream{ioc};
  std::string received;
  StreamingCall(const std::string& host, uint16_t port, const std::string& target, const nlohmann::json& body) {
    stream.connect(boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address(host), port));
    const std::string b = body.dump();
    const std::string req = "POST " + target + " HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/json\r\nContent-Length: " +
                            std::to_string(b.size()) + "\r\n\r\n" + b;
    boost::asio::write(stream, boost::asio::buffer(req));
  }
  StreamingCall(uint16_t port, const std::string& target, const nlohmann::json& body) : StreamingCall("127.0.0.1", port, target, body) {}
  // Reads until `text` has arrived (or the connection ends); whether it did.
  bool until(const std::string& text) {
    char buf[8192];
    while (received.find(text) == std::string::npos) {
      boost::beast::error_code ec;
      const size_t n = stream.socket().read_some(boost::asio::buffer(buf), ec);
      if (ec) return false;
      received.append(buf, n);
    }
    return true;
  }
  std::string node() const {
    const size_t at = received.find("x-tutti-node: ");
    return at == std::string::npos ? "" : received.substr(at + 14, received.find("\r\n", at) - at - 14);
  }
};

// ffprobe's csv answer for `entries` (e.g. "stream=codec_name,sample_rate") of the bytes,
// first stream only (fragmented MP4 lists its stream twice), written to test-data/NAME.
inline std::string ffprobe(const std::string& bytes, const std::string& name, const std::string& entries) {
  const std::string path = std::string(TUTTI_BINARY_DIR) + "/test-data/" + name;
  std::ofstream(path, std::ios::binary).write(bytes.data(), long(bytes.size()));
  const std::string cmd = "ffprobe -v error -show_entries " + entries + " -of csv=p=0 '" + path + "' 2>&1";
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char line[256];
    while (fgets(line, sizeof line, p)) out += line;
    pclose(p);
  }
  out = out.substr(0, out.find('\n'));
  while (!out.empty() && out.back() == ',') out.pop_back();
  return out;
}

}  // namespace tutti::test
