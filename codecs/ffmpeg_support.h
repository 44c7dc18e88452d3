// What the FFmpeg input and output code share: one error form for every FFmpeg call's code,
// and RAII owners for FFmpeg's objects (each freed on every path).
#pragma once

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libswresample/swresample.h>
#include <libswscale/swscale.h>
}

#include <string>

#include "pipeline/expected.h"

namespace tutti::codecs::ffmpeg {

// "FFmpeg: <call>: <FFmpeg's words for the code>".
inline Error error(const char* call, int code) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(code, buf, sizeof buf);
  return Error{std::string("FFmpeg: ") + call + ": " + buf};
}

struct CodecCloser {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FrameCloser {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct PacketCloser {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwrCloser {
  void operator()(SwrContext* s) const { swr_free(&s); }
};
struct SwsCloser {
  void operator()(SwsContext* s) const { sws_freeContext(s); }
};

}  // namespace tutti::codecs::ffmpeg
