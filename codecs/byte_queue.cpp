#include "codecs/byte_queue.h"

#include <algorithm>

namespace tutti::codecs {

bool ByteQueue::push(std::span<const uint8_t> bytes) {
  std::unique_lock<std::mutex> lock(mu_);
  size_t done = 0;
  while (done < bytes.size()) {
    cv_.wait(lock, [&] { return aborted_ || bytes_.size() < capacity_; });
    if (aborted_ || closed_) return false;
    const size_t n = std::min(bytes.size() - done, capacity_ - bytes_.size());
    bytes_.insert(bytes_.end(), bytes.begin() + long(done), bytes.begin() + long(done + n));
    done += n;
    cv_.notify_all();
  }
  return true;
}

void ByteQueue::close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  cv_.notify_all();
}

void ByteQueue::abort() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = true;
  cv_.notify_all();
}

bool ByteQueue::aborted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return aborted_;
}

int ByteQueue::read(uint8_t* dst, int n) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return aborted_ || closed_ || !bytes_.empty(); });
  if (aborted_) return -1;
  if (bytes_.empty()) return 0;  // closed and drained
  const size_t k = std::min(bytes_.size(), size_t(n));
  std::copy(bytes_.begin(), bytes_.begin() + long(k), dst);
  bytes_.erase(bytes_.begin(), bytes_.begin() + long(k));
  cv_.notify_all();
  return int(k);
}

}  // namespace tutti::codecs
