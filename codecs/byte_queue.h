// Bytes that arrive in pieces (a socket, a pipe, a request body) on their way to a decoder
// running on another thread: a bounded blocking queue. The producer blocks while it is full
// (backpressure to the transport); the decoder blocks while it is empty.
//
// Thread-safe: one producer, one consumer.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <span>

namespace tutti::codecs {

class ByteQueue {
 public:
  explicit ByteQueue(size_t capacity = size_t(1) << 20) : capacity_(capacity) {}

  // Appends bytes, waiting while the queue is full; false once the queue was aborted (the
  // decoder gave up or the session ended).
  bool push(std::span<const uint8_t> bytes);
  // No more bytes will come: the decoder sees the end of the stream after what is queued.
  void close();
  // The session ended: both sides stop waiting; reads fail.
  void abort();
  // Up to n bytes; waits for at least one. 0: end of stream; -1: aborted.
  int read(uint8_t* dst, int n);
  bool aborted() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<uint8_t> bytes_;
  size_t capacity_;
  bool closed_ = false, aborted_ = false;
};

}  // namespace tutti::codecs
