#include "codecs/media_decoder.h"
#include "codecs/ffmpeg_support.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/channel_layout.h>
#include <libavutil/opt.h>
#include <libswresample/swresample.h>
#include <libswscale/swscale.h>
}

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace tutti::codecs {

namespace {

using ffmpeg::CodecCloser;
using ffmpeg::FrameCloser;
using ffmpeg::PacketCloser;
using ffmpeg::SwrCloser;
using ffmpeg::SwsCloser;
Error av_error(const char* call, int code) { return ffmpeg::error(call, code); }

// RAII for the FFmpeg objects of one decode.
struct FormatCloser {
  void operator()(AVFormatContext* f) const { avformat_close_input(&f); }
};
struct IoCloser {
  void operator()(AVIOContext* io) const {
    if (io) av_freep(&io->buffer);
    avio_context_free(&io);
  }
};

int read_from_queue(void* opaque, uint8_t* buf, int size) {
  const int n = static_cast<ByteQueue*>(opaque)->read(buf, size);
  if (n == 0) return AVERROR_EOF;
  if (n < 0) return AVERROR_EXIT;  // aborted
  return n;
}

// Bounds on what a client's stream may declare, checked before anything is sized from it.
constexpr size_t kMaxAllocation = size_t(256) << 20;
constexpr int kMaxSampleRate = 384000;
constexpr int kMaxChannels = 64;
constexpr int64_t kMaxPixels = int64_t(7680) * 4320;  // 8K UHD

// An opened input with its decoder for the best stream of `type`.
struct Input {
  std::unique_ptr<AVIOContext, IoCloser> io;
  std::unique_ptr<AVFormatContext, FormatCloser> fmt;
  std::unique_ptr<AVCodecContext, CodecCloser> dec;
  int stream = -1;
};

Expected<Input> open_input(ByteQueue& queue, AVMediaType type, bool live) {
  // FFmpeg would log every oddity of every client's stream to stderr; the errors that matter
  // come back to the session as Errors instead. (Process-wide, set once.)
  // A header can claim any size or rate, and FFmpeg sizes its buffers from it: no single
  // allocation may exceed kMaxAllocation, so a hostile header fails as ENOMEM instead of
  // taking gigabytes. (Process-wide, set once; larger than any frame the server decodes.)
  static std::once_flag once;
  std::call_once(once, [] {
    av_log_set_level(AV_LOG_QUIET);
    av_max_alloc(kMaxAllocation);
  });
  Input in;
  constexpr int kBuffer = 32 * 1024;
  auto* buffer = static_cast<uint8_t*>(av_malloc(kBuffer));
  if (!buffer) return Error{"FFmpeg: out of memory"};
  in.io.reset(avio_alloc_context(buffer, kBuffer, 0, &queue, read_from_queue, nullptr, nullptr));
  if (!in.io) {
    av_free(buffer);
    return Error{"FFmpeg: avio_alloc_context failed"};
  }
  AVFormatContext* fmt = avformat_alloc_context();
  if (!fmt) return Error{"FFmpeg: avformat_alloc_context failed"};
  fmt->pb = in.io.get();
  fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
  if (live) {
    fmt->probesize = 64 * 1024;
    fmt->max_analyze_duration = 500000;  // microseconds
  }
  // On failure avformat_open_input frees the context itself.
  if (int r = avformat_open_input(&fmt, nullptr, nullptr, nullptr); r < 0) return av_error("avformat_open_input", r);
  in.fmt.reset(fmt);
  if (int r = avformat_find_stream_info(fmt, nullptr); r < 0) return av_error("avformat_find_stream_info", r);
  const AVCodec* codec = nullptr;
  in.stream = av_find_best_stream(fmt, type, -1, -1, &codec, 0);
  if (in.stream < 0)
    return in.stream == AVERROR_STREAM_NOT_FOUND
               ? Error{std::string("the media has no ") + (type == AVMEDIA_TYPE_AUDIO ? "audio" : "video") + " stream"}
               : av_error("av_find_best_stream", in.stream);
  if (!codec) return Error{"FFmpeg: no decoder for the stream's codec"};
  in.dec.reset(avcodec_alloc_context3(codec));
  if (!in.dec) return Error{"FFmpeg: avcodec_alloc_context3 failed"};
  if (int r = avcodec_parameters_to_context(in.dec.get(), fmt->streams[in.stream]->codecpar); r < 0)
    return av_error("avcodec_parameters_to_context", r);
  in.dec->thread_count = 1;  // the server's cores belong to the executor
  in.dec->max_pixels = kMaxPixels;
  if (type == AVMEDIA_TYPE_AUDIO) {
    // The resampler's filter is sized from the input rate: an APC header claiming 2^31 Hz
    // made swr_init ask for 2 GB (found by the fuzz target).
    const int rate = in.dec->sample_rate, channels = in.dec->ch_layout.nb_channels;
    if (rate <= 0 || rate > kMaxSampleRate) return Error{"unsupported audio sample rate " + std::to_string(rate)};
    if (channels < 0 || channels > kMaxChannels) return Error{"unsupported audio channel count " + std::to_string(channels)};
  }
  if (int r = avcodec_open2(in.dec.get(), codec, nullptr); r < 0) return av_error("avcodec_open2", r);
  return in;
}

// Reads packets of the input's stream, decodes them and hands each frame to on_frame
// (which returns an error to stop). Flushes the decoder at the end.
Status decode_frames(Input& in, const std::function<Status(AVFrame*)>& on_frame, double budget_s = 0) {
  const auto started = std::chrono::steady_clock::now();
  std::unique_ptr<AVPacket, PacketCloser> pkt(av_packet_alloc());
  std::unique_ptr<AVFrame, FrameCloser> frame(av_frame_alloc());
  if (!pkt || !frame) return Error{"FFmpeg: out of memory"};
  auto drain = [&]() -> Status {
    for (;;) {
      const int r = avcodec_receive_frame(in.dec.get(), frame.get());
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return Status::Ok();
      if (r < 0) return av_error("avcodec_receive_frame", r);
      Status s = on_frame(frame.get());
      av_frame_unref(frame.get());
      if (!s) return s;
    }
  };
  for (;;) {
    if (budget_s > 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() > budget_s)
      return Error{"decoding took longer than its budget of " + std::to_string(budget_s) + " s"};
    const int r = av_read_frame(in.fmt.get(), pkt.get());
    if (r == AVERROR_EOF) break;
    if (r == AVERROR_EXIT) return Error{"the input stream was aborted"};
    if (r < 0) return av_error("av_read_frame", r);
    if (pkt->stream_index == in.stream) {
      const int s = avcodec_send_packet(in.dec.get(), pkt.get());
      av_packet_unref(pkt.get());
      if (s < 0 && s != AVERROR(EAGAIN)) return av_error("avcodec_send_packet", s);
      if (Status d = drain(); !d) return d;
    } else {
      av_packet_unref(pkt.get());
    }
  }
  if (int r = avcodec_send_packet(in.dec.get(), nullptr); r < 0 && r != AVERROR_EOF) return av_error("avcodec_send_packet (flush)", r);
  return drain();
}

}  // namespace

Status decode_audio(ByteQueue& queue, int sample_rate, const std::function<void(std::span<const float>)>& on_audio,
                    const DecodeLimits& limits) {
  if (sample_rate < 8000 || sample_rate > 192000) return Error{"unsupported output sample rate " + std::to_string(sample_rate)};
  auto opened = open_input(queue, AVMEDIA_TYPE_AUDIO, limits.live);
  if (!opened) return opened.error();
  Input& in = *opened;
  AVChannelLayout in_layout{};
  if (in.dec->ch_layout.order == AV_CHANNEL_ORDER_UNSPEC || in.dec->ch_layout.nb_channels == 0)
    av_channel_layout_default(&in_layout, std::max(1, in.dec->ch_layout.nb_channels));
  else if (int r = av_channel_layout_copy(&in_layout, &in.dec->ch_layout); r < 0)
    return av_error("av_channel_layout_copy", r);
  AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;  // swr_alloc_set_opts2 takes it non-const in 5.1
  SwrContext* raw = nullptr;
  int r = swr_alloc_set_opts2(&raw, &mono, AV_SAMPLE_FMT_FLT, sample_rate, &in_layout, in.dec->sample_fmt,
                              in.dec->sample_rate, 0, nullptr);
  av_channel_layout_uninit(&in_layout);
  std::unique_ptr<SwrContext, SwrCloser> swr(raw);
  if (r < 0) return av_error("swr_alloc_set_opts2", r);
  if ((r = swr_init(swr.get())) < 0) return av_error("swr_init", r);

  std::vector<float> out;
  double produced = 0;
  auto emit = [&](const uint8_t** data, int n_in) -> Status {
    const int room = swr_get_out_samples(swr.get(), n_in);
    if (room < 0) return av_error("swr_get_out_samples", room);
    out.resize(size_t(room) + 32);
    uint8_t* dst = reinterpret_cast<uint8_t*>(out.data());
    const int got = swr_convert(swr.get(), &dst, int(out.size()), data, n_in);
    if (got < 0) return av_error("swr_convert", got);
    produced += double(got) / sample_rate;
    if (produced > limits.max_seconds)
      return Error{"the audio is longer than " + std::to_string(int(limits.max_seconds)) + " seconds"};
    if (got > 0) on_audio(std::span<const float>(out.data(), size_t(got)));
    return Status::Ok();
  };
  Status s = decode_frames(in, [&](AVFrame* f) { return emit(const_cast<const uint8_t**>(f->extended_data), f->nb_samples); });
  if (!s) return s;
  return emit(nullptr, 0);  // what the resampler still holds
}

Status decode_video(ByteQueue& queue, int width, int height, const std::function<void(const VideoFrame&)>& on_frame,
                    const DecodeLimits& limits) {
  if (width < 1 || height < 1 || width > 8192 || height > 8192) return Error{"unsupported output frame size"};
  auto opened = open_input(queue, AVMEDIA_TYPE_VIDEO, limits.live);
  if (!opened) return opened.error();
  Input& in = *opened;
  const AVRational tb = in.fmt->streams[in.stream]->time_base;
  std::unique_ptr<SwsContext, SwsCloser> sws;
  int sws_w = 0, sws_h = 0, sws_fmt = -1;
  VideoFrame out;
  out.width = width;
  out.height = height;
  out.rgb.resize(size_t(width) * size_t(height) * 3);
  int frames = 0;
  bool enough = false;  // max_frames reached: decoding stops there, and that is no error
  Status s = decode_frames(in, [&](AVFrame* f) -> Status {
    if (f->width <= 0 || f->height <= 0) return Error{"a video frame without a size"};
    if (limits.max_pixels > 0 && int64_t(f->width) * f->height > limits.max_pixels)
      return Error{"a frame of " + std::to_string(f->width) + "x" + std::to_string(f->height) + " is larger than " +
                   std::to_string(limits.max_pixels) + " pixels"};
    if (!sws || f->width != sws_w || f->height != sws_h || f->format != sws_fmt) {
      sws.reset(sws_getContext(f->width, f->height, AVPixelFormat(f->format), width, height, AV_PIX_FMT_RGB24, SWS_BILINEAR,
                               nullptr, nullptr, nullptr));
      if (!sws) return Error{"FFmpeg: sws_getContext failed for the frame's format"};
      sws_w = f->width, sws_h = f->height, sws_fmt = f->format;
    }
    uint8_t* dst[1] = {out.rgb.data()};
    const int stride[1] = {width * 3};
    if (int r = sws_scale(sws.get(), f->data, f->linesize, 0, f->height, dst, stride); r < 0) return av_error("sws_scale", r);
    const int64_t pts = f->best_effort_timestamp != AV_NOPTS_VALUE ? f->best_effort_timestamp : 0;
    out.seconds = double(pts) * av_q2d(tb);
    if (out.seconds > limits.max_seconds) return Error{"the video is longer than " + std::to_string(int(limits.max_seconds)) + " seconds"};
    on_frame(out);
    if (limits.max_frames > 0 && ++frames >= limits.max_frames) {
      enough = true;
      return Error{"enough frames", ErrorCode::cancelled};
    }
    return Status::Ok();
  }, limits.max_decode_s);
  return enough ? Status::Ok() : s;
}

Expected<std::vector<float>> decode_audio_bytes(std::span<const uint8_t> bytes, int sample_rate, const DecodeLimits& limits) {
  ByteQueue queue(bytes.size() + 1);
  (void)queue.push(bytes);
  queue.close();
  std::vector<float> all;
  Status s = decode_audio(queue, sample_rate, [&](std::span<const float> chunk) { all.insert(all.end(), chunk.begin(), chunk.end()); },
                          limits);
  if (!s) return s.error();
  return all;
}

}  // namespace tutti::codecs
