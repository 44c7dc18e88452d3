// Conversations, shared by realtime sessions and stream jobs, as plain data: the items, the
// bound on their size, the prompt they become, and the request for an answer of a given
// modality. No sockets or actors: tested directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "actors/actors.hpp"
#include "actors/http/errors.hpp"
#include "actors/http/openai.hpp"
#include "pipeline/model_config.h"

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

struct ConversationItem {
  std::string role, text;
  std::vector<int32_t> ids;  // media (speech, an image) as tokens; then text is empty
  Modality media = Modality::Audio;  // what `ids` are
  std::string id;  // the Realtime item it belongs to (one item may hold several parts); "" elsewhere
  // Media items count their ids; text its bytes (an upper bound: every token covers a byte).
  int64_t cost() const { return int64_t(ids.empty() ? text.size() : ids.size()); }
};

class Conversation {
 public:
  std::vector<ConversationItem> items;
  std::string instructions;  // the system message, when not empty
  std::string last_item_id;  // of the newest item (a Realtime commit's previous_item_id)
  // Where its generations run on a cluster ingress: its session's or job's id, which every
  // generation of it carries as GenerationSpec::sticky ("": placed one by one).
  std::string placement;

  // The Realtime item `id`'s parts, in order (empty: no such item).
  std::vector<const ConversationItem*> item(const std::string& id) const;
  // The id of the item before `id` ("" for the first or an unknown one).
  std::string previous_item_id(const std::string& id) const;
  // Removes item `id`'s parts; false when there is none.
  bool erase(const std::string& id);

  // Drops the oldest items so that the prompt stays within `budget` tokens (see
  // oldest_items_to_drop); `pending` (speech still being spoken) counts but is never dropped.
  // Returns how many were dropped.
  size_t trim(int64_t budget, const ConversationItem* pending = nullptr);
  // The conversation (and `pending` at its end) as a prompt through the chat template: text
  // items as messages, media items as spliced token ids (media markers). The request's
  // other fields are left at their defaults.
  actors::text_request request(ChatTemplate t, const ConversationItem* pending = nullptr) const;
  // The prompt tokens of each media modality in such a request (what the ledger bills apart).
  std::map<Modality, int64_t> media_tokens(const ConversationItem* pending = nullptr) const;
  // What the items hold in memory: their text, and 4 bytes per media token.
  size_t bytes() const;
};

// What kind of answer a conversation is asked for.
struct AnswerShape {
  Modality modality = Modality::Text;  // text, audio or video
  float temperature = 0.8f;
  int32_t max_tokens = 256;   // text: the answer's limit; media: a limit on codes when > 0
  double media_seconds = 10;  // media without a code limit: this long
};

// The request for an answer shaped `shape` to `conversation`: text as asked; media answers
// are realtime streams paced at the modality's token rate, sampled at a temperature of at
// least 0.7 (greedy decoding repeats one code), video in whole frames. An unsupported
// modality (the model lacks it) is an error. Used by realtime sessions and stream jobs alike.
std::variant<actors::text_request, ApiError> answer_request(actors::text_request conversation, const AnswerShape& shape,
                                                            const ModalityTable& modalities);

}  // namespace tutti::http
