// Encoder: request content to token ids, off the executor's thread (see actors.hpp).
#include "actors/pipeline_actors.hpp"


namespace tutti::actors {

namespace {

// ---- encoder: text to token ids, off the executor's thread.
struct encoder_state {
  std::shared_ptr<const Tokenizer> tokenizer;
  executor_actor executor;
  decoder_actor decoder;
};

encoder_actor::behavior_type encoder_impl(encoder_actor::stateful_pointer<encoder_state> self,
                                          std::shared_ptr<const Tokenizer> tokenizer, executor_actor executor,
                                          decoder_actor decoder, std::function<void(const std::string&, int64_t)> fault_injection) {
  self->state.tokenizer = std::move(tokenizer);
  self->state.executor = executor;
  self->state.decoder = decoder;
  return {
      [=](encode_atom, const text_request& r, const sink_actor& sink) -> encode_result {
        Expected<std::vector<int32_t>> encoded = Error{""};
        try {  // a failure encoding one request refuses it; the encoder goes on
          if (fault_injection) fault_injection("encode", r.id);
          encoded = encode_prompt(*self->state.tokenizer, r);
        } catch (const std::exception& e) {
          return {0, ErrorCode::generation_failed, std::string("encoding failed: ") + e.what()};
        }
        if (!encoded) return {0, encoded.error().code, encoded.error().message};
        std::vector<int32_t> ids = std::move(encoded).value();
        // Too long for the cache, or no room now: the executor refuses it through the
        // decoder, as a final delta with the reason.
        if (ids.empty()) return {0, ErrorCode::invalid_request, "the prompt is empty"};
        const int32_t n = int32_t(ids.size());
        // Register before submitting: the decoder's mailbox then sees the registration
        // before any event the executor produces for this request.
        self->send(self->state.decoder, register_atom::value, r.id, n, r.modality, sink);
        self->send(self->state.executor, submit_atom::value, r, std::move(ids), sink);
        return {n, ErrorCode::none, ""};
      },
  };
}


}  // namespace

Expected<std::vector<int32_t>> encode_prompt(const Tokenizer& tokenizer, const text_request& r) {
  std::vector<int32_t> ids;
  bool first = true;
  size_t at = 0, end_of_last_part = 0;
  auto text = [&](const std::string& piece) {
    if (piece.empty() && !first) return;
    const auto t = tokenizer.encode(piece, r.add_special && first, false);
    ids.insert(ids.end(), t.begin(), t.end());
    first = false;
  };
  for (;;) {
    const size_t open = r.prompt.find_first_of("\x1d\x1e", at);
    if (open == std::string::npos) break;
    const size_t close = r.prompt.find('\x1f', open);
    if (close == std::string::npos) return Error{"an unterminated marker in the prompt"};
    text(r.prompt.substr(at, open - at));
    const std::string inside = r.prompt.substr(open + 1, close - open - 1);
    at = close + 1;
    if (r.prompt[open] == '\x1d') {
      // A template's control token: its id where the vocabulary has it, else its text (a
      // vocabulary of another family: the transcript stays readable).
      if (auto id = tokenizer.token_id(inside)) {
        ids.push_back(*id);
      } else {
        const auto t = tokenizer.encode(inside, false, false);
        ids.insert(ids.end(), t.begin(), t.end());
      }
      continue;
    }
    size_t k = 0;
    try {
      k = std::stoul(inside);
    } catch (...) {
      return Error{"a media marker without a number"};
    }
    if (k >= r.media_parts.size()) return Error{"a media marker names part " + std::to_string(k) + " of " + std::to_string(r.media_parts.size())};
    ids.insert(ids.end(), r.media_parts[k].begin(), r.media_parts[k].end());
    end_of_last_part = ids.size();
  }
  if (r.prefill_only) {
    // What follows the last part (its end token, the rest of the template) is not known yet.
    ids.resize(end_of_last_part);
    return ids;
  }
  text(r.prompt.substr(at));
  return ids;
}

encoder_actor spawn_encoder(caf::actor_system& system, std::shared_ptr<const Tokenizer> tokenizer, executor_actor executor,
                            decoder_actor decoder, FaultInjection fault_injection) {
  return system.spawn(encoder_impl, std::move(tokenizer), std::move(executor), std::move(decoder), std::move(fault_injection));
}

}  // namespace tutti::actors
