// The client side of the Realtime event grammar as plain data: one WebSocket message in, one
// typed event (or the fields of the error event that answers it) out. Nothing here knows a
// session or a model, so the fuzz target and the tests drive it directly; RealtimeSession
// applies the events and checks what depends on the model (has it audio? video?).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "actors/http/realtime_audio.hpp"

namespace tutti::http::realtime {

// session.update: the fields present in the message, each validated; an absent field leaves
// the session's setting as it is. The whole update is checked before any of it applies.
struct SessionUpdate {
  std::optional<std::string> instructions;
  std::optional<float> temperature;
  std::optional<int> max_output_tokens;  // >= 1; the session clamps it to the server's limit
  std::optional<AudioWire> input_wire, output_wire;
  // Non-empty; of text, audio and video; never audio and video together.
  std::optional<std::vector<std::string>> modalities;
  std::optional<bool> binary_opus;  // tutti.binary_audio: "opus" | "none"
  // Turn detection: `server_vad`, or `semantic_vad` mapped onto the server VAD (tutti has no
  // model of when a sentence is finished): its eagerness picks the silence that ends a turn,
  // low 1000 ms, medium and auto 600 ms, high 250 ms (see semantic_vad_silence_ms).
  enum class Turns { Keep, Manual, ServerVad } turn_detection = Turns::Keep;
  codecs::VadConfig vad;                // with ServerVad
  bool create_response = true;  // with ServerVad: a response follows each detected turn
  bool semantic = false;        // asked as semantic_vad
  std::string eagerness = "auto";
  int idle_timeout_ms = 0;      // 0: none; else input_audio_buffer.timeout_triggered after this much silence
  std::optional<std::string> voice;  // audio.output.voice / voice: echoed (the model has one voice)
};
int semantic_vad_silence_ms(const std::string& eagerness);

// conversation.item.create of a message.
struct ItemCreate {
  std::string id;    // the client's, or empty: the server names it
  std::string role;  // user | system | assistant
  std::string text;  // the text parts, in order
  std::vector<std::string> images_base64;  // input_image parts (a data: URL's prefix removed)
};

// response.create.
struct ResponseCreate {
  std::optional<std::vector<std::string>> modalities;  // the strings given (others ignored)
  std::optional<int> max_output_tokens;                // this response's limit (INT_MAX: "inf")
  std::optional<nlohmann::json> tutti;  // the extension object, for apply_tutti_extension
};

struct AudioAppend {
  std::string audio_base64;  // in the session's input wire format
};
struct AudioCommit {};
struct AudioClear {};
struct ResponseCancel {};
struct ItemRetrieve {
  std::string item_id;
};
struct ItemDelete {
  std::string item_id;
};
struct ItemTruncate {  // an assistant's audio cut where the user stopped hearing it
  std::string item_id;
  int content_index = 0;
  int64_t audio_end_ms = 0;
};
struct OutputAudioBufferClear {};  // stop the answer's audio (as response.cancel, for audio)

using ClientEventBody = std::variant<SessionUpdate, ItemCreate, ResponseCreate, AudioAppend, AudioCommit, AudioClear, ResponseCancel,
                                     ItemRetrieve, ItemDelete, ItemTruncate, OutputAudioBufferClear>;
struct ClientEvent {
  std::string event_id;  // the client's, echoed in errors; may be empty
  ClientEventBody body;
};

// Why a message is not a valid client event: an "invalid_request_error" error event's code
// and message, and the event_id to echo when the message had one.
struct EventError {
  std::string code;
  std::string message;
  std::string event_id;
};

// Any text is answered: a ClientEvent, or an EventError (never an exception).
std::variant<ClientEvent, EventError> parse_client_event(std::string_view text);

// A binary message of the tutti framing: the kind byte, then its payload (a view into msg).
struct BinaryMessage {
  BinaryKind kind;
  std::span<const uint8_t> payload;
};
// nullopt for an empty message or a kind a client may not send (only AudioIn and VideoIn).
std::optional<BinaryMessage> parse_binary_message(std::string_view msg);

// The subprotocol to answer a WebSocket upgrade's Sec-WebSocket-Protocol list with:
// "realtime" when offered, else the first offered one that is not a key
// (openai-insecure-api-key.KEY, how browsers present keys: never echoed); empty for none.
std::string choose_subprotocol(std::string_view offered);

}  // namespace tutti::http::realtime
