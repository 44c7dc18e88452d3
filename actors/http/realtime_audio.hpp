// Audio on the Realtime WebSocket, as plain functions: the wire formats (PCM16 little-endian
// 24 kHz mono, G.711 µ-law and A-law at 8 kHz, all base64 inside JSON) and the binary Opus
// framing. No sockets here; the realtime session uses these. Voice activity detection and
// the buffered input of a conversation are in codecs/voice_input.h.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "actors/http/media.hpp"
#include "codecs/voice_input.h"
#include "pipeline/expected.h"

namespace tutti::http {

enum class AudioWire { Pcm16, G711Ulaw, G711Alaw };
// Accepts both spellings clients use: "pcm16" | "g711_ulaw" | "g711_alaw", and
// {"type": "audio/pcm", "rate": 24000} | {"type": "audio/pcmu"} | {"type": "audio/pcma"}.
std::optional<AudioWire> parse_audio_wire(const nlohmann::json& v);
const char* audio_wire_name(AudioWire w);
int audio_wire_rate(AudioWire w);  // 24000 for PCM16, 8000 for G.711

// base64 (RFC 4648, padding optional) to bytes; an Error for any other character.
Expected<std::vector<uint8_t>> base64_decode(const std::string& text);
// Samples in [-1, 1] at the wire's rate from a wire payload, and back (base64 text).
Expected<std::vector<float>> decode_wire_audio(const std::string& base64, AudioWire w);
std::string encode_wire_audio(std::span<const float> samples, AudioWire w);
// Linear resampling between rates (G.711's 8 kHz and the model's 24 kHz: integer ratios).
std::vector<float> resample_linear(std::span<const float> in, int from_rate, int to_rate);

// The binary framing (a tutti extension, `session.update` {"tutti": {"binary_audio":
// "opus"}}): binary WebSocket messages whose first byte is the kind, then the payload.
enum class BinaryKind : uint8_t { AudioIn = 1, AudioOut = 2, VideoIn = 3, VideoOut = 4 };
// An audio answer as Opus packets (48 kHz mono, 20 ms): chunk.bytes holds them each behind
// a 2-byte little-endian length; chunk.frames counts the 24 kHz samples they carry.
std::unique_ptr<MediaOutput> make_opus_audio_output(int model_rate);
// A video answer as JPEG frames (video out on the WebSocket): chunk.bytes holds each finished
// frame's JPEG behind a 4-byte little-endian length; chunk.frames counts the frames.
std::unique_ptr<MediaOutput> make_jpeg_frame_output();
// The pieces of chunk.bytes, each behind a little-endian length of `length_bytes` (2 for
// Opus packets, 4 for JPEG frames).
std::vector<std::string> split_length_prefixed(const std::vector<uint8_t>& bytes, int length_bytes = 2);

// An audio answer as Realtime deltas: each chunk's bytes are the base64 of its samples in
// the wire format (resampled to 8 kHz for G.711), chunk.frames the number of 24 kHz samples.
std::unique_ptr<MediaOutput> make_wire_audio_output(AudioWire w, int model_rate);

uint8_t linear_to_ulaw(int16_t s);
int16_t ulaw_to_linear(uint8_t u);
uint8_t linear_to_alaw(int16_t s);
int16_t alaw_to_linear(uint8_t a);

}  // namespace tutti::http
