// libFuzzer target for every path that takes a client's or a file's bytes: FFmpeg
// demux/decode of audio and video from a byte stream (MPEG-TS from ZeroMQ included), images
// turned into video tokens, Opus packets, the media and chat endpoints' JSON parsing, the
// Realtime client events (JSON and the binary framing) and audio wire formats, HTTP requests
// (Beast's parser with the server's body limit, then the key and subprotocol headers),
// WebSocket frames after an upgrade (Beast's, with the server's message limit; each message
// then goes to the Realtime event parser), and GGUF files (the parser, the model config and
// the tokenizer read from them). Each input goes to every parser. Seeds: tests/fuzz/corpus.
// Built with clang (-fsanitize=fuzzer,address) by tools/fuzz.sh, which ctest runs for a
// bounded time.
#include <boost/beast/_experimental/test/stream.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

#include "actors/access/access.hpp"
#include "actors/http/media.hpp"
#include "actors/http/multipart.hpp"
#include "actors/http/openai.hpp"
#include "actors/http/realtime_audio.hpp"
#include "actors/http/realtime_events.hpp"
#include "actors/http/stream_address.hpp"
#include "pipeline/gguf.h"
#include "pipeline/quantize.h"
#include "pipeline/model_config.h"
#include "pipeline/tokenizer.h"
#include "codecs/media_decoder.h"
#include "codecs/opus_codec.h"

