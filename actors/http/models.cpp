#include "actors/http/models.hpp"

#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "kernels/cuda/cuda_backend.h"

namespace tutti::http {

namespace {

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// What the kernel says could still be given to this process (MemAvailable), in bytes.
uint64_t available_memory() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;  // unknown: not checked
}

constexpr uint64_t kMiB = 1 << 20;

uint64_t file_bytes(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? uint64_t(st.st_size) : 0;
}

// The weights, the backend they live on and the tokenizer: what an instance's executor keeps
// alive (PipelineConfig::keep_alive). Destroyed in reverse: model before backend.
struct OwnedWeights {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Model> model;
};

// Canaries at load, the pipeline, the instance: shared by both ways of making one.
Expected<std::shared_ptr<ModelInstance>> start_instance(caf::actor_system& system, Model& model,
                                                        std::shared_ptr<const Tokenizer> tokenizer, const ModelLoadOptions& o,
                                                        codecs::CanaryBaselines& baselines, std::shared_ptr<const void> keep_alive,
                                                        double t0) {
  auto codecs_loaded = codecs::load_model_codecs(model.file());
  if (!codecs_loaded) return codecs_loaded.error();
  // Baselines the file carries (tutti model canary --stamp, tutti model init) fill in what the
  // slot has not recorded yet.
  const codecs::CanaryBaselines stamped = codecs::read_canary_baselines(model.file());
  if (baselines.text_perplexity == 0) baselines.text_perplexity = stamped.text_perplexity;
  for (auto& [m, v] : stamped.decode_checksum) baselines.decode_checksum.emplace(m, v);
  for (auto& [m, v] : stamped.clip_fraction) baselines.clip_fraction.emplace(m, v);
  auto inst = std::make_shared<ModelInstance>();
  inst->name = o.entry.name;
  inst->file = o.entry.file;
  inst->file_bytes = model.file().file_size();
  inst->facts = facts_of(model);
  const std::vector<Modality> modalities = codecs::canary_modalities(model.config().modalities);
  inst->health = std::make_shared<codecs::ModalityHealth>(modalities, o.pass_streak);
  // The canaries at load run here, before any request can reach the model.
  {
    auto kv = codecs::make_canary_cache(model);
    if (!kv) return kv.error();
    for (Modality m : modalities) {
      codecs::CanaryResult r = codecs::run_canary(model, *tokenizer, *codecs_loaded, **kv, m, o.thresholds, baselines);
      inst->health->record(r);
      if (!r.passed) {
        std::fprintf(stderr, "tutti: model %s: the %s canary failed at load: %s\n", o.entry.name.c_str(), modality_name(m),
                     r.reason.c_str());
        if (o.require_healthy)
          return Error{std::string("the ") + modality_name(m) + " canary failed: " + r.reason, ErrorCode::generation_failed};
      }
      inst->load_canaries.push_back(std::move(r));
    }
  }
  actors::PipelineConfig pc = o.pipeline;
  pc.health = inst->health;
  pc.canary_thresholds = o.thresholds;
  pc.canary_baselines = baselines;
  pc.canary_interval_s = o.canary_interval_s;
  pc.keep_alive = std::move(keep_alive);
  auto pipe = actors::spawn_pipeline(system, model, std::move(tokenizer), pc);
  if (!pipe) return pipe.error();
  inst->pipe = *pipe;
  inst->load_seconds = unix_seconds() - t0;
  return inst;
}

}  // namespace

ModelFacts facts_of(const Model& model) {
  ModelFacts f;
  f.name = model.hparams().name;
  f.modalities = model.config().modalities;
  auto tmpl = model.file().get_string("tokenizer.chat_template");
  f.chat_template = tmpl && *tmpl ? detect_chat_template(**tmpl) : ChatTemplate::Plain;
  f.n_vocab = model.hparams().n_vocab;
  f.context = model.hparams().n_ctx_train;
  return f;
}

