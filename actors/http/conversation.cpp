#include "actors/http/conversation.hpp"

#include <algorithm>
#include <cmath>

namespace tutti::http {

size_t Conversation::trim(int64_t budget, const ConversationItem* pending) {
  std::vector<int64_t> costs;
  for (const ConversationItem& it : items) costs.push_back(it.cost());
  if (pending) costs.push_back(pending->cost());  // the newest: never dropped
  const size_t drop = std::min(items.size(), oldest_items_to_drop(costs, int64_t(instructions.size()), budget));
  items.erase(items.begin(), items.begin() + std::ptrdiff_t(drop));
  return drop;
}

actors::text_request Conversation::request(ChatTemplate t, const ConversationItem* pending) const {
  std::vector<ChatMessage> messages;
  actors::text_request r;
  if (!instructions.empty()) messages.push_back({"system", without_markers(instructions)});
  auto add = [&](const ConversationItem& it) {
    if (it.ids.empty()) {
      messages.push_back({it.role, without_markers(it.text)});  // marker bytes from a client are not markers
    } else {
      messages.push_back({it.role, "\x1e" + std::to_string(r.media_parts.size()) + "\x1f"});
      r.media_parts.push_back(it.ids);
    }
  };
  for (const ConversationItem& it : items) add(it);
  if (pending) add(*pending);
  r.prompt = format_chat(t, messages);
  return r;
}

std::vector<const ConversationItem*> Conversation::item(const std::string& id) const {
  std::vector<const ConversationItem*> parts;
  if (id.empty()) return parts;
  for (const ConversationItem& it : items)
    if (it.id == id) parts.push_back(&it);
  return parts;
}

std::string Conversation::previous_item_id(const std::string& id) const {
  std::string previous;
  for (const ConversationItem& it : items) {
    if (it.id == id) return previous;
    if (!it.id.empty()) previous = it.id;
  }
  return "";
}

bool Conversation::erase(const std::string& id) {
  const auto n = std::erase_if(items, [&](const ConversationItem& it) { return !id.empty() && it.id == id; });
  if (n && last_item_id == id) last_item_id = items.empty() ? "" : items.back().id;
  return n > 0;
}

size_t Conversation::bytes() const {
  size_t n = instructions.size();
  for (const ConversationItem& it : items) n += it.text.size() + it.ids.size() * sizeof(int32_t);
  return n;
}

std::map<Modality, int64_t> Conversation::media_tokens(const ConversationItem* pending) const {
  std::map<Modality, int64_t> out{{Modality::Audio, 0}};
  for (const ConversationItem& it : items)
    if (!it.ids.empty()) out[it.media] += int64_t(it.ids.size());
  if (pending && !pending->ids.empty()) out[pending->media] += int64_t(pending->ids.size());
  return out;
}

std::variant<actors::text_request, ApiError> answer_request(actors::text_request r, const AnswerShape& shape,
                                                            const ModalityTable& modalities) {
  r.temperature = shape.temperature;
  r.modality = shape.modality;
  if (shape.modality == Modality::Text) {
    r.max_tokens = shape.max_tokens;
    r.request_class = RequestClass::Interactive;
    return r;
  }
  const ModalityInfo* m = modalities.find(shape.modality);
  if (!m || (shape.modality != Modality::Audio && shape.modality != Modality::Video))
    return ApiError{ErrorCode::unsupported_modality, std::string("this model has no ") + modality_name(shape.modality) + " modality"};
  r.temperature = std::max(r.temperature, 0.7f);  // greedy decoding repeats one code
  r.request_class = RequestClass::Realtime;       // paced against its playback clock
  r.tokens_per_second = m->tokens_per_second();
  if (shape.modality == Modality::Audio) {
    r.max_tokens = shape.max_tokens > 0 ? shape.max_tokens : int32_t(std::ceil(shape.media_seconds * m->tokens_per_second()));
    return r;
  }
  // Video: whole frames.
  const int per_frame = std::max(1, int(std::lround(m->tokens_per_second() / std::max(1.0, double(m->frame_rate)))));
  r.max_tokens = shape.max_tokens > 0 ? std::max(per_frame, shape.max_tokens / per_frame * per_frame)
                                      : per_frame * std::max(1, int(std::lround(shape.media_seconds * m->frame_rate)));
  return r;
}

}  // namespace tutti::http
