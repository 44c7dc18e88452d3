#include "codecs/model_canary.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>

#include "codecs/patch_tokenizer.h"
#include "codecs/rvq.h"
#include "pipeline/sampler.h"

namespace tutti::codecs {

namespace {

// The fixed text the text canary scores and the media canaries start from. Changing it
// changes every recorded baseline.
constexpr const char* kCanaryText =
    "The quick brown fox jumps over the lazy dog. One, two, three, four, five: the canary sings before the mine opens.";
constexpr int64_t kCanarySeq = 1;
// Frames generated and decoded per audio-like check: about 160 ms of audio, at least 3
// frames (the MDCT decoder holds one back), so a check costs the executor tens of ms.
int audio_frames(const AudioCodec& codec) { return std::max(3, 3840 / std::max(1, codec.frame_samples())); }
constexpr int kPatchesGenerated = 8;  // patches generated per image or video check
constexpr uint64_t kCanarySeed = 0x7a771ca4a21e5ull;

double elapsed_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

bool all_finite(std::span<const float> v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// Fixed codes: a deterministic spread over the codebook (every slot, every frame).
std::vector<int32_t> fixed_codes(size_t n, uint32_t codebook_size) {
  std::vector<int32_t> codes(n);
  uint64_t x = kCanarySeed;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    codes[i] = int32_t(x % codebook_size);
  }
  return codes;
}

// Within tolerance of the baseline (relative), recording it when there is none yet.
bool matches_baseline(double value, double& baseline, double tolerance) {
  if (baseline == 0) {
    baseline = value;
    return true;
  }
  return std::abs(value - baseline) <= tolerance * std::max(std::abs(baseline), 1e-9);
}

struct Fail {
  CanaryResult& r;
  void operator()(std::string why) {
    if (r.passed) r.reason = std::move(why);
    r.passed = false;
  }
};

// Runs the canary prompt (then the modality's begin token) and `steps` seeded decode steps,
// each token drawn from the range `allowed(step)` gives. Empty with `*finite` false when a
// logit was not finite.
std::vector<int32_t> generate_codes(Model& model, PagedKvCache& kv, std::vector<int32_t> prompt, int steps,
                                    const std::function<TokenRange(int)>& allowed, bool* finite, std::string* error) {
  *finite = true;
  const int n_vocab = int(model.hparams().n_vocab);
  SamplingParams sp;
  sp.temperature = 1.f;
  sp.seed = kCanarySeed;
  Sampler sampler(sp);
  std::vector<int32_t> out;
  StepLogits logits;
  Batch b;
  b.chunks.push_back({kCanarySeq, 0, std::move(prompt), false});
  int pos = 0;
  for (int i = 0; i <= steps; ++i) {
    if (Status s = model.forward(b, kv, logits); !s) {
      *error = s.message();
      break;
    }
    if (i == steps) break;
    const float* row = logits.last_of(0, b);
    if (!all_finite(std::span(row, size_t(n_vocab)))) {
      *finite = false;
      break;
    }
    sampler.set_allowed({allowed(i)});
    const int32_t t = sampler.sample(row, n_vocab);
    if (t < 0) break;
    out.push_back(t);
    pos += int(b.chunks[0].tokens.size());
    b.chunks[0].start_pos = pos;
    b.chunks[0].tokens = {t};
  }
  kv.release(kCanarySeq);
  return out;
}

void code_spread(CanaryResult& r, const std::vector<int32_t>& codes, const CanaryThresholds& th) {
  std::map<int32_t, int> counts;
  for (int32_t c : codes) counts[c]++;
  double entropy = 0;
  int top = 0;
  for (auto& [c, n] : counts) {
    const double p = double(n) / codes.size();
    entropy -= p * std::log2(p);
    top = std::max(top, n);
  }
  const double share = codes.empty() ? 1 : double(top) / codes.size();
  r.measures.push_back({"code_entropy_bits", entropy});
  r.measures.push_back({"top_code_share", share});
  Fail fail{r};
  if (entropy < th.min_code_entropy_bits)
    fail("generated codes have " + std::to_string(entropy) + " bits of entropy, below " + std::to_string(th.min_code_entropy_bits));
  if (share > th.max_top_code_share)
    fail("one code is " + std::to_string(share) + " of the generated codes, above " + std::to_string(th.max_top_code_share));
}

// The fixed codes' checksum against its baseline (recorded when there is none yet).
void check_checksum(CanaryResult& r, Modality m, double value, const CanaryThresholds& th, CanaryBaselines& base) {
  r.measures.push_back({"decode_checksum", value});
  double& want = base.decode_checksum[m];
  if (!matches_baseline(value, want, th.decode_tolerance))
    Fail{r}("the fixed codes decode to checksum " + std::to_string(value) + ", not " + std::to_string(want) + " (tolerance " +
            std::to_string(th.decode_tolerance) + ")");
  r.measures.push_back({"baseline_decode_checksum", want});
}

// `n` codes (0..codebook_size) the model generates, seeded, after the canary prompt and the
// modality's begin token, slot by slot of a `slots`-code frame; their spread is checked.
// Nullopt (and `r` failed) when the logits were not finite or the step failed.
std::optional<std::vector<int32_t>> generated_codes(CanaryResult& r, Model& model, const Tokenizer& tok, PagedKvCache& kv,
                                                    const ModalityInfo& m, int n, int slots, const CanaryThresholds& th) {
  std::vector<int32_t> prompt = tok.encode(kCanaryText, true);
  prompt.push_back(int32_t(m.begin_token));
  bool finite = true;
  std::string error;
  const std::vector<int32_t> tokens = generate_codes(model, kv, prompt, n,
                                                     [&](int i) {
                                                       const uint32_t at = m.slot_offset(uint32_t(i % slots));
                                                       return TokenRange{int32_t(at), int32_t(at + m.codebook_size)};
                                                     },
                                                     &finite, &error);
  if (!finite) {
    Fail{r}("the model's logits are not finite while generating " + std::string(modality_name(m.modality)));
    return std::nullopt;
  }
  if (!error.empty()) {
    Fail{r}("generating failed: " + error);
    return std::nullopt;
  }
  std::vector<int32_t> codes;
  for (int32_t t : tokens) codes.push_back(int32_t((uint32_t(t) - m.token_offset) % m.codebook_size));
  code_spread(r, codes, th);
  return codes;
}

void text_canary(CanaryResult& r, Model& model, const Tokenizer& tok, PagedKvCache& kv, const CanaryThresholds& th,
                 CanaryBaselines& base) {
  Fail fail{r};
  const std::vector<int32_t> ids = tok.encode(kCanaryText, true);
  if (ids.size() < 2) return fail("the canary text tokenizes to fewer than two tokens");
  Batch b;
  b.chunks.push_back({kCanarySeq, 0, ids, true});
  StepLogits logits;
  const Status s = model.forward(b, kv, logits);
  kv.release(kCanarySeq);
  if (!s) return fail("the forward pass failed: " + s.message());
  const int n_vocab = int(model.hparams().n_vocab);
  double nll = 0;
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const float* row = logits.row(logits.row_begin[0] + int(i));
    if (!all_finite(std::span(row, size_t(n_vocab)))) return fail("logits are not finite (position " + std::to_string(i) + ")");
    double mx = row[0];
    for (int v = 1; v < n_vocab; ++v) mx = std::max(mx, double(row[v]));
    double sum = 0;
    for (int v = 0; v < n_vocab; ++v) sum += std::exp(double(row[v]) - mx);
    nll += std::log(sum) + mx - double(row[ids[i + 1]]);
  }
  const double ppl = std::exp(nll / double(ids.size() - 1));
  r.measures.push_back({"perplexity", ppl});
  if (!std::isfinite(ppl)) return fail("the canary text's perplexity is not finite");
  if (base.text_perplexity == 0) base.text_perplexity = ppl;
  r.measures.push_back({"baseline_perplexity", base.text_perplexity});
  if (ppl > base.text_perplexity * th.text_perplexity_ratio)
    fail("the canary text's perplexity " + std::to_string(ppl) + " is over " + std::to_string(th.text_perplexity_ratio) +
         " x its baseline " + std::to_string(base.text_perplexity));
}

void audio_canary(CanaryResult& r, Model& model, const Tokenizer& tok, const ModalityInfo& m, const AudioCodec& codec,
                  PagedKvCache& kv, const CanaryThresholds& th, CanaryBaselines& base) {
  Fail fail{r};
  const int per_frame = codec.codes_per_frame();
  const int frames = audio_frames(codec);
  // 1. Fixed codes decode to their checksum (mean |sample|).
  const std::vector<int32_t> fixed = fixed_codes(size_t(frames * per_frame), m.codebook_size);
  auto pcm = codec.decode(fixed);
  if (!pcm) return fail("decoding the fixed codes failed: " + pcm.error().message);
  if (!all_finite(*pcm)) return fail("the fixed codes decode to samples that are not finite");
  double mean_abs = 0;
  for (float x : *pcm) mean_abs += std::abs(x);
  mean_abs /= std::max<size_t>(1, pcm->size());
  check_checksum(r, m.modality, mean_abs, th, base);

  // 2. A short seeded generation from the canary prompt decodes to sane audio.
  const auto generated = generated_codes(r, model, tok, kv, m, frames * per_frame, per_frame, th);
  if (!generated) return;
  const std::vector<int32_t>& codes = *generated;
  auto gen = codec.decode(codes);
  if (!gen) return fail("decoding the generated codes failed: " + gen.error().message);
  if (!all_finite(*gen)) return fail("generated audio is not finite");
  double sq = 0;
  size_t clipped = 0;
  for (float x : *gen) {
    sq += double(x) * x;
    clipped += std::abs(x) >= 0.999f;
  }
  const double rms = gen->empty() ? 0 : std::sqrt(sq / gen->size());
  const double clip = gen->empty() ? 0 : double(clipped) / gen->size();
  r.measures.push_back({"generated_rms", rms});
  r.measures.push_back({"clip_fraction", clip});
  if (rms < th.min_rms) fail("generated audio is silent (rms " + std::to_string(rms) + ")");
  auto known = base.clip_fraction.find(m.modality);
  if (known == base.clip_fraction.end()) known = base.clip_fraction.emplace(m.modality, clip).first;
  r.measures.push_back({"baseline_clip_fraction", known->second});
  if (clip > known->second + th.max_clip_fraction)
    fail("generated audio is clipped (" + std::to_string(clip) + " of samples at full scale, baseline " + std::to_string(known->second) + ")");
}

void patch_canary(CanaryResult& r, Model& model, const Tokenizer& tok, const ModalityInfo& m, const Codebooks& books,
                  PagedKvCache& kv, const CanaryThresholds& th, CanaryBaselines& base) {
  Fail fail{r};
  const PatchGeometry g{int(m.width), int(m.height), int(m.patch_size)};
  const int stages = books.stages;
  // 1. Fixed codes decode to their checksum (mean |patch value|), finite.
  std::vector<int32_t> grid = fixed_codes(size_t(g.patches()) * stages, m.codebook_size);
  std::vector<float> patch(size_t(g.dim()));
  double mean_abs = 0;
  for (int p = 0; p < g.patches(); ++p) {
    rvq_decode(books, std::span<const int32_t>(grid.data() + size_t(p) * stages, size_t(stages)), patch);
    if (!all_finite(patch)) return fail("the fixed codes decode to values that are not finite (patch " + std::to_string(p) + ")");
    for (float x : patch) mean_abs += std::abs(x);
  }
  mean_abs /= double(g.patches()) * g.dim();
  check_checksum(r, m.modality, mean_abs, th, base);

  // 2. A few generated patches (the grid's first), decoded in place: not flat.
  const auto codes = generated_codes(r, model, tok, kv, m, std::min(kPatchesGenerated, g.patches()) * stages, stages, th);
  if (!codes) return;
  std::copy(codes->begin(), codes->end(), grid.begin());
  auto frame = decode_frame(g, books, grid);
  if (!frame) return fail("decoding the generated patches failed: " + frame.error().message);
  // The generated patches' pixels: the first rows of the frame's first patch row.
  const int patches_done = int(codes->size()) / stages;
  double sum = 0, sq = 0;
  size_t count = 0;
  for (int y = 0; y < g.patch; ++y)
    for (int x = 0; x < std::min(g.width, patches_done * g.patch); ++x)
      for (int c = 0; c < 3; ++c) {
        const double v = (*frame)[(size_t(y) * g.width + x) * 3 + c];
        sum += v, sq += v * v, ++count;
      }
  const double mean = count ? sum / count : 0;
  const double stddev = count ? std::sqrt(std::max(0.0, sq / count - mean * mean)) : 0;
  r.measures.push_back({"generated_pixel_stddev", stddev});
  if (stddev < th.min_frame_stddev) fail("generated patches are flat (pixel stddev " + std::to_string(stddev) + ")");
}

}  // namespace

