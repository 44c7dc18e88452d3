#include "codecs/media_encoder.h"
#include "codecs/ffmpeg_support.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/channel_layout.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tutti::codecs {

namespace {

using ffmpeg::CodecCloser;
using ffmpeg::FrameCloser;
using ffmpeg::PacketCloser;
using ffmpeg::SwrCloser;
using ffmpeg::SwsCloser;
Error av_error(const char* call, int code) { return ffmpeg::error(call, code); }

// swscale's SIMD paths read up to a vector past the end of a source row, so the last row of
// a tightly packed image would be read past its buffer: swscale gets a copy with FFmpeg's
// input padding after it. (Rows inside the image read into the next row: harmless.)
// A stream's encoder keeps one and reuses its buffer frame after frame.
class PaddedRgb {
 public:
  PaddedRgb() = default;
  explicit PaddedRgb(std::span<const uint8_t> rgb) { assign(rgb); }
  const uint8_t* assign(std::span<const uint8_t> rgb) {
    bytes_.resize(rgb.size() + AV_INPUT_BUFFER_PADDING_SIZE);
    std::memcpy(bytes_.data(), rgb.data(), rgb.size());
    return bytes_.data();
  }
  const uint8_t* data() const { return bytes_.data(); }

 private:
  std::vector<uint8_t> bytes_;
};


int16_t to_s16(float v) { return int16_t(std::lround(std::clamp(v, -1.f, 1.f) * 32767.f)); }

// ---- WAV and PCM: no FFmpeg needed.
class PcmEncoder final : public AudioStreamEncoder {
 public:
  PcmEncoder(bool wav, int rate, ByteSink sink) : sink_(std::move(sink)) {
    if (!wav) return;
    // A streaming WAV header: RIFF and data lengths unknown (0xFFFFFFFF).
    uint8_t h[44];
    auto u32 = [&](int at, uint32_t v) { for (int i = 0; i < 4; ++i) h[at + i] = uint8_t(v >> (8 * i)); };
    auto u16 = [&](int at, uint16_t v) { h[at] = uint8_t(v); h[at + 1] = uint8_t(v >> 8); };
    std::memcpy(h, "RIFF", 4);
    u32(4, 0xFFFFFFFFu);
    std::memcpy(h + 8, "WAVEfmt ", 8);
    u32(16, 16);
    u16(20, 1);  // PCM
    u16(22, 1);  // mono
    u32(24, uint32_t(rate));
    u32(28, uint32_t(rate) * 2);
    u16(32, 2);
    u16(34, 16);
    std::memcpy(h + 36, "data", 4);
    u32(40, 0xFFFFFFFFu);
    sink_(std::span<const uint8_t>(h, 44));
  }
  Status push(std::span<const float> samples) override {
    std::vector<uint8_t> out(samples.size() * 2);
    for (size_t i = 0; i < samples.size(); ++i) {
      const int16_t v = to_s16(samples[i]);
      out[2 * i] = uint8_t(v), out[2 * i + 1] = uint8_t(uint16_t(v) >> 8);
    }
    if (!out.empty()) sink_(out);
    return Status::Ok();
  }
  Status finish() override { return Status::Ok(); }

 private:
  ByteSink sink_;
};

// ---- A muxer writing to a ByteSink through a write-only AVIOContext.
class Muxer {
 public:
  ~Muxer() {
    if (oc_) {
      if (oc_->pb) {
        av_freep(&oc_->pb->buffer);
        avio_context_free(&oc_->pb);
      }
      avformat_free_context(oc_);
    }
  }
  Status open(const char* format_name, ByteSink sink) {
    sink_ = std::move(sink);
    if (int r = avformat_alloc_output_context2(&oc_, nullptr, format_name, nullptr); r < 0 || !oc_)
      return av_error("avformat_alloc_output_context2", r);
    constexpr int kBuffer = 16 * 1024;
    auto* buffer = static_cast<uint8_t*>(av_malloc(kBuffer));
    if (!buffer) return Error{"FFmpeg: out of memory"};
    oc_->pb = avio_alloc_context(buffer, kBuffer, 1, this, nullptr, &Muxer::write, nullptr);
    if (!oc_->pb) {
      av_free(buffer);
      return Error{"FFmpeg: avio_alloc_context failed"};
    }
    oc_->flush_packets = 1;  // bytes leave as packets are written, not when the buffer fills
    return Status::Ok();
  }
  AVFormatContext* ctx() { return oc_; }

