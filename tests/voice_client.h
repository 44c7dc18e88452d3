// A Realtime voice client's steps, as the transport tests speak them: a session set up for
// turns committed by hand, and one turn (about a second of a voiced tone) to its
// response.done.
#pragma once

#include <cmath>
#include <span>
#include <vector>

#include "actors/http/realtime_audio.hpp"
#include "http_client.h"

namespace tutti::test {

// After the upgrade: audio answers of at most `max_output_tokens`, no server VAD.
inline void start_voice_session(RealtimeWs& ws, int max_output_tokens) {
  EXPECT_EQ(ws.refused, 0);
  ws.until("session.created");
  ws.send({{"type", "session.update"},
           {"session",
            {{"type", "realtime"}, {"output_modalities", {"audio"}}, {"max_output_tokens", max_output_tokens}, {"audio", {{"input", {{"turn_detection", nullptr}}}}}}}});
  ws.until("session.updated");
}

// One turn: a second of a 180 Hz tone appended in 100 ms pieces, committed, answered.
inline nlohmann::json voice_turn(RealtimeWs& ws) {
  std::vector<float> pcm(24000);
  for (size_t i = 0; i < pcm.size(); ++i) pcm[i] = float(0.3 * std::sin(2 * 3.14159265 * 180 * double(i) / 24000));
  for (size_t at = 0; at < pcm.size(); at += 2400)
    ws.send({{"type", "input_audio_buffer.append"},
             {"audio", http::encode_wire_audio(std::span<const float>(pcm.data() + at, 2400), http::AudioWire::Pcm16)}});
  ws.send({{"type", "input_audio_buffer.commit"}});
  ws.until("input_audio_buffer.committed");
  ws.send({{"type", "response.create"}});
  return ws.until("response.done");
}

}  // namespace tutti::test