std::optional<std::string> cannot_stand_in(const ModelFacts& a, const ModelFacts& b, Modality m) {
  if (a.n_vocab != b.n_vocab)
    return "its vocabulary has " + std::to_string(b.n_vocab) + " tokens, not " + std::to_string(a.n_vocab);
  if (m == Modality::Text) {
    if (a.chat_template != b.chat_template)
      return std::string("its chat template is ") + chat_template_name(b.chat_template) + ", not " + chat_template_name(a.chat_template);
    return std::nullopt;
  }
  const ModalityInfo* x = a.modalities.find(m);
  const ModalityInfo* y = b.modalities.find(m);
  if (!x) return std::nullopt;  // nothing to match: the asked model lacks it
  if (!y) return std::string("it has no ") + modality_name(m) + " modality";
  const bool same = x->token_offset == y->token_offset && x->codebook_size == y->codebook_size && x->num_stages == y->num_stages &&
                    x->begin_token == y->begin_token && x->end_token == y->end_token && x->transform == y->transform &&
                    x->sample_rate == y->sample_rate && x->frame_size == y->frame_size && x->patch_size == y->patch_size &&
                    x->width == y->width && x->height == y->height && x->slot_offsets == y->slot_offsets;
  if (!same) return std::string("its ") + modality_name(m) + " tokens are laid out differently (token range, stages or codec)";
  return std::nullopt;
}

ModelInstance::~ModelInstance() {
  if (pipe.executor && !pipe.remote) actors::stop_pipeline(pipe);
}

ModelLoadOptions load_options_for(const Settings& st, const actors::PipelineConfig& pipeline, const ModelEntry& e) {
  ModelLoadOptions o;
  o.entry = e;
  o.device = e.device.empty() ? st.device : e.device;
  o.kernels = st.kernels;
  o.threads = e.threads > 0 ? e.threads : st.threads;
  o.pipeline = pipeline;
  if (e.kv_cache_mb > 0) o.pipeline.kv_cache_bytes = size_t(e.kv_cache_mb) << 20;
  o.thresholds = canary_thresholds(st.health);
  o.pass_streak = st.health.pass_streak;
  o.canary_interval_s = st.health.canary_interval_s;
  return o;
}

codecs::CanaryThresholds canary_thresholds(const HealthSettings& h) {
  codecs::CanaryThresholds t;
  t.text_perplexity_ratio = h.text_perplexity_ratio;
  t.decode_tolerance = h.decode_tolerance;
  t.min_rms = h.min_rms;
  t.max_clip_fraction = h.max_clip_fraction;
  t.min_code_entropy_bits = h.min_code_entropy_bits;
  t.max_top_code_share = h.max_top_code_share;
  t.min_frame_stddev = h.min_frame_stddev;
  return t;
}

ResidentMemory resident_memory() {
  ResidentMemory r;
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string key;
    uint64_t kb = 0;
    in >> key >> kb;
    if (key == "VmRSS:") r.now = kb * 1024;
    if (key == "VmHWM:") r.peak = kb * 1024;
  }
  return r;
}