std::vector<Modality> canary_modalities(const ModalityTable& modalities) {
  std::vector<Modality> out = {Modality::Text};
  for (const ModalityInfo& m : modalities.entries) out.push_back(m.modality);
  return out;
}

Expected<std::unique_ptr<PagedKvCache>> make_canary_cache(const Model& model) {
  // The prompt (~40 tokens) plus the longest generation, in 16-position blocks, with room.
  const int positions = 256;
  const auto& h = model.hparams();
  const size_t per_position = size_t(h.n_layer) * 2 * h.n_head_kv * h.head_dim * sizeof(float);
  return model.make_kv_cache(per_position * (positions + 64), TensorType::F32, 16, false);
}

CanaryResult run_canary(Model& model, const Tokenizer& tokenizer, const ModelCodecs& codecs, PagedKvCache& kv, Modality modality,
                        const CanaryThresholds& thresholds, CanaryBaselines& baselines) {
  const auto t0 = std::chrono::steady_clock::now();
  CanaryResult r;
  r.modality = modality;
  r.passed = true;
  try {
    if (modality == Modality::Text) {
      text_canary(r, model, tokenizer, kv, thresholds, baselines);
    } else if (const ModalityInfo* m = model.config().modalities.find(modality); !m) {
      r.passed = false, r.reason = std::string("the model has no ") + modality_name(modality) + " modality";
    } else if (auto codec = codecs.audio(modality)) {
      audio_canary(r, model, tokenizer, *m, *codec, kv, thresholds, baselines);
    } else if (auto books = codecs.books(modality)) {
      patch_canary(r, model, tokenizer, *m, *books, kv, thresholds, baselines);
    } else {
      r.passed = false, r.reason = std::string("the model has no codec for ") + modality_name(modality);
    }
  } catch (const std::exception& e) {
    kv.release(kCanarySeq);
    r.passed = false, r.reason = std::string("the check threw: ") + e.what();
  }
  r.seconds = elapsed_since(t0);
  return r;
}