 private:
  static int write(void* opaque, uint8_t* buf, int size) {  // FFmpeg 5.1: non-const buffer
    static_cast<Muxer*>(opaque)->sink_(std::span<const uint8_t>(buf, size_t(size)));
    return size;
  }
  AVFormatContext* oc_ = nullptr;
  ByteSink sink_;
};

// Encoder + muxer for one stream; pushes frames, writes packets.
struct EncodedStream {
  Muxer mux;
  std::unique_ptr<AVCodecContext, CodecCloser> enc;
  AVStream* stream = nullptr;
  std::unique_ptr<AVPacket, PacketCloser> pkt{av_packet_alloc()};
  bool header_written = false;

  Status write_packets() {
    for (;;) {
      const int r = avcodec_receive_packet(enc.get(), pkt.get());
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return Status::Ok();
      if (r < 0) return av_error("avcodec_receive_packet", r);
      av_packet_rescale_ts(pkt.get(), enc->time_base, stream->time_base);
      pkt->stream_index = stream->index;
      if (int w = av_interleaved_write_frame(mux.ctx(), pkt.get()); w < 0) return av_error("av_interleaved_write_frame", w);
    }
  }
  // After the codec is opened: the muxer's stream for it, and the container's header.
  Status add_stream_and_header(AVDictionary** opts) {
    stream = avformat_new_stream(mux.ctx(), nullptr);
    if (!stream) return Error{"FFmpeg: avformat_new_stream failed"};
    if (int r = avcodec_parameters_from_context(stream->codecpar, enc.get()); r < 0) return av_error("avcodec_parameters_from_context", r);
    stream->time_base = enc->time_base;
    const int r = avformat_write_header(mux.ctx(), opts);
    av_dict_free(opts);
    if (r < 0) return av_error("avformat_write_header", r);
    return Status::Ok();
  }
  Status send(AVFrame* frame) {
    if (int r = avcodec_send_frame(enc.get(), frame); r < 0 && r != AVERROR_EOF) return av_error("avcodec_send_frame", r);
    return write_packets();
  }
  Status close() {
    if (Status s = send(nullptr); !s) return s;
    if (int r = av_write_trailer(mux.ctx()); r < 0) return av_error("av_write_trailer", r);
    avio_flush(mux.ctx()->pb);
    return Status::Ok();
  }
};

class FfmpegAudioEncoder final : public AudioStreamEncoder {
 public:
  Status open(AudioFormat f, int rate, ByteSink sink) {
    const char* muxer = f == AudioFormat::Opus ? "ogg" : f == AudioFormat::Mp3 ? "mp3" : f == AudioFormat::Aac ? "adts"
                        : f == AudioFormat::MpegTs ? "mpegts" : "flac";
    const char* codec_name = f == AudioFormat::Opus ? "libopus" : f == AudioFormat::Mp3 ? "libmp3lame"
                             : (f == AudioFormat::Aac || f == AudioFormat::MpegTs) ? "aac" : "flac";
    if (Status s = s_.mux.open(muxer, std::move(sink)); !s) return s;
    const AVCodec* codec = avcodec_find_encoder_by_name(codec_name);
    if (!codec) return Error{std::string("FFmpeg: no ") + codec_name + " encoder in this build"};
    s_.enc.reset(avcodec_alloc_context3(codec));
    if (!s_.enc) return Error{"FFmpeg: avcodec_alloc_context3 failed"};
    AVCodecContext* c = s_.enc.get();
    c->sample_rate = rate;
    const AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
    if (int r = av_channel_layout_copy(&c->ch_layout, &mono); r < 0) return av_error("av_channel_layout_copy", r);
    // The first sample format the encoder takes among those we produce.
    c->sample_fmt = AV_SAMPLE_FMT_NONE;
    for (const AVSampleFormat* p = codec->sample_fmts; p && *p != AV_SAMPLE_FMT_NONE; ++p)
      if (*p == AV_SAMPLE_FMT_FLT || *p == AV_SAMPLE_FMT_FLTP || *p == AV_SAMPLE_FMT_S16 || *p == AV_SAMPLE_FMT_S16P) {
        c->sample_fmt = *p;
        break;
      }
    if (c->sample_fmt == AV_SAMPLE_FMT_NONE) return Error{std::string("FFmpeg: ") + codec_name + " takes no sample format we produce"};
    if (f != AudioFormat::Flac) c->bit_rate = f == AudioFormat::Opus ? 32000 : 64000;
    c->time_base = AVRational{1, rate};
    if (s_.mux.ctx()->oformat->flags & AVFMT_GLOBALHEADER) c->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    if (int r = avcodec_open2(c, codec, nullptr); r < 0) return av_error("avcodec_open2", r);
    // Ogg pages of 20 ms instead of the default second, so a stream's bytes leave promptly.
    AVDictionary* opts = nullptr;
    if (f == AudioFormat::Opus) av_dict_set(&opts, "page_duration", "20000", 0);
    if (Status s = s_.add_stream_and_header(&opts); !s) return s;
    frame_size_ = c->frame_size > 0 ? c->frame_size : 1152;
    frame_.reset(av_frame_alloc());
    if (!frame_) return Error{"FFmpeg: out of memory"};
    return Status::Ok();
  }

