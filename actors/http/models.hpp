// The models a server serves, and where each request goes (docs/architecture.md, "Models,
// health and fallback"):
//
//   ModelRegistry ── ModelSlot "unified" ── current ModelInstance (weights, pipeline, health)
//                 │        fallback: audio -> "speech-backup"
//                 └─ ModelSlot "speech-backup" ── current ModelInstance
//
// A request names a model (or an alias, or nothing: the first); route() gives the instance
// that answers its modality: the named model's while that modality is healthy there, else
// the one its `fallback` names for the modality (followed as a chain), else an error
// (modality_unavailable). A reload loads a new instance beside the old one, checks its
// canaries, and puts it in the slot; generations hold the instance they started on, so the
// old one serves what runs on it to the end and is freed after its last generation.
//
// Threads: routing and slot reads happen on the I/O thread and the loader threads; a slot's
// current instance is behind a mutex. Health is written by each instance's executor.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "actors/http/openai.hpp"
#include "actors/pipeline.hpp"
#include "config/settings.h"

namespace tutti::http {

// What the server reads of a model beside its weights.
struct ModelFacts {
  std::string name;  // general.name ("" when the file has none)
  ModalityTable modalities;
  ChatTemplate chat_template = ChatTemplate::Plain;
  uint32_t n_vocab = 0;
  uint32_t context = 0;
};
ModelFacts facts_of(const Model& model);
// Why `b` cannot answer modality `m` in place of `a` (the same token ids must mean the same
// thing: a conversation's audio items, a prompt's template), or nullopt when it can.
std::optional<std::string> cannot_stand_in(const ModelFacts& a, const ModelFacts& b, Modality m);

// One loaded copy of a model: its pipeline (whose executor keeps the weights alive) and its
// modalities' health. Shared: the slot holds its current one, and every generation started
// on it holds it to its end. The last holder's release stops its actors.
struct ModelInstance {
  std::string name;  // the slot's
  std::string node;  // the executor node it runs on (a cluster ingress's); "": this process
  std::string file;
  uint64_t file_bytes = 0;
  int version = 1;   // 1 at start, one more per reload
  ModelFacts facts;
  actors::PipelineHandles pipe;
  std::shared_ptr<codecs::ModalityHealth> health;
  std::vector<codecs::CanaryResult> load_canaries;  // run before it served anything
  double load_seconds = 0;
  std::atomic<uint64_t> generations{0};  // started on it
  std::atomic<double> first_generation_at{0};  // unix seconds; 0: none yet
  bool has(Modality m) const { return m == Modality::Text || facts.modalities.find(m) != nullptr; }
  ~ModelInstance();
};

// How to load a model: its entry, the engine settings around it, and its health settings.
struct ModelLoadOptions {
  ModelEntry entry;
  std::string device = "cpu", kernels = "auto";
  int threads = 0;  // 0: one per core
  actors::PipelineConfig pipeline;
  codecs::CanaryThresholds thresholds;
  int pass_streak = 3;
  double canary_interval_s = 60;
  // Refuse an instance whose canaries fail (a reload), rather than serving it with those
  // modalities degraded (a start, where routing then goes around them).
  bool require_healthy = false;
};
codecs::CanaryThresholds canary_thresholds(const HealthSettings& h);
// How `entry` loads under the engine settings (device, kernels, [health]) and the pipeline
// (a per-entry KV pool over it). Threads are the entry's (0: [model] threads).
ModelLoadOptions load_options_for(const Settings& engine, const actors::PipelineConfig& pipeline, const ModelEntry& entry);

// Loads the entry's file (after checking the memory it needs against what is available),
// runs its canaries against `baselines` (recording those missing), and spawns its pipeline.
Expected<std::shared_ptr<ModelInstance>> load_model_instance(caf::actor_system& system, const ModelLoadOptions& options,
                                                             codecs::CanaryBaselines& baselines);
// The same over a model the caller owns and keeps alive while the server runs (tests and
// benchmarks assemble servers this way).
Expected<std::shared_ptr<ModelInstance>> borrow_model_instance(caf::actor_system& system, Model& model,
                                                               std::shared_ptr<const Tokenizer> tokenizer,
                                                               const ModelLoadOptions& options, codecs::CanaryBaselines& baselines);

// This process's resident memory now and at its peak, in bytes (/proc/self/status).
struct ResidentMemory {
  uint64_t now = 0, peak = 0;
};
ResidentMemory resident_memory();

// What the last reload of a model did (on /health).
struct ReloadReport {
  bool ok = false;
  std::string reason;         // why it was refused
  std::string file;
  int version = 0;
  double requested_at = 0;    // unix seconds
  double load_seconds = 0;    // loading, canaries and spawning, until the swap
  uint64_t rss_before = 0, peak_rss = 0;
};

// One served model: its entry, its current instance and its fallbacks.
class ModelSlot {
 public:
  explicit ModelSlot(ModelEntry entry);
  const std::string& name() const { return entry_.name; }
  // A single model given without a name takes the server's (ServerConfig::fit_to) before
  // serving starts.
  void name_as(const std::string& name) { entry_.name = name; }
  const ModelEntry& entry() const { return entry_; }
  const std::map<Modality, std::string>& fallback() const { return fallback_; }
  std::shared_ptr<ModelInstance> current() const;
  void replace(std::shared_ptr<ModelInstance> next);
  // Requests this model was asked for, whose modality another model answered.
  std::atomic<uint64_t>& fallback_count(Modality m) { return fallback_requests_[size_t(m)]; }
  uint64_t fallback_total(Modality m) const { return fallback_requests_[size_t(m)].load(); }

