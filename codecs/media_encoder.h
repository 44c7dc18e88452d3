// FFmpeg 5.1 output: audio streamed out in the formats the speech and music endpoints offer
// (WAV, raw PCM, Ogg Opus, MP3, AAC in ADTS, FLAC), PNG and JPEG images, and H.264 video in
// MPEG-TS or MP4 (fragmented, so it can be written to a stream that cannot seek). Output
// bytes go to a sink callback as soon as the muxer produces them, so an HTTP response can
// start before generation ends. Every FFmpeg call's error is checked; objects are RAII.
//
// Not thread-safe: one encoder per response.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "pipeline/expected.h"

namespace tutti::codecs {

using ByteSink = std::function<void(std::span<const uint8_t>)>;

enum class AudioFormat { Wav, Pcm, Opus, Mp3, Aac, Flac, MpegTs };
// The OpenAI names: wav, pcm, opus, mp3, aac, flac. (MpegTs — AAC in MPEG-TS, for piping
// over ZeroMQ — is not one of them: parse_audio_format does not accept it.)
Expected<AudioFormat> parse_audio_format(const std::string& name);
const char* audio_format_name(AudioFormat f);
const char* audio_content_type(AudioFormat f);

class AudioStreamEncoder {
 public:
  virtual ~AudioStreamEncoder() = default;
  // Mono samples in [-1, 1] at the rate given to create(); any number per call.
  virtual Status push(std::span<const float> samples) = 0;
  // Flushes the encoder and writes the container's trailer.
  virtual Status finish() = 0;
};
// Pcm is 16-bit little-endian mono at `sample_rate` (24 kHz for the speech endpoint); Wav
// the same with a streaming header (lengths unknown: 0xFFFFFFFF, which players accept).
Expected<std::unique_ptr<AudioStreamEncoder>> make_audio_encoder(AudioFormat format, int sample_rate, ByteSink sink);

// One RGB24 image as a PNG or JPEG file.
Expected<std::vector<uint8_t>> encode_image(const std::string& format, int width, int height, std::span<const uint8_t> rgb);

// An RGB24 image scaled to out_w x out_h (bilinear, through swscale); empty when swscale
// cannot set up the conversion.
std::vector<uint8_t> scale_rgb(std::span<const uint8_t> rgb, int w, int h, int out_w, int out_h);

class VideoStreamEncoder {
 public:
  virtual ~VideoStreamEncoder() = default;
  virtual Status push(std::span<const uint8_t> rgb) = 0;  // one frame, width x height RGB24
  virtual Status finish() = 0;
};
// container: "mp4" (fragmented) or "mpegts"; H.264 (libx264).
Expected<std::unique_ptr<VideoStreamEncoder>> make_video_encoder(const std::string& container, int width, int height,
                                                                 double fps, ByteSink sink);

}  // namespace tutti::codecs