Expected<std::shared_ptr<ModelInstance>> load_model_instance(caf::actor_system& system, const ModelLoadOptions& o,
                                                             codecs::CanaryBaselines& baselines) {
  const double t0 = unix_seconds();
  const std::string& path = o.entry.file;
  const uint64_t weights = file_bytes(path);
  if (weights == 0) return Error{"model " + o.entry.name + ": cannot open " + path, ErrorCode::model_not_found};
  // What it will hold resident: the weights (mapped; on the CPU read in place), the KV pool.
  // Checked before anything is loaded, so a model that does not fit disturbs nothing.
  if (o.device == "cpu") {
    const uint64_t need = weights + o.pipeline.kv_cache_bytes;
    if (const uint64_t avail = available_memory(); avail > 0 && need > avail)
      return Error{"model " + o.entry.name + " needs " + std::to_string(need / kMiB) + " MiB (weights " + std::to_string(weights / kMiB) +
                       " MiB + KV cache " + std::to_string(o.pipeline.kv_cache_bytes / kMiB) + " MiB) but only " + std::to_string(avail / kMiB) +
                       " MiB are available",
                   ErrorCode::invalid_request};
  }
  auto owned = std::make_shared<OwnedWeights>();
  try {
    owned->backend = o.device == "cuda" ? make_cuda_backend({}) : make_cpu_backend({o.threads, o.kernels});
  } catch (const std::exception& e) {
    return Error{"model " + o.entry.name + ": " + e.what()};
  }
  auto model = Model::load(path, *owned->backend);
  if (!model) return Error{"model " + o.entry.name + ": " + model.error().message, model.error().code};
  owned->model = std::move(model).value();
  auto tok = Tokenizer::from_gguf(owned->model->file());
  if (!tok) return Error{"model " + o.entry.name + ": " + tok.error().message};
  Model& m = *owned->model;
  auto inst = start_instance(system, m, std::shared_ptr<const Tokenizer>(std::move(tok).value()), o, baselines, owned, t0);
  if (!inst) return Error{"model " + o.entry.name + ": " + inst.error().message, inst.error().code};
  return inst;
}

Expected<std::shared_ptr<ModelInstance>> borrow_model_instance(caf::actor_system& system, Model& model,
                                                               std::shared_ptr<const Tokenizer> tokenizer,
                                                               const ModelLoadOptions& o, codecs::CanaryBaselines& baselines) {
  return start_instance(system, model, std::move(tokenizer), o, baselines, nullptr, unix_seconds());
}

// ---- slots

ModelSlot::ModelSlot(ModelEntry entry) : entry_(std::move(entry)) {
  for (auto& [name, target] : entry_.fallback)
    for (Modality m : {Modality::Text, Modality::Audio, Modality::Image, Modality::Video, Modality::Music})
      if (name == modality_name(m)) fallback_[m] = target;
}

std::shared_ptr<ModelInstance> ModelSlot::current() const {
  std::lock_guard lock(current_mu_);
  return current_;
}

void ModelSlot::replace(std::shared_ptr<ModelInstance> next) {
  std::shared_ptr<ModelInstance> old;
  {
    std::lock_guard lock(current_mu_);
    old = std::move(current_);
    current_ = std::move(next);
  }
  // `old` is released here, outside the lock: freed now if nothing runs on it, else by the
  // last generation that does.
}

// ---- the registry

ModelRegistry::ModelRegistry(std::vector<std::unique_ptr<ModelSlot>> slots, std::vector<std::string> aliases)
    : slots_(std::move(slots)), aliases_(std::move(aliases)) {}

ModelRegistry::~ModelRegistry() {
  wait_for_reloads();
  for (auto& s : slots_) s->replace(nullptr);
}

void ModelRegistry::wait_for_reloads() {
  std::vector<std::thread> loaders;
  {
    std::lock_guard lock(loaders_mu_);
    loaders.swap(loaders_);
  }
  for (std::thread& t : loaders)
    if (t.joinable()) t.join();
}

std::vector<ModelSlot*> ModelRegistry::slots() const {
  std::lock_guard lock(slots_mu_);
  std::vector<ModelSlot*> out;
  for (auto& s : slots_) out.push_back(s.get());
  return out;
}

void ModelRegistry::add(std::unique_ptr<ModelSlot> slot) {
  std::lock_guard lock(slots_mu_);
  slots_.push_back(std::move(slot));
}

ModelSlot* ModelRegistry::find(const std::string& model) { return find_in(slots(), model); }

ModelSlot* ModelRegistry::find_in(const std::vector<ModelSlot*>& all, const std::string& model) const {
  if (model.empty()) return all.front();
  for (ModelSlot* s : all)
    if (s->name() == model) return s;
  for (const std::string& a : aliases_)
    if (a == model) return all.front();
  return nullptr;
}

ServedModel ModelRegistry::served() const {
  const std::vector<ModelSlot*> all = slots();
  ServedModel s(all.front()->name(), aliases_);
  for (size_t i = 1; i < all.size(); ++i) s.others.push_back(all[i]->name());
  return s;
}