  std::atomic<bool> reloading{false};  // one reload at a time
  std::mutex mu;                        // guards what follows
  codecs::CanaryBaselines baselines;    // from the first load (or the file), kept across reloads
  ReloadReport last_reload;
  uint64_t reloads_ok = 0, reloads_refused = 0;

 private:
  ModelEntry entry_;
  std::map<Modality, std::string> fallback_;
  mutable std::mutex current_mu_;
  std::shared_ptr<ModelInstance> current_;
  std::array<std::atomic<uint64_t>, 5> fallback_requests_{};
};

// What a cluster ingress places a request by (see Placement).
struct PlacementHint {
  Modality answer = Modality::Text;  // a text answer goes where its prompt's prefix is cached
  std::string_view prompt;           // the formatted prompt (its first bytes decide)
  std::string sticky;                // a Realtime session or stream job: all on one node
};

// Where a request runs when the registry fronts executor nodes rather than models of its
// own (a cluster ingress: actors/cluster/ingress.hpp). The slots then hold each model's
// front (its facts and codecs, with the health of its modalities over all nodes), and the
// placement picks the node whose replica runs the request.
class Placement {
 public:
  virtual ~Placement() = default;
  // The instance on the node that should run a request of `model` answering `m`, or why none
  // can (executor_unavailable). `counted`: a request that will run there (routing counts it,
  // a sticky session is placed); false: a look-up.
  virtual std::variant<std::shared_ptr<ModelInstance>, ApiError> place(const std::string& model, Modality m,
                                                                      const PlacementHint& hint, bool counted) = 0;
  virtual void end_sticky(const std::string& sticky) = 0;  // the session or job ended
  virtual std::string render_metrics() const = 0;          // per-node series for /metrics
  virtual nlohmann::json status_json() const = 0;          // the nodes (tutti cluster status)
};

// Where a request goes.
struct ModelRoute {
  std::shared_ptr<ModelInstance> instance;
  std::string served_by;  // the model that answers (the instance's name)
  bool fallback = false;  // another model than the one asked for
};

class ModelRegistry {
 public:
  // The first slot is the default: an empty `model` and every alias go to it.
  ModelRegistry(std::vector<std::unique_ptr<ModelSlot>> slots, std::vector<std::string> aliases);
  ~ModelRegistry();  // joins the reloads in flight, then releases every instance

  ModelSlot* find(const std::string& model);  // by name or alias; "" is the default
  ModelSlot& primary() { return *slots().front(); }
  // Every slot, in order (slots are added, never removed: the pointers stay valid).
  std::vector<ModelSlot*> slots() const;
  // A model first seen after the start (a cluster ingress: a node joined with it).
  void add(std::unique_ptr<ModelSlot> slot);
  // The names requests may use: every model's, and the aliases (of the default).
  ServedModel served() const;

  // The instance that answers `modality` for a request naming `model`. `counted`: a request
  // that will run there (a fallback counts in tutti_fallback_requests_total), not a look-up.
  // Through `placement` when there is one, with `hint`.
  std::variant<ModelRoute, ApiError> route(const std::string& model, Modality modality, bool counted = true,
                                           const PlacementHint& hint = {});
  // Executor nodes holding the models' replicas (set once, before serving; null: the models
  // run in this process).
  std::shared_ptr<Placement> placement;

  // Loads `file` (or the slot's own) beside the running instance and swaps it in when its
  // canaries pass; `done` hears the report on the loader thread. Refused at once (false,
  // with the error) for an unknown model (not_found) or while one is running (conflict).
  std::optional<ApiError> reload(const std::string& name, const std::string& file, std::function<void(const ReloadReport&)> done);
  void wait_for_reloads();  // joins the loader threads
  // How a reload loads (set once by whoever assembles the server, before any reload).
  std::function<ModelLoadOptions(const ModelEntry&)> load_options;
  caf::actor_system* system = nullptr;

  // /metrics: per model and modality, and the reloads. health_json: each model's state per
  // modality and version for /health (open: nothing more); `detailed` adds files, the
  // canaries' measures and failures, and the last reload (GET /v1/admin/models).
  std::string render_metrics() const;
  nlohmann::json health_json(bool detailed) const;

 private:
  ModelSlot* find_in(const std::vector<ModelSlot*>& all, const std::string& model) const;
  mutable std::mutex slots_mu_;  // guards slots_ (the slots themselves have their own locks)
  std::vector<std::unique_ptr<ModelSlot>> slots_;
  std::vector<std::string> aliases_;
  std::mutex loaders_mu_;
  std::vector<std::thread> loaders_;
};

// Builds the registry from the settings' [[models]] list: loads every model (in order; the
// first is the default), checks each fallback can stand in for its modality, and fills
// `load_options` for reloads. `engine` supplies the shared engine settings.
Expected<std::shared_ptr<ModelRegistry>> load_models(caf::actor_system& system, const Settings& engine,
                                                     const actors::PipelineConfig& pipeline);

}  // namespace tutti::http
