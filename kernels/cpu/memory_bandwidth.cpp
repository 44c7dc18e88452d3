#include "kernels/cpu/memory_bandwidth.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "kernels/cpu/cpu_math.h"
#include "kernels/cpu/thread_pool.h"

namespace tutti::cpu {

namespace {
// A reduction the compiler vectorises into wide loads (the result keeps the loads alive),
// with software prefetch far ahead as the matrix kernels do, so the figure is the best read
// rate the cores can get, not what the hardware prefetcher alone reaches.
TUTTI_CLONES uint64_t sum_words(const uint64_t* p, size_t n) {
  uint64_t s = 0;
  constexpr size_t kChunk = 512;  // words: 4 KiB
  constexpr size_t kAhead = 12 * 1024 / 8;
  for (size_t base = 0; base < n; base += kChunk) {
    const size_t end = std::min(n, base + kChunk);
    for (size_t i = base; i < end; i += 8) __builtin_prefetch(p + i + kAhead);
#pragma omp simd reduction(^ : s)
    for (size_t i = base; i < end; ++i) s ^= p[i];
  }
  return s;
}
}  // namespace

double measure_read_bandwidth(int threads, size_t bytes, int repeats) {
  threads = std::max(1, threads);
  const size_t words = bytes / 8;
  auto* buf = static_cast<uint64_t*>(std::aligned_alloc(4096, words * 8));
  if (!buf) return 0;
  ThreadPool pool(threads);
  // Touch every page from the thread that will read it.
  pool.run(threads, [&](int t, int) {
    const size_t b = words * size_t(t) / size_t(threads), e = words * size_t(t + 1) / size_t(threads);
    for (size_t i = b; i < e; ++i) buf[i] = i;
  });
  std::atomic<uint64_t> sink{0};
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.run(threads, [&](int t, int) {
      const size_t b = words * size_t(t) / size_t(threads), e = words * size_t(t + 1) / size_t(threads);
      sink.fetch_xor(sum_words(buf + b, e - b), std::memory_order_relaxed);
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(words * 8) / s);
  }
  std::free(buf);
  return sink.load() == 42 ? best * 1.0 : best;
}

}  // namespace tutti::cpu
