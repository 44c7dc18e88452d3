// FFmpeg 5.1 input: demux and decode media that arrives as a byte stream (a ByteQueue fed
// by the transport), whatever container and codec FFmpeg recognises. Audio comes out mono
// float at the rate the caller asks for (resampled); video frames come out RGB24 scaled to
// the caller's size. Results are handed to a callback as they are decoded, so a long stream
// never sits in memory whole.
//
// Every FFmpeg call's error code is checked: a corrupt or truncated stream ends with an
// Error that says what failed ("FFmpeg: avformat_open_input: Invalid data found when
// processing input"), and every FFmpeg object is freed on every path (RAII).
// Runs on the caller's thread and blocks on the queue; one call per stream.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "codecs/byte_queue.h"
#include "pipeline/expected.h"

namespace tutti::codecs {

struct DecodeLimits {
  double max_seconds = 600;  // longer media is an error (a stream that never ends, a bomb)
  // A live stream: probe only its first 64 KB / 0.5 s to find the streams, so decoding
  // starts at once instead of after FFmpeg's default 5 s of analysis.
  bool live = false;
  int max_frames = 0;        // video: stop (Ok) after this many frames; 0: all of them
  int64_t max_pixels = 0;    // video: a larger frame is an error (a bomb of a resolution); 0: none
  double max_decode_s = 0;   // wall-clock budget for the whole decode (an error past it); 0: none
};

// Decodes the best audio stream; on_audio receives consecutive chunks of mono samples in
// [-1, 1] at `sample_rate`. Returns the first error, or Ok at the end of the stream.
Status decode_audio(ByteQueue& in, int sample_rate, const std::function<void(std::span<const float>)>& on_audio,
                    const DecodeLimits& limits = {});

struct VideoFrame {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // width * height * 3, rows top to bottom
  double seconds = 0;        // presentation time
};
// Decodes the best video stream (or a single image), each frame scaled to width x height.
Status decode_video(ByteQueue& in, int width, int height, const std::function<void(const VideoFrame&)>& on_frame,
                    const DecodeLimits& limits = {});

// Convenience for whole buffers already in memory (files, request bodies).
Expected<std::vector<float>> decode_audio_bytes(std::span<const uint8_t> bytes, int sample_rate, const DecodeLimits& limits = {});

}  // namespace tutti::codecs