  Status push(std::span<const float> samples) override {
    pending_.insert(pending_.end(), samples.begin(), samples.end());
    size_t at = 0;
    for (; pending_.size() - at >= size_t(frame_size_); at += size_t(frame_size_))
      if (Status s = encode(std::span<const float>(pending_.data() + at, size_t(frame_size_))); !s) return s;
    pending_.erase(pending_.begin(), pending_.begin() + long(at));
    return Status::Ok();
  }

  Status finish() override {
    if (!pending_.empty()) {
      // The last frame: codecs with a fixed frame size take it padded with silence.
      const bool variable = s_.enc->codec->capabilities & AV_CODEC_CAP_VARIABLE_FRAME_SIZE;
      if (!variable) pending_.resize(size_t(frame_size_), 0.f);
      if (Status s = encode(pending_); !s) return s;
      pending_.clear();
    }
    return s_.close();
  }

 private:
  Status encode(std::span<const float> samples) {
    AVFrame* fr = frame_.get();
    av_frame_unref(fr);
    fr->nb_samples = int(samples.size());
    fr->format = s_.enc->sample_fmt;
    fr->sample_rate = s_.enc->sample_rate;
    if (int r = av_channel_layout_copy(&fr->ch_layout, &s_.enc->ch_layout); r < 0) return av_error("av_channel_layout_copy", r);
    if (int r = av_frame_get_buffer(fr, 0); r < 0) return av_error("av_frame_get_buffer", r);
    // Mono: planar and packed layouts are the same single plane.
    if (fr->format == AV_SAMPLE_FMT_FLT || fr->format == AV_SAMPLE_FMT_FLTP) {
      std::memcpy(fr->data[0], samples.data(), samples.size() * 4);
    } else {
      auto* d = reinterpret_cast<int16_t*>(fr->data[0]);
      for (size_t i = 0; i < samples.size(); ++i) d[i] = to_s16(samples[i]);
    }
    fr->pts = pts_;
    pts_ += int64_t(samples.size());
    return s_.send(fr);
  }

