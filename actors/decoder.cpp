// Decoder: token ids to text deltas, or media, per request, in order (see actors.hpp).
#include "actors/pipeline_actors.hpp"

#include <map>

#include "codecs/audio_tokenizer.h"
#include "codecs/patch_tokenizer.h"
#include "pipeline/engine.h"

namespace tutti::actors {

namespace {

// ---- decoder: token ids to text deltas, or media, per request, in order.
struct decoder_state {
  std::function<void(const std::string&, int64_t)> fault_injection;
  executor_actor executor;  // told once at start (connect_atom)
  struct Entry {
    sink_actor sink;
    StreamingDetokenizer detok;
    int32_t prompt_tokens = 0;
    int32_t completion_tokens = 0;
    // Media answers: the modality, its streaming audio decoder or the codes of the frame
    // being generated.
    const ModalityInfo* media = nullptr;
    std::unique_ptr<codecs::AudioCodeDecoder> audio;
    std::vector<int32_t> frame_codes;
  };
  std::shared_ptr<const Tokenizer> tokenizer;
  std::shared_ptr<const codecs::ModelCodecs> codecs;
  std::map<int64_t, Entry> requests;
  // Sinks watched (a monitor each), with their requests in flight: a sink that goes away
  // before its last delta (a cluster ingress died or lost its connection to this node, which
  // kills its proxies here) takes its sequences with it, so nothing runs for nobody.
  std::map<caf::actor_addr, std::vector<int64_t>> watched;
};

// A request's entry leaves: its sink is watched for one request fewer.
void forget(decoder_actor::stateful_pointer<decoder_state> self, std::map<int64_t, decoder_state::Entry>::iterator it) {
  auto w = self->state.watched.find(it->second.sink.address());
  if (w != self->state.watched.end()) {
    std::erase(w->second, it->first);
    if (w->second.empty()) {
      self->demonitor(it->second.sink.address());
      self->state.watched.erase(w);
    }
  }
  self->state.requests.erase(it);
}

// Ends one request whose decoding failed: its sink gets the final delta with the error (in
// the form its modality expects), its sequence is cancelled, its state dropped.
// One generated code (or the end) of a media answer: audio leaves frame by frame, images and
// video frames once all their patches are there.
void decode_media(decoder_actor::stateful_pointer<decoder_state> self, int64_t id, decoder_state::Entry& e, int32_t token,
                  FinishReason finish, ErrorCode code, const std::string& error) {
  const ModalityInfo& m = *e.media;
  media_delta d;
  d.request = id;
  if (token >= 0) {
    ++e.completion_tokens;
    d.token = token;
    // Every slot's first id lies a whole number of codebooks past token_offset (the loader
    // checks it), and the engine samples each slot from its own range.
    const int32_t code = int32_t((uint32_t(token) - m.token_offset) % m.codebook_size);
    if (e.audio) {
      auto samples = e.audio->push(std::span<const int32_t>(&code, 1));
      if (!samples) throw std::runtime_error(samples.error().message);
      d.samples = std::move(*samples);
    } else {
      e.frame_codes.push_back(code);
      const codecs::PatchGeometry g{int(m.width), int(m.height), int(m.patch_size)};
      if (e.frame_codes.size() == size_t(g.patches()) * m.num_stages) {
        if (auto rgb = codecs::decode_frame(g, *self->state.codecs->books(m.modality), e.frame_codes)) {
          d.rgb = std::move(rgb).value();
          d.width = g.width, d.height = g.height;
        }
        e.frame_codes.clear();
      }
    }
  }
  if (finish != FinishReason::None) {
    if (e.audio) {
      const auto tail = e.audio->finish();
      d.samples.insert(d.samples.end(), tail.begin(), tail.end());
    }
    d.finish = finish;
    d.error_code = code;
    d.error = error;
  }
  d.prompt_tokens = e.prompt_tokens;
  d.completion_tokens = e.completion_tokens;
  // Every code leaves as a delta (most carry nothing yet): credit counts tokens.
  self->send(e.sink, media_atom::value, std::move(d));
}

void fail_request(decoder_actor::stateful_pointer<decoder_state> self, std::map<int64_t, decoder_state::Entry>::iterator it,
                  const std::string& error) {
  decoder_state::Entry& e = it->second;
  auto final_delta = [&](auto d) {  // text_delta or media_delta: the same fields
    d.request = it->first;
    d.finish = FinishReason::Error;
    d.error_code = ErrorCode::generation_failed;
    d.error = error;
    d.prompt_tokens = e.prompt_tokens, d.completion_tokens = e.completion_tokens;
    return d;
  };
  if (e.media) self->send(e.sink, media_atom::value, final_delta(media_delta{}));
  else self->send(e.sink, delta_atom::value, final_delta(text_delta{}));
  if (self->state.executor) caf::anon_send<caf::message_priority::high>(self->state.executor, cancel_atom::value, it->first);
  forget(self, it);
}

decoder_actor::behavior_type decoder_impl(decoder_actor::stateful_pointer<decoder_state> self,
                                          std::shared_ptr<const Tokenizer> tokenizer,
                                          std::shared_ptr<const codecs::ModelCodecs> codecs,
                                          std::function<void(const std::string&, int64_t)> fault_injection) {
  self->state.tokenizer = std::move(tokenizer);
  self->state.codecs = std::move(codecs);
  self->state.fault_injection = std::move(fault_injection);
  self->set_down_handler([=](caf::down_msg& down) {
    auto w = self->state.watched.find(down.source);
    if (w == self->state.watched.end()) return;
    for (int64_t id : w->second) {
      self->state.requests.erase(id);
      if (self->state.executor) caf::anon_send<caf::message_priority::high>(self->state.executor, cancel_atom::value, id);
    }
    self->state.watched.erase(w);
  });
  return {
      [=](connect_atom, executor_actor executor) { self->state.executor = std::move(executor); },
      [=](register_atom, int64_t id, int32_t prompt_tokens, Modality modality, sink_actor sink) {
        decoder_state::Entry e{std::move(sink), StreamingDetokenizer(*self->state.tokenizer), prompt_tokens, 0};
        if (modality != Modality::Text) {
          e.media = self->state.codecs->info(modality);  // the executor refuses a modality the model lacks
          if (auto codec = self->state.codecs->audio(modality)) {
            codecs::AudioDecodeOptions o;
            o.seed = uint64_t(id);  // SNAC's noise blocks: each answer its own noise
            e.audio = codec->decoder(o);
          }
        }
        auto& ids = self->state.watched[e.sink.address()];
        if (ids.empty()) self->monitor(e.sink);
        ids.push_back(id);
        self->state.requests.emplace(id, std::move(e));
      },
      [=](events_atom, const step_events& ev) {
        for (size_t i = 0; i < ev.request.size(); ++i) {
          auto it = self->state.requests.find(ev.request[i]);
          if (it == self->state.requests.end()) continue;
          auto& e = it->second;
          const FinishReason finish = ev.finish[i];
          // A failure decoding one request ends that request with the reason (and cancels
          // its sequence); the others go on.
          try {
            if (self->state.fault_injection) self->state.fault_injection("decode", ev.request[i]);
          } catch (const std::exception& x) {
            fail_request(self, it, std::string("decoding failed: ") + x.what());
            continue;
          }
          if (e.media) {
            try {
              decode_media(self, ev.request[i], e, ev.token[i], finish, ev.code[i], ev.error[i]);
            } catch (const std::exception& x) {
              fail_request(self, it, std::string("decoding failed: ") + x.what());
              continue;
            }
            if (finish != FinishReason::None) forget(self, it);
            continue;
          }
          text_delta d;
          d.request = ev.request[i];
          if (ev.token[i] >= 0) {
            ++e.completion_tokens;
            d.text = e.detok.push(ev.token[i]);
          }
          if (finish != FinishReason::None) {
            d.text += e.detok.flush();
            d.finish = finish;
            d.error_code = ev.code[i];
            d.error = ev.error[i];
          }
          d.prompt_tokens = e.prompt_tokens;
          d.completion_tokens = e.completion_tokens;
          // Every token leaves as a delta, even one whose text is held back (half a UTF-8
          // character, a control token): paced streams are timed per token.
          self->send(e.sink, delta_atom::value, std::move(d));
          if (finish != FinishReason::None) forget(self, it);
        }
      },
  };
}


}  // namespace

decoder_actor spawn_decoder(caf::actor_system& system, std::shared_ptr<const Tokenizer> tokenizer,
                            std::shared_ptr<const codecs::ModelCodecs> codecs, FaultInjection fault_injection) {
  return system.spawn(decoder_impl, std::move(tokenizer), std::move(codecs), std::move(fault_injection));
}

}  // namespace tutti::actors