std::variant<ModelRoute, ApiError> ModelRegistry::route(const std::string& model, Modality modality, bool counted,
                                                        const PlacementHint& hint) {
  const std::vector<ModelSlot*> all = slots();  // one snapshot per request
  ModelSlot* asked = find_in(all, model);
  if (!asked) return served().not_found(model);
  ModelSlot* at = asked;
  std::string why;
  for (size_t hops = 0; hops <= all.size(); ++hops) {
    std::shared_ptr<ModelInstance> inst = at->current();
    if (inst && (!inst->has(modality) || inst->health->healthy(modality))) {
      // A model that lacks the modality answers (and refuses it) unless a fallback has it.
      if (inst->has(modality) || !at->fallback().count(modality)) {
        if (placement) {  // a cluster: the slot holds the model's front; a node's replica answers
          auto placed = placement->place(at->name(), modality, hint, counted);
          if (const ApiError* e = std::get_if<ApiError>(&placed)) return *e;
          inst = std::get<std::shared_ptr<ModelInstance>>(std::move(placed));
        }
        if (at != asked && counted) asked->fallback_count(modality)++;
        return ModelRoute{inst, at->name(), at != asked};
      }
    }
    if (why.empty()) why = inst ? "unhealthy" : "not loaded";
    auto next = at->fallback().find(modality);
    if (next == at->fallback().end()) break;
    ModelSlot* n = find_in(all, next->second);
    if (!n) break;
    at = n;
  }
  return ApiError{ErrorCode::modality_unavailable,
                  std::string("the ") + modality_name(modality) + " modality of model " + asked->name() + " is " + why +
                      (asked->fallback().count(modality) ? " and its fallback cannot answer" : " and it has no fallback for it")};
}

std::optional<ApiError> ModelRegistry::reload(const std::string& name, const std::string& file,
                                              std::function<void(const ReloadReport&)> done) {
  ModelSlot* slot = nullptr;
  for (ModelSlot* s : slots())
    if (s->name() == name) slot = s;
  if (!slot) return ApiError{ErrorCode::not_found, "no model named " + name, "", 0, "model_not_found"};
  if (placement)
    return ApiError{ErrorCode::invalid_request, "this server is a cluster ingress: reload " + name +
                                                    " on its executor nodes (SIGHUP or their admin endpoint); each announces its new version"};
  if (!load_options || !system) return ApiError{ErrorCode::generation_failed, "this server cannot load models"};
  if (slot->reloading.exchange(true)) return ApiError{ErrorCode::conflict, "model " + name + " is already being reloaded"};
  std::lock_guard lock(loaders_mu_);
  loaders_.emplace_back([this, slot, file, done = std::move(done)] {
    ReloadReport report;
    report.requested_at = unix_seconds();
    report.rss_before = resident_memory().now;
    ModelEntry entry = slot->entry();
    std::shared_ptr<ModelInstance> running = slot->current();
    // No file given: the one serving now (an earlier reload may have named another).
    entry.file = !file.empty() ? file : running ? running->file : entry.file;
    report.file = entry.file;
    ModelLoadOptions o = load_options(entry);
    o.require_healthy = true;
    // The same weights on the same machine step alike: the new scheduler starts from what the
    // running one learned, so admission and the step allowance hold from its first step.
    if (running && running->pipe.admission && running->file_bytes == file_bytes(entry.file))
      if (auto picture = running->pipe.admission->picture(); picture && picture->cost_ready)
        o.pipeline.scheduler.cost_prior = picture->cost;
    codecs::CanaryBaselines baselines;
    {
      std::lock_guard l(slot->mu);
      baselines = slot->baselines;
    }
    std::shared_ptr<ModelInstance> old = std::move(running);
    auto next = load_model_instance(*system, o, baselines);
    if (next && old) {
      for (Modality m : {Modality::Text, Modality::Audio, Modality::Image, Modality::Video, Modality::Music})
        if (old->has(m))
          if (auto why = cannot_stand_in(old->facts, (*next)->facts, m)) {
            next = Error{"the new file cannot replace the old one: " + *why + " (conversations and prompts hold the old one's tokens)"};
            break;
          }
    }
    if (next) {
      (*next)->version = old ? old->version + 1 : 1;
      report.version = (*next)->version;
      report.load_seconds = unix_seconds() - report.requested_at;
      slot->replace(*next);  // new requests go to the new weights from here on
      report.ok = true;
    } else {
      report.reason = next.error().message;
      std::fprintf(stderr, "tutti: reload of %s refused: %s; the old weights keep serving\n", slot->name().c_str(), report.reason.c_str());
    }
    old.reset();
    report.peak_rss = resident_memory().peak;
    {
      std::lock_guard l(slot->mu);
      slot->last_reload = report;
      (report.ok ? slot->reloads_ok : slot->reloads_refused)++;
    }
    slot->reloading = false;
    if (done) done(report);
  });
  return std::nullopt;
}

