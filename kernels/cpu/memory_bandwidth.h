// Measures this machine's memory read bandwidth: `threads` threads each stream their part of
// a buffer much larger than the last-level cache, as a decode step streams the weights.
#pragma once

#include <cstddef>

namespace tutti::cpu {

// Best of `repeats` passes, in bytes per second.
double measure_read_bandwidth(int threads, size_t bytes = size_t(1) << 30, int repeats = 5);

}  // namespace tutti::cpu
