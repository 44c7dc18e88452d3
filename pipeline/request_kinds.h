// The closed sets a request is described by, as enums: the modality an answer is in, the
// class the scheduler serves it as, and why a generation finished. They travel in the actor
// messages (actors/actors.hpp) and are named (for logs, the wire and CAF's to_string) here,
// once. A name from a client is parsed at the edge, where an unknown one is an error that
// names the field.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "pipeline/expected.h"

namespace tutti {

enum class Modality : uint8_t { Text = 0, Audio, Image, Video, Music };
constexpr std::array<Modality, 4> kMediaModalities = {Modality::Audio, Modality::Image, Modality::Video,
                                                     Modality::Music};
const char* modality_name(Modality m);
std::optional<Modality> parse_modality(const std::string& name);
inline std::string to_string(Modality m) { return modality_name(m); }

enum class RequestClass : uint8_t { Realtime, Interactive, Batch };
const char* request_class_name(RequestClass c);
std::optional<RequestClass> parse_request_class(const std::string& name);
inline std::string to_string(RequestClass c) { return request_class_name(c); }

enum class FinishReason : uint8_t { None, Length, Stop, Cancelled, Error };
const char* finish_reason_name(FinishReason r);
inline std::string to_string(FinishReason r) { return finish_reason_name(r); }

}  // namespace tutti