std::string ModelRegistry::render_metrics() const {
  std::string b;
  const std::vector<ModelSlot*> all = slots();
  // One series per model and modality, from each model's current instance.
  using Entry = codecs::ModalityHealth::Entry;
  auto per_modality = [&](const char* name, const char* type, const char* help, const std::function<std::string(const Entry&)>& value) {
    b += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    for (ModelSlot* s : all)
      if (auto inst = s->current())
        for (const Entry& e : inst->health->snapshot())
          b += std::string(name) + "{model=\"" + s->name() + "\",modality=\"" + modality_name(e.modality) + "\"} " + value(e) + "\n";
  };
  per_modality("tutti_modality_healthy", "gauge", "Whether a model's modality passes its canaries (1) or is degraded (0).",
               [](const Entry& e) { return std::string(e.healthy ? "1" : "0"); });
  b += "# HELP tutti_fallback_requests_total Requests for a model whose modality another model answered.\n"
       "# TYPE tutti_fallback_requests_total counter\n";
  for (ModelSlot* s : all)
    for (Modality m : {Modality::Text, Modality::Audio, Modality::Image, Modality::Video, Modality::Music})
      if (s->fallback().count(m))
        b += "tutti_fallback_requests_total{model=\"" + s->name() + "\",modality=\"" + modality_name(m) + "\"} " +
             std::to_string(s->fallback_total(m)) + "\n";
  per_modality("tutti_canary_failures_total", "counter", "Canary checks (and runtime guards) that failed, per model and modality.",
               [](const Entry& e) { return std::to_string(e.failures); });
  per_modality("tutti_canary_last_seconds", "gauge", "The last canary check's time, per model and modality.",
               [](const Entry& e) { return std::to_string(e.last_seconds); });
  b += "# HELP tutti_model_reloads_total Reloads per model, by outcome.\n# TYPE tutti_model_reloads_total counter\n";
  for (ModelSlot* s : all) {
    std::lock_guard l(s->mu);
    b += "tutti_model_reloads_total{model=\"" + s->name() + "\",outcome=\"ok\"} " + std::to_string(s->reloads_ok) + "\n";
    b += "tutti_model_reloads_total{model=\"" + s->name() + "\",outcome=\"refused\"} " + std::to_string(s->reloads_refused) + "\n";
  }
  const ResidentMemory mem = resident_memory();
  b += "# HELP tutti_process_resident_bytes Resident memory of the server process.\n# TYPE tutti_process_resident_bytes gauge\n";
  b += "tutti_process_resident_bytes " + std::to_string(mem.now) + "\n";
  b += "# HELP tutti_process_peak_resident_bytes The process's peak resident memory since it started.\n"
       "# TYPE tutti_process_peak_resident_bytes gauge\n";
  b += "tutti_process_peak_resident_bytes " + std::to_string(mem.peak) + "\n";
  if (placement) b += placement->render_metrics();
  return b;
}