  EncodedStream s_;
  std::unique_ptr<AVFrame, FrameCloser> frame_;
  std::vector<float> pending_;
  int frame_size_ = 0;
  int64_t pts_ = 0;
};

class FfmpegVideoEncoder final : public VideoStreamEncoder {
 public:
  Status open(const std::string& container, int width, int height, double fps, ByteSink sink) {
    if (container != "mp4" && container != "mpegts") return Error{"unsupported video container '" + container + "' (mp4, mpegts)"};
    if (width < 16 || height < 16 || width % 2 || height % 2) return Error{"video frames must be even-sized and at least 16x16"};
    if (Status s = s_.mux.open(container.c_str(), std::move(sink)); !s) return s;
    const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
    if (!codec) return Error{"FFmpeg: no libx264 encoder in this build"};
    s_.enc.reset(avcodec_alloc_context3(codec));
    if (!s_.enc) return Error{"FFmpeg: avcodec_alloc_context3 failed"};
    AVCodecContext* c = s_.enc.get();
    c->width = width, c->height = height;
    c->pix_fmt = AV_PIX_FMT_YUV420P;
    const int rate = std::max(1, int(std::lround(fps)));
    c->time_base = AVRational{1, rate};
    c->framerate = AVRational{rate, 1};
    c->gop_size = rate;
    c->thread_count = 1;
    av_opt_set(c->priv_data, "preset", "veryfast", 0);
    if (s_.mux.ctx()->oformat->flags & AVFMT_GLOBALHEADER) c->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    if (int r = avcodec_open2(c, codec, nullptr); r < 0) return av_error("avcodec_open2", r);
    AVDictionary* opts = nullptr;
    if (container == "mp4") av_dict_set(&opts, "movflags", "frag_keyframe+empty_moov+default_base_moof", 0);
    if (Status s = s_.add_stream_and_header(&opts); !s) return s;
    sws_.reset(sws_getContext(width, height, AV_PIX_FMT_RGB24, width, height, AV_PIX_FMT_YUV420P, SWS_BILINEAR, nullptr, nullptr, nullptr));
    frame_.reset(av_frame_alloc());
    if (!sws_ || !frame_) return Error{"FFmpeg: could not set up the frame conversion"};
    frame_->format = c->pix_fmt, frame_->width = width, frame_->height = height;
    if (int g = av_frame_get_buffer(frame_.get(), 0); g < 0) return av_error("av_frame_get_buffer", g);
    return Status::Ok();
  }
  Status push(std::span<const uint8_t> rgb) override {
    AVCodecContext* c = s_.enc.get();
    if (rgb.size() != size_t(c->width) * size_t(c->height) * 3) return Error{"a video frame of the wrong size"};
    if (int r = av_frame_make_writable(frame_.get()); r < 0) return av_error("av_frame_make_writable", r);
    const uint8_t* src[1] = {padded_.assign(rgb)};
    const int stride[1] = {c->width * 3};
    sws_scale(sws_.get(), src, stride, 0, c->height, frame_->data, frame_->linesize);
    frame_->pts = pts_++;
    return s_.send(frame_.get());
  }
  Status finish() override { return s_.close(); }

 private:
  EncodedStream s_;
  std::unique_ptr<SwsContext, SwsCloser> sws_;
  std::unique_ptr<AVFrame, FrameCloser> frame_;
  PaddedRgb padded_;  // the frame being converted
  int64_t pts_ = 0;
};

}  // namespace

Expected<AudioFormat> parse_audio_format(const std::string& name) {
  for (AudioFormat f : {AudioFormat::Wav, AudioFormat::Pcm, AudioFormat::Opus, AudioFormat::Mp3, AudioFormat::Aac, AudioFormat::Flac})
    if (name == audio_format_name(f)) return f;
  return Error{"unsupported response_format '" + name + "' (wav, pcm, opus, mp3, aac, flac)"};
}

const char* audio_format_name(AudioFormat f) {
  switch (f) {
    case AudioFormat::Wav: return "wav";
    case AudioFormat::Pcm: return "pcm";
    case AudioFormat::Opus: return "opus";
    case AudioFormat::Mp3: return "mp3";
    case AudioFormat::Aac: return "aac";
    case AudioFormat::Flac: return "flac";
    case AudioFormat::MpegTs: return "mpegts";
  }
  return "?";
}

const char* audio_content_type(AudioFormat f) {
  switch (f) {
    case AudioFormat::Wav: return "audio/wav";
    case AudioFormat::Pcm: return "audio/pcm";
    case AudioFormat::Opus: return "audio/ogg";
    case AudioFormat::Mp3: return "audio/mpeg";
    case AudioFormat::Aac: return "audio/aac";
    case AudioFormat::Flac: return "audio/flac";
    case AudioFormat::MpegTs: return "video/mp2t";
  }
  return "application/octet-stream";
}

Expected<std::unique_ptr<AudioStreamEncoder>> make_audio_encoder(AudioFormat f, int rate, ByteSink sink) {
  if (f == AudioFormat::Wav || f == AudioFormat::Pcm) return std::unique_ptr<AudioStreamEncoder>(new PcmEncoder(f == AudioFormat::Wav, rate, std::move(sink)));
  auto e = std::make_unique<FfmpegAudioEncoder>();
  if (Status s = e->open(f, rate, std::move(sink)); !s) return s.error();
  return std::unique_ptr<AudioStreamEncoder>(std::move(e));
}

