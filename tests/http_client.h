// What the transport tests share: one HTTP request on a fresh loopback connection, and what
// FFmpeg's own ffprobe says of a file (so tests check media with a decoder that is not ours).
#pragma once

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
};

// One request (with extra header fields, e.g. Authorization); reads until the response ends
// or the server closes. Bodies up to 64 MiB.
inline Reply http_call(uint16_t port, boost::beast::http::verb verb, const std::string& target, const std::string& body = "",
                       const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  namespace beast = boost::beast;
  namespace bhttp = boost::beast::http;
  boost::asio::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.connect(boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), port));
  bhttp::request<bhttp::string_body> req{verb, target, 11};
  req.set(bhttp::field::host, "127.0.0.1");
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
          std::string(res[bhttp::field::www_authenticate])};
}

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