namespace {

tutti::ModalityTable layout() {
  tutti::ModalityTable t;
  tutti::ModalityInfo a;
  a.modality = tutti::Modality::Audio, a.token_offset = 100, a.codebook_size = 256, a.num_stages = 4, a.transform = "mdct";
  a.sample_rate = 24000, a.frame_size = 480, a.codebook_dim = 480;
  tutti::ModalityInfo i;
  i.modality = tutti::Modality::Image, i.token_offset = 2000, i.codebook_size = 256, i.num_stages = 2, i.transform = "patch";
  i.patch_size = 8, i.width = 256, i.height = 256, i.codebook_dim = 192;
  tutti::ModalityInfo v = i;
  v.modality = tutti::Modality::Video, v.token_offset = 3000, v.num_stages = 1, v.width = 128, v.height = 128, v.frame_rate = 4;
  t.entries = {a, i, v};
  return t;
}

// A Realtime message as the session sees it: typed, then what the session does with it
// that is pure parsing (audio payloads, the tutti extension).
void realtime_message(std::string_view msg, bool text) {
  using namespace tutti::http;
  if (!text) {
    (void)realtime::parse_binary_message(msg);
    return;
  }
  auto parsed = realtime::parse_client_event(msg);
  auto* ev = std::get_if<realtime::ClientEvent>(&parsed);
  if (!ev) return;
  if (auto* a = std::get_if<realtime::AudioAppend>(&ev->body))
    for (AudioWire w : {AudioWire::Pcm16, AudioWire::G711Ulaw, AudioWire::G711Alaw})
      if (auto pcm = decode_wire_audio(a->audio_base64, w)) (void)resample_linear(*pcm, audio_wire_rate(w), 24000);
  if (auto* r = std::get_if<realtime::ResponseCreate>(&ev->body); r && r->tutti) {
    tutti::actors::text_request req;
    (void)apply_tutti_extension(*r->tutti, req);
  }
}

// The bytes as an HTTP request (the server's parser settings), then its headers as the
// server reads them.
void http_request(std::string_view bytes) {
  namespace bhttp = boost::beast::http;
  bhttp::request_parser<bhttp::string_body> parser;
  parser.body_limit(1 << 20);
  parser.header_limit(16 << 10);
  boost::beast::error_code ec;
  parser.put(boost::asio::buffer(bytes.data(), bytes.size()), ec);
  if (!ec) parser.put_eof(ec);
  if (ec || !parser.is_header_done()) return;
  const auto& req = parser.get();
  (void)tutti::access::ApiKeys::bearer(std::string(req[bhttp::field::authorization]));
  (void)tutti::access::ApiKeys::from_subprotocols(std::string(req[bhttp::field::sec_websocket_protocol]));
  (void)tutti::http::realtime::choose_subprotocol(std::string(req[bhttp::field::sec_websocket_protocol]));
  (void)boost::beast::websocket::is_upgrade(req);
}

// The bytes as what a client sends after a valid WebSocket upgrade: frames, read by Beast
// with the server's message limit, each message to the Realtime parser.
void websocket_frames(std::string_view bytes) {
  namespace beast = boost::beast;
  static const std::string upgrade =
      "GET /v1/realtime HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
  boost::asio::io_context ioc;
  beast::test::stream client(ioc), server(ioc);
  client.connect(server);
  server.append(upgrade);
  server.append(bytes);
  server.close_remote();  // end of input: reads see EOF after the bytes
  beast::websocket::stream<beast::test::stream&> ws(server);
  ws.read_message_max(1 << 20);
  beast::error_code ec;
  ws.accept(ec);
  for (int messages = 0; !ec && messages < 64; ++messages) {
    beast::flat_buffer buffer;
    ws.read(buffer, ec);
    if (ec) break;
    realtime_message(beast::buffers_to_string(buffer.data()), ws.got_text());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tutti;
  const std::span<const uint8_t> bytes(data, size);
  codecs::DecodeLimits limits;
  limits.max_seconds = 5;
  (void)codecs::decode_audio_bytes(bytes, 24000, limits);
  {
    codecs::ByteQueue q(size + 1);
    (void)q.push(bytes);
    q.close();
    (void)codecs::decode_video(q, 32, 24, [](const codecs::VideoFrame&) {}, limits);
  }
  static auto opus = codecs::OpusFrameDecoder::create(codecs::OpusFormat{});
  if (opus && size > 0) (void)(*opus)->decode(bytes);
  static const ModalityTable table = layout();
  // Client images become video tokens in conversations.
  static const codecs::Codebooks books = [] {
    codecs::Codebooks b;
    b.dim = 192, b.size = 256, b.stages = 1;
    b.books.assign(1, std::vector<float>(size_t(192) * 256, 0.f));
    return b;
  }();
  (void)http::image_to_video_tokens(bytes, *table.find(Modality::Video), books);
  const std::string body(reinterpret_cast<const char*>(data), size);
  for (http::MediaKind k : {http::MediaKind::Speech, http::MediaKind::Music, http::MediaKind::Image, http::MediaKind::Video})
    (void)http::parse_media_request(k, body, table, "tutti");
  (void)http::parse_request(body, true, http::ChatTemplate::ChatML, "tutti", 512);
  // The new limits' parsers: host ranges ([streams] allowed_hosts) and stream addresses
  // (numeric hosts only, so the fuzzer never waits on a name lookup), the paths a route
  // table matches, error bodies quoting client bytes.
  {
    std::vector<std::string> lines;
    for (size_t at = 0; at <= body.size() && lines.size() < 8;) {
      const size_t nl = std::min(body.find('\n', at), body.size());
      lines.push_back(body.substr(at, nl - at));
      at = nl + 1;
    }
    auto ranges = http::parse_host_ranges(lines);
    static const auto loopback = *http::parse_host_ranges({"127.0.0.0/8", "::1"});
    for (const std::string& l : lines) {
      (void)http::host_allowed(ranges ? *ranges : loopback, l);
      if (l.find_first_not_of("0123456789:.[]") == std::string::npos)
        (void)http::resolve_stream_address("zmq:tcp://" + l, ranges ? *ranges : loopback);
    }
    (void)http::ApiError(ErrorCode::not_found, "no video job '" + body + "'").body();
  }
  // Uploads: a multipart/form-data body (the first line as its Content-Type when it names a
  // boundary, else a fixed one) and its fields as JSON.
  {
    const size_t nl = std::min(body.find('\n'), body.size());
    const auto boundary = http::multipart_boundary(body.substr(0, nl));
    auto form = http::parse_multipart(boundary ? body.substr(std::min(nl + 1, body.size())) : body, boundary ? *boundary : "tutti-fuzz");
    if (auto* f = std::get_if<http::Form>(&form)) (void)f->fields_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  (void)access::ApiKeys::bearer(body);
  (void)access::ApiKeys::from_subprotocols(body);
  (void)http::realtime::choose_subprotocol(body);
  realtime_message(body, true);
  realtime_message(body, false);
  http_request(body);
  websocket_frames(body);
  // A model file: validated before anything is read from it.
  if (auto file = GgufFile::parse(data, size, "fuzz.gguf")) {
    (void)read_model_config(**file);
    if (auto tok = Tokenizer::from_gguf(**file)) (void)(*tok)->encode(body, true, false);
    // Every block format decodes whatever bytes a tensor holds (the first row of each, as the
    // embedding lookup and the quantizer read them), and the quantizer plans the file.
    std::vector<float> row;
    for (const GgufTensorInfo& t : (*file)->tensors()) {
      if (t.ne[0] > (1u << 16)) continue;
      row.resize(size_t(t.ne[0]));
      dequantize_row(t.type, t.data, row.data(), row.size());
    }
    (void)plan_quantization(**file, QuantizeMix::Q4_K_M);
  }
  return 0;
}