CanaryBaselines read_canary_baselines(const GgufFile& file) {
  CanaryBaselines b;
  if (auto v = file.get_float("tutti.canary.text.perplexity"); v && *v) b.text_perplexity = **v;
  for (Modality m : {Modality::Audio, Modality::Image, Modality::Video, Modality::Music})
  {
    if (auto v = file.get_float(std::string("tutti.canary.") + modality_name(m) + ".decode_checksum"); v && *v)
      b.decode_checksum[m] = **v;
    if (auto v = file.get_float(std::string("tutti.canary.") + modality_name(m) + ".clip_fraction"); v && *v)
      b.clip_fraction[m] = **v;
  }
  return b;
}

void write_canary_baselines(GgufWriter& writer, const CanaryBaselines& b) {
  if (b.text_perplexity > 0) writer.set_f32("tutti.canary.text.perplexity", float(b.text_perplexity));
  for (auto& [m, v] : b.decode_checksum)
    if (v > 0) writer.set_f32(std::string("tutti.canary.") + modality_name(m) + ".decode_checksum", float(v));
  for (auto& [m, v] : b.clip_fraction) writer.set_f32(std::string("tutti.canary.") + modality_name(m) + ".clip_fraction", float(v));
}

std::vector<float>* codebook_for_fault_injection(const ModelCodecs& codecs, Modality modality) {
  const Codebooks* books = nullptr;
  if (auto codec = codecs.audio(modality)) books = codec->codebooks();
  else books = codecs.books(modality).get();
  if (!books || books->books.empty()) return nullptr;
  return &const_cast<Codebooks*>(books)->books[0];  // see the header: the one write
}

}  // namespace tutti::codecs

