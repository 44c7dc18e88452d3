// Bounded conversations, shared by realtime sessions and stream jobs: which of the oldest
// items to drop before a request so that its prompt stays within a token budget. A plain
// function, tested without sessions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace tutti::http {

// How many of the oldest items to drop: none while `fixed` plus every item fits `budget`;
// otherwise enough to bring it to 3/4 of the budget, never the newest item. Trimming in steps
// rather than one item per request keeps the prompt's beginning, and so the prefix cache,
// the same between trims (dropping the oldest item changes every later block's hash).
// `costs`: each item's tokens, oldest first; `fixed`: what every prompt carries besides them.
inline size_t oldest_items_to_drop(std::span<const int64_t> costs, int64_t fixed, int64_t budget) {
  int64_t total = fixed;
  for (int64_t c : costs) total += c;
  if (total <= budget) return 0;
  size_t drop = 0;
  while (drop + 1 < costs.size() && total > budget * 3 / 4) total -= costs[drop++];
  return drop;
}

}  // namespace tutti::http
