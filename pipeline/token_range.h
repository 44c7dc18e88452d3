// A half-open range of token ids, the unit of sampling masks.
#pragma once

#include <cstdint>

namespace tutti {

struct TokenRange {
  int32_t begin = 0, end = 0;  // [begin, end)
  bool contains(int32_t t) const { return t >= begin && t < end; }
};

}  // namespace tutti
