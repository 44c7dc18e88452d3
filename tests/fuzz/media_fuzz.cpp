// libFuzzer target for every path that takes a client's or a file's bytes: FFmpeg
// demux/decode of audio and video from a byte stream (MPEG-TS from ZeroMQ included), images
// turned into video tokens, Opus packets, the media and chat endpoints' JSON parsing, the
// API key header forms, and GGUF files (the parser, the model config and the tokenizer read
// from them). Seeds: tests/fuzz/corpus. Built with clang (-fsanitize=fuzzer,address) by
// tools/fuzz-media.sh, which ctest runs for a bounded time.
#include <cstddef>
#include <cstdint>
#include <string>

#include "actors/http/access.hpp"
#include "actors/http/media.hpp"
#include "pipeline/gguf.h"
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
  (void)http::ApiKeys::bearer(body);
  (void)http::ApiKeys::from_subprotocols(body);
  // A model file: validated before anything is read from it.
  if (auto file = GgufFile::parse(data, size, "fuzz.gguf")) {
    (void)read_model_config(**file);
    if (auto tok = Tokenizer::from_gguf(**file)) (void)(*tok)->encode(body, true, false);
  }
  return 0;
}
