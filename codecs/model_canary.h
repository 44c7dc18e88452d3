// Canary checks of a unified model, one per modality: fast, deterministic probes that tell a
// broken modality (a corrupt codebook, a bad training run, weights that produce NaN) from a
// healthy one, so the server can route that modality to a fallback model while the others
// keep serving (actors/registry.*). Plain functions over the model, its tokenizer and its
// codecs; they run on the thread that drives the model (forward is not re-entrant).
//
// What each checks:
//   text:  every logit of a fixed canary text is finite, and its perplexity stays within
//          text_perplexity_ratio of the baseline;
//   audio, music: fixed codes decode to their stored checksum (within decode_tolerance),
//          a short seeded generation from a fixed prompt decodes to audio that is finite,
//          not silent and not clipped beyond its baseline, and its codes are spread
//          (entropy, top-code share);
//   image, video: fixed codes decode to their checksum, and a few generated patches decode
//          to a frame region that is not flat.
// Baselines come from the file (tutti.canary.* metadata, `tutti model canary --stamp`) or
// are recorded by the first run (the caller keeps them across reloads of the same model).
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "codecs/model_codecs.h"
#include "pipeline/gguf.h"
#include "pipeline/kv_cache.h"
#include "pipeline/model.h"
#include "pipeline/tokenizer.h"

namespace tutti::codecs {

struct CanaryThresholds {
  double text_perplexity_ratio = 1.5;
  double decode_tolerance = 0.01;
  double min_rms = 1e-4;
  double max_clip_fraction = 0.05;
  double min_code_entropy_bits = 1.0;
  double max_top_code_share = 0.6;
  double min_frame_stddev = 1.0;
};

// What a check compares against; 0 (or absent) means "not known yet": the run records it.
struct CanaryBaselines {
  double text_perplexity = 0;
  std::map<Modality, double> decode_checksum;
  // Audio-like: the share of full-scale samples a healthy generation has (a random-weight
  // model's is high); clipping counts against max_clip_fraction beyond it.
  std::map<Modality, double> clip_fraction;
};

struct CanaryResult {
  Modality modality = Modality::Text;
  bool passed = false;
  std::string reason;  // why it failed; "" when it passed
  double seconds = 0;  // how long the check took
  std::vector<std::pair<std::string, double>> measures;  // what it measured, by name
};

// The modalities a model has canaries for: text, then its media in table order.
std::vector<Modality> canary_modalities(const ModalityTable& modalities);
inline std::vector<Modality> canary_modalities(const Model& model) { return canary_modalities(model.config().modalities); }

// One modality's check. `kv` is the canary's own cache (a few blocks; never the serving
// pool), emptied again before it returns. A missing baseline is recorded into `baselines`.
CanaryResult run_canary(Model& model, const Tokenizer& tokenizer, const ModelCodecs& codecs, PagedKvCache& kv,
                        Modality modality, const CanaryThresholds& thresholds, CanaryBaselines& baselines);

// A KV cache big enough for every canary of `model`.
Expected<std::unique_ptr<PagedKvCache>> make_canary_cache(const Model& model);

// tutti.canary.text.perplexity and tutti.canary.<modality>.decode_checksum.
CanaryBaselines read_canary_baselines(const GgufFile& file);
void write_canary_baselines(GgufWriter& writer, const CanaryBaselines& baselines);

// Fault injection for tests and drills: the first codebook stage of `modality` in the loaded
// codecs, writable, so a test can break it (NaN, a constant: the same breakage a corrupt
// file has) while the server runs, and mend it again. Codecs are shared read-only
// otherwise; this is the one way to write them. Null for a codec without codebooks (SNAC).
std::vector<float>* codebook_for_fault_injection(const ModelCodecs& codecs, Modality modality);

}  // namespace tutti::codecs

namespace tutti::codecs {

// The health of one loaded model's modalities, with hysteresis: a failed canary (or the
// runtime guard: non-finite logits in a step) degrades a modality at once; a degraded one
// returns only after `pass_streak` passing canaries in a row. Thread-safe: written by the
// model's executor, read by routing on the I/O thread and by /health and /metrics.
class ModalityHealth {
 public:
  ModalityHealth(std::vector<Modality> modalities, int pass_streak);
  bool healthy(Modality m) const;  // a modality the model lacks is not healthy
  void record(const CanaryResult& r);
  void flag(Modality m, const std::string& why);  // the runtime guard
  // A verdict made elsewhere, taken as it is (a cluster ingress's copy of its executor
  // nodes' boards): no streak, no canary of its own.
  void mirror(Modality m, bool healthy, const std::string& why);
  struct Entry {
    Modality modality = Modality::Text;
    bool healthy = true;
    int streak = 0;                  // passes in a row since the last failure
    uint64_t checks = 0, failures = 0;
    std::string reason;              // the last failure's
    double last_seconds = 0;         // the last canary's cost
    double total_seconds = 0;
    std::vector<std::pair<std::string, double>> measures;  // the last canary's
  };
  std::vector<Entry> snapshot() const;
  bool all_healthy() const;

 private:
  mutable std::mutex mu_;
  std::vector<Entry> entries_;
  int pass_streak_;
};

}  // namespace tutti::codecs