Expected<std::unique_ptr<VideoStreamEncoder>> make_video_encoder(const std::string& container, int width, int height, double fps,
                                                                 ByteSink sink) {
  auto e = std::make_unique<FfmpegVideoEncoder>();
  if (Status s = e->open(container, width, height, fps, std::move(sink)); !s) return s.error();
  return std::unique_ptr<VideoStreamEncoder>(std::move(e));
}

Expected<std::vector<uint8_t>> encode_image(const std::string& format, int width, int height, std::span<const uint8_t> rgb) {
  if (format != "png" && format != "jpeg") return Error{"unsupported image format '" + format + "' (png, jpeg)"};
  if (rgb.size() != size_t(width) * size_t(height) * 3) return Error{"an image of the wrong size"};
  const AVCodec* codec = avcodec_find_encoder(format == "png" ? AV_CODEC_ID_PNG : AV_CODEC_ID_MJPEG);
  if (!codec) return Error{"FFmpeg: no " + format + " encoder in this build"};
  std::unique_ptr<AVCodecContext, CodecCloser> c(avcodec_alloc_context3(codec));
  std::unique_ptr<AVFrame, FrameCloser> fr(av_frame_alloc());
  std::unique_ptr<AVPacket, PacketCloser> pkt(av_packet_alloc());
  if (!c || !fr || !pkt) return Error{"FFmpeg: out of memory"};
  const AVPixelFormat pix = format == "png" ? AV_PIX_FMT_RGB24 : AV_PIX_FMT_YUVJ420P;
  c->width = width, c->height = height, c->pix_fmt = pix, c->time_base = AVRational{1, 1};
  if (int r = avcodec_open2(c.get(), codec, nullptr); r < 0) return av_error("avcodec_open2", r);
  fr->format = pix, fr->width = width, fr->height = height;
  if (int r = av_frame_get_buffer(fr.get(), 0); r < 0) return av_error("av_frame_get_buffer", r);
  std::unique_ptr<SwsContext, SwsCloser> sws(sws_getContext(width, height, AV_PIX_FMT_RGB24, width, height, pix, SWS_BILINEAR, nullptr, nullptr, nullptr));
  if (!sws) return Error{"FFmpeg: sws_getContext failed"};
  const PaddedRgb padded(rgb);
  const uint8_t* src[1] = {padded.data()};
  const int stride[1] = {width * 3};
  sws_scale(sws.get(), src, stride, 0, height, fr->data, fr->linesize);
  fr->pts = 0;
  if (int r = avcodec_send_frame(c.get(), fr.get()); r < 0) return av_error("avcodec_send_frame", r);
  if (int r = avcodec_send_frame(c.get(), nullptr); r < 0) return av_error("avcodec_send_frame (flush)", r);
  std::vector<uint8_t> out;
  for (;;) {
    const int r = avcodec_receive_packet(c.get(), pkt.get());
    if (r == AVERROR_EOF || r == AVERROR(EAGAIN)) break;
    if (r < 0) return av_error("avcodec_receive_packet", r);
    out.insert(out.end(), pkt->data, pkt->data + pkt->size);
    av_packet_unref(pkt.get());
  }
  if (out.empty()) return Error{"FFmpeg: the " + format + " encoder produced nothing"};
  return out;
}

std::vector<uint8_t> scale_rgb(std::span<const uint8_t> rgb, int w, int h, int out_w, int out_h) {
  if (w == out_w && h == out_h) return std::vector<uint8_t>(rgb.begin(), rgb.end());
  std::unique_ptr<SwsContext, SwsCloser> sws(
      sws_getContext(w, h, AV_PIX_FMT_RGB24, out_w, out_h, AV_PIX_FMT_RGB24, SWS_BILINEAR, nullptr, nullptr, nullptr));
  if (!sws) return {};
  std::vector<uint8_t> out(size_t(out_w) * size_t(out_h) * 3);
  const PaddedRgb padded(rgb);
  const uint8_t* src[1] = {padded.data()};
  const int src_stride[1] = {w * 3};
  uint8_t* dst[1] = {out.data()};
  const int dst_stride[1] = {out_w * 3};
  sws_scale(sws.get(), src, src_stride, 0, h, dst, dst_stride);
  return out;
}

}  // namespace tutti::codecs