nlohmann::json ModelRegistry::health_json(bool detailed) const {
  nlohmann::json models = nlohmann::json::object();
  for (ModelSlot* s : slots()) {
    nlohmann::json j;
    auto inst = s->current();
    if (inst && !detailed) {
      j["version"] = inst->version;
      nlohmann::json mods = nlohmann::json::object();
      for (const auto& e : inst->health->snapshot()) mods[modality_name(e.modality)] = e.healthy ? "healthy" : "degraded";
      j["modalities"] = mods;
      models[s->name()] = j;
      continue;
    }
    if (inst) {
      j["file"] = inst->file;
      j["version"] = inst->version;
      j["generations"] = inst->generations.load();
      nlohmann::json mods = nlohmann::json::object();
      for (const auto& e : inst->health->snapshot()) {
        nlohmann::json mj = {{"state", e.healthy ? "healthy" : "degraded"}, {"checks", e.checks}, {"failures", e.failures},
                             {"passes_in_a_row", e.streak}, {"last_canary_seconds", e.last_seconds}};
        if (!e.reason.empty()) mj["last_failure"] = e.reason;
        nlohmann::json measures = nlohmann::json::object();
        for (auto& [k, v] : e.measures) measures[k] = v;
        mj["measures"] = measures;
        mods[modality_name(e.modality)] = mj;
      }
      j["modalities"] = mods;
    } else {
      j["state"] = "not loaded";
    }
    nlohmann::json fb = nlohmann::json::object();
    for (auto& [m, target] : s->fallback()) fb[modality_name(m)] = target;
    j["fallback"] = fb;
    {
      std::lock_guard l(s->mu);
      const ReloadReport& r = s->last_reload;
      if (r.requested_at > 0) {
        nlohmann::json rj = {{"ok", r.ok}, {"file", r.file}, {"requested_at", r.requested_at}, {"load_seconds", r.load_seconds},
                             {"rss_before_bytes", r.rss_before}, {"peak_rss_bytes", r.peak_rss}};
        if (!r.ok) rj["reason"] = r.reason;
        if (inst && r.ok && inst->version == r.version) {
          const double first = inst->first_generation_at.load();
          if (first > 0) rj["first_request_after_s"] = first - r.requested_at;
        }
        j["last_reload"] = rj;
      }
    }
    models[s->name()] = j;
  }
  return models;
}

Expected<std::shared_ptr<ModelRegistry>> load_models(caf::actor_system& system, const Settings& st,
                                                     const actors::PipelineConfig& pipeline) {
  std::vector<ModelEntry> entries = st.served_models();
  if (Status s = validate_models(st.models); !s) return s.error();
  // Threads, decided once per entry (a reload keeps them): the default model gets [model]
  // threads (0: every core); the others, which answer only what is asked of them by name or
  // what falls back to them, half the cores unless their entry says. Idle pools sleep, so
  // the split matters only while both compute.
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  for (size_t i = 0; i < entries.size(); ++i)
    if (entries[i].threads <= 0) entries[i].threads = i == 0 ? st.threads : std::max(1, cores / 2);
  auto options_for = [st, pipeline](const ModelEntry& e) { return load_options_for(st, pipeline, e); };
  std::vector<std::unique_ptr<ModelSlot>> slots;
  for (const ModelEntry& e : entries) {
    auto slot = std::make_unique<ModelSlot>(e);
    auto inst = load_model_instance(system, options_for(e), slot->baselines);
    if (!inst) return inst.error();
    slot->replace(*inst);
    slots.push_back(std::move(slot));
  }
  for (auto& s : slots)
    for (auto& [m, target] : s->fallback()) {
      ModelSlot* t = nullptr;
      for (auto& o : slots)
        if (o->name() == target) t = o.get();
      if (auto why = cannot_stand_in(s->current()->facts, t->current()->facts, m))
        return Error{"model " + target + " cannot be the " + modality_name(m) + " fallback of " + s->name() + ": " + *why};
    }
  auto reg = std::make_shared<ModelRegistry>(std::move(slots), st.model_aliases);
  reg->system = &system;
  reg->load_options = options_for;
  return reg;
}

}  // namespace tutti::http