namespace tutti::codecs {

ModalityHealth::ModalityHealth(std::vector<Modality> modalities, int pass_streak) : pass_streak_(std::max(1, pass_streak)) {
  for (Modality m : modalities) entries_.push_back(Entry{m});
}

bool ModalityHealth::healthy(Modality m) const {
  std::lock_guard lock(mu_);
  for (const Entry& e : entries_)
    if (e.modality == m) return e.healthy;
  return false;
}

bool ModalityHealth::all_healthy() const {
  std::lock_guard lock(mu_);
  for (const Entry& e : entries_)
    if (!e.healthy) return false;
  return true;
}

void ModalityHealth::record(const CanaryResult& r) {
  std::lock_guard lock(mu_);
  for (Entry& e : entries_) {
    if (e.modality != r.modality) continue;
    e.checks++;
    e.last_seconds = r.seconds;
    e.total_seconds += r.seconds;
    e.measures = r.measures;
    if (!r.passed) {
      e.failures++;
      e.healthy = false;
      e.streak = 0;
      e.reason = r.reason;
    } else if (++e.streak >= pass_streak_ || e.healthy) {
      e.healthy = true;
    }
  }
}

void ModalityHealth::flag(Modality m, const std::string& why) {
  std::lock_guard lock(mu_);
  for (Entry& e : entries_)
    if (e.modality == m) {
      e.failures++;
      e.healthy = false;
      e.streak = 0;
      e.reason = why;
    }
}

void ModalityHealth::mirror(Modality m, bool healthy, const std::string& why) {
  std::lock_guard lock(mu_);
  for (Entry& e : entries_)
    if (e.modality == m && e.healthy != healthy) {
      e.healthy = healthy;
      e.streak = 0;
      if (!healthy) e.failures++, e.reason = why;
    }
}

std::vector<ModalityHealth::Entry> ModalityHealth::snapshot() const {
  std::lock_guard lock(mu_);
  return entries_;
}

}  // namespace tutti::codecs
