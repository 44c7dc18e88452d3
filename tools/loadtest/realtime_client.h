// A Realtime WebSocket client for the load test and `tutti bench voice`. Beast allows one
// read and one write in flight on a stream, but only from one thread (synchronous reads and
// writes from two threads race, e.g. when a read answers a ping): so the connection has its
// own thread that does all the socket work. Events arrive on that thread through on_event;
// send() may be called from any thread and queues the message for it.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "pipeline/expected.h"

namespace tutti::loadtest {

class RealtimeClient {
 public:
  using Clock = std::chrono::steady_clock;
  // An event as it arrived (a message that is not JSON is dropped), with its arrival time.
  using EventHandler = std::function<void(const nlohmann::json& event, Clock::time_point at)>;

  // Connects and upgrades (within `timeout`), then starts reading. on_closed runs once, on the
  // connection's thread, when the connection ends for any reason.
  static Expected<std::unique_ptr<RealtimeClient>> connect(const std::string& host, uint16_t port, const std::string& api_key,
                                                           std::chrono::milliseconds timeout, EventHandler on_event,
                                                           std::function<void()> on_closed);
  // Queues a text message; false once the connection has failed or closed.
  bool send(const nlohmann::json& event);
  // Ends the connection (without a close handshake) and waits for its thread. Idempotent.
  void close();
  ~RealtimeClient();

  struct Impl;

 private:
  explicit RealtimeClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tutti::loadtest
