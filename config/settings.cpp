#include "config/settings.h"

#include <toml++/toml.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

namespace tutti {

namespace {

// One setting: where it lives, and how to read it into Settings.
using Reader = std::function<std::optional<std::string>(const toml::node&, Settings&)>;

Reader integer(int Settings::*field, int64_t lo, int64_t hi) {
  return [=](const toml::node& n, Settings& s) -> std::optional<std::string> {
    auto v = n.value<int64_t>();
    if (!n.is_integer() || !v) return "must be an integer";
    if (*v < lo || *v > hi) return "must be between " + std::to_string(lo) + " and " + std::to_string(hi);
    s.*field = int(*v);
    return std::nullopt;
  };
}
Reader integer64(int64_t Settings::*field, int64_t lo, int64_t hi) {
  return [=](const toml::node& n, Settings& s) -> std::optional<std::string> {
    auto v = n.value<int64_t>();
    if (!n.is_integer() || !v) return "must be an integer";
    if (*v < lo || *v > hi) return "must be between " + std::to_string(lo) + " and " + std::to_string(hi);
    s.*field = *v;
    return std::nullopt;
  };
}
Reader real(double Settings::*field, double lo, double hi) {
  return [=](const toml::node& n, Settings& s) -> std::optional<std::string> {
    auto v = n.value<double>();
    if (!(n.is_number()) || !v) return "must be a number";
    if (!(*v >= lo && *v <= hi)) return "must be between " + std::to_string(lo) + " and " + std::to_string(hi);
    s.*field = *v;
    return std::nullopt;
  };
}
Reader boolean(bool Settings::*field) {
  return [=](const toml::node& n, Settings& s) -> std::optional<std::string> {
    if (!n.is_boolean()) return "must be true or false";
    s.*field = *n.value<bool>();
    return std::nullopt;
  };
}
Reader text_list(std::vector<std::string> Settings::*field) {
  return [=](const toml::node& n, Settings& s) -> std::optional<std::string> {
    const toml::array* a = n.as_array();
    if (!a) return "must be an array of strings";
    std::vector<std::string> out;
    for (const toml::node& e : *a) {
      if (!e.is_string()) return "must be an array of strings";
      out.push_back(*e.value<std::string>());
    }
    s.*field = std::move(out);
    return std::nullopt;
  };
}
Reader text(std::string Settings::*field, std::vector<std::string> allowed = {}) {
  return [=](const toml::node& n, Settings& s) -> std::optional<std::string> {
    if (!n.is_string()) return "must be a string";
    const std::string v = *n.value<std::string>();
    if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
      std::string list;
      for (auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      return "must be one of " + list;
    }
    s.*field = v;
    return std::nullopt;
  };
}

Reader health_real(double HealthSettings::*field, double lo, double hi) {
  return [=](const toml::node& n, Settings& s) -> std::optional<std::string> {
    auto v = n.value<double>();
    if (!n.is_number() || !v) return "must be a number";
    if (!(*v >= lo && *v <= hi)) return "must be between " + std::to_string(lo) + " and " + std::to_string(hi);
    s.health.*field = *v;
    return std::nullopt;
  };
}

const char* const kModalityNames[] = {"text", "audio", "image", "video", "music"};

// One [[models]] table; problems name the setting as models[i].key.
std::optional<std::string> read_model_entry(const toml::table& t, ModelEntry& m, const std::string& at) {
  for (const auto& [key_node, value] : t) {
    const std::string key(key_node.str());
    const std::string where = at + "." + key;
    auto line = [&](const toml::node& n) { return std::to_string(n.source().begin.line) + ": "; };
    if (key == "name" || key == "file" || key == "device") {
      if (!value.is_string()) return line(value) + where + " must be a string";
      std::string v = *value.value<std::string>();
      if (key == "device" && v != "cpu" && v != "cuda") return line(value) + where + " must be one of cpu, cuda";
      (key == "name" ? m.name : key == "file" ? m.file : m.device) = v;
    } else if (key == "threads" || key == "kv_cache_mb") {
      auto v = value.value<int64_t>();
      const int64_t hi = key == "threads" ? 1024 : (1 << 22);
      if (!value.is_integer() || !v || *v < 0 || *v > hi) return line(value) + where + " must be an integer between 0 and " + std::to_string(hi);
      (key == "threads" ? m.threads : m.kv_cache_mb) = int(*v);
    } else if (key == "fallback") {
      const toml::table* f = value.as_table();
      if (!f) return line(value) + where + " must be a table of modality = \"model\"";
      for (const auto& [mod_node, target] : *f) {
        const std::string mod(mod_node.str());
        if (std::find(std::begin(kModalityNames), std::end(kModalityNames), mod) == std::end(kModalityNames))
          return line(target) + where + "." + mod + ": unknown modality (text, audio, image, video or music)";
        if (!target.is_string()) return line(target) + where + "." + mod + " must be a model name";
        m.fallback[mod] = *target.value<std::string>();
      }
    } else {
      return line(value) + "unknown setting " + where;
    }
  }
  return std::nullopt;
}

const std::map<std::string, std::map<std::string, Reader>>& schema() {
  static const std::map<std::string, std::map<std::string, Reader>> s = {
      {"model", {{"path", text(&Settings::model_path)}, {"device", text(&Settings::device, {"cpu", "cuda"})},
                 {"threads", integer(&Settings::threads, 0, 1024)},
                 {"kernels", text(&Settings::kernels, {"auto", "avx512", "avx2", "scalar"})}}},
      {"kv_cache", {{"size_mb", integer(&Settings::kv_cache_mb, 1, 1 << 22)},
                    {"type", text(&Settings::kv_cache_type, {"f16", "f32"})},
                    {"block_tokens", integer(&Settings::kv_block_tokens, 1, 1024)},
                    {"prefix_cache", boolean(&Settings::prefix_cache)}}},
      {"scheduler", {{"max_batch", integer(&Settings::max_batch, 1, 4096)},
                     {"step_token_budget", integer(&Settings::step_token_budget, 1, 1 << 20)},
                     {"prefill_chunk", integer(&Settings::prefill_chunk, 1, 1 << 20)},
                     {"max_waiting", integer(&Settings::max_waiting, 0, 1 << 20)},
                     {"max_running", integer(&Settings::max_running, 1, 1 << 20)},
                     {"pacing", boolean(&Settings::pacing)},
                     {"client_window", integer(&Settings::client_window, 0, 1 << 20)}}},
      {"realtime", {{"low_watermark_ms", real(&Settings::low_watermark_ms, 0, 60000)},
                    {"high_watermark_ms", real(&Settings::high_watermark_ms, 1, 60000)},
                    {"prefill_while_speaking_ms", integer(&Settings::prefill_while_speaking_ms, 0, 60000)},
                    {"max_conversation_tokens", integer(&Settings::max_conversation_tokens, 64, 1 << 24)}}},
      {"admission", {{"enabled", boolean(&Settings::admission)},
                     {"realtime_headroom", real(&Settings::realtime_headroom, 0, 0.95)},
                     {"realtime_overload", text(&Settings::realtime_overload, {"refuse", "queue"})},
                     {"realtime_queue_ms", real(&Settings::realtime_queue_ms, 0, 600000)},
                     {"realtime_wait_ms", real(&Settings::realtime_wait_ms, 1, 3600000)},
                     {"interactive_wait_ms", real(&Settings::interactive_wait_ms, 1, 3600000)},
                     {"batch_wait_ms", real(&Settings::batch_wait_ms, 1, 3600000)},
                     {"chat_class", text(&Settings::chat_class, {"interactive", "batch"})},
                     {"speech_class", text(&Settings::speech_class, {"interactive", "batch"})},
                     {"music_class", text(&Settings::music_class, {"interactive", "batch"})},
                     {"image_class", text(&Settings::image_class, {"interactive", "batch"})},
                     {"video_class", text(&Settings::video_class, {"interactive", "batch"})}}},
      {"server", {{"host", text(&Settings::host)}, {"port", integer(&Settings::port, 0, 65535)},
                  {"tls_cert", text(&Settings::tls_cert)}, {"tls_key", text(&Settings::tls_key)},
                  {"tls_port", integer(&Settings::tls_port, 0, 65535)}, {"model_aliases", text_list(&Settings::model_aliases)},
                  {"max_body_bytes", integer64(&Settings::max_body_bytes, 1024, int64_t(1) << 32)},
                  {"max_upload_bytes", integer64(&Settings::max_upload_bytes, 1024, int64_t(1) << 32)},
                  {"max_connections", integer(&Settings::max_connections, 1, 1 << 20)},
                  {"reserved_connections", integer(&Settings::reserved_connections, 0, 1 << 20)},
                  {"max_connections_per_peer", integer(&Settings::max_connections_per_peer, 0, 1 << 20)},
                  {"head_timeout_s", real(&Settings::head_timeout_s, 0.1, 3600)},
                  {"max_session_bytes", integer64(&Settings::max_session_bytes, 4096, int64_t(1) << 36)},
                  {"max_pending_bytes", integer64(&Settings::max_pending_bytes, 4096, int64_t(1) << 36)},
                  {"max_tokens", integer(&Settings::max_tokens, 1, 1 << 20)},
                  {"read_timeout_s", real(&Settings::read_timeout_s, 0.1, 86400)},
                  {"write_timeout_s", real(&Settings::write_timeout_s, 0.1, 86400)},
                  {"send_buffer_bytes", integer(&Settings::send_buffer_bytes, 0, 1 << 30)}}},
      {"threads", {{"caf_workers", integer(&Settings::caf_workers, 1, 256)}}},
      {"access", {{"api_keys", text_list(&Settings::api_keys)}, {"api_key_file", text(&Settings::api_key_file)},
                  {"admin_keys", text_list(&Settings::admin_keys)},
                  {"requests_per_minute", integer(&Settings::requests_per_minute, 0, 1 << 30)},
                  {"concurrent_sessions", integer(&Settings::concurrent_sessions, 0, 1 << 20)},
                  {"tokens_per_minute", integer64(&Settings::tokens_per_minute, 0, int64_t(1) << 50)},
                  {"jobs_per_key", integer(&Settings::jobs_per_key, 0, 1 << 20)}}},
      {"streams", {{"allowed_hosts", text_list(&Settings::stream_allowed_hosts)},
                   {"idle_timeout_s", real(&Settings::stream_idle_timeout_s, 1, 86400)},
                   {"turn_idle_ms", real(&Settings::stream_turn_idle_ms, 100, 60000)},
                   {"max_turn_s", real(&Settings::stream_max_turn_s, 1, 600)}}},
      {"ledger", {{"path", text(&Settings::ledger_path)}, {"synchronous", text(&Settings::ledger_synchronous, {"normal", "full"})}}},
      {"shutdown", {{"drain_seconds", real(&Settings::drain_seconds, 0, 3600)}}},
      {"cluster", {{"heartbeat", real(&Settings::cluster_heartbeat_s, 0.1, 3600)}, {"host", text(&Settings::cluster_host)},
                   {"port", integer(&Settings::cluster_port, 0, 65535)}, {"secret_file", text(&Settings::cluster_secret_file)},
                   {"join", text(&Settings::cluster_join)}, {"name", text(&Settings::cluster_node_name)},
                   {"tls_cert", text(&Settings::cluster_tls_cert)}, {"tls_key", text(&Settings::cluster_tls_key)},
                   {"tls_ca", text(&Settings::cluster_tls_ca)}, {"prefix_bytes", integer(&Settings::cluster_prefix_bytes, 16, 1 << 20)},
                   {"max_imbalance", real(&Settings::cluster_max_imbalance, 1, 1000)}}},
      {"health", {{"canary_interval_s", health_real(&HealthSettings::canary_interval_s, 0, 86400)},
                  {"pass_streak", [](const toml::node& n, Settings& s) -> std::optional<std::string> {
                     auto v = n.value<int64_t>();
                     if (!n.is_integer() || !v || *v < 1 || *v > 1000) return "must be an integer between 1 and 1000";
                     s.health.pass_streak = int(*v);
                     return std::nullopt;
                   }},
                  {"text_perplexity_ratio", health_real(&HealthSettings::text_perplexity_ratio, 1, 1e6)},
                  {"decode_tolerance", health_real(&HealthSettings::decode_tolerance, 0, 1)},
                  {"min_rms", health_real(&HealthSettings::min_rms, 0, 1)},
                  {"max_clip_fraction", health_real(&HealthSettings::max_clip_fraction, 0, 1)},
                  {"min_code_entropy_bits", health_real(&HealthSettings::min_code_entropy_bits, 0, 32)},
                  {"max_top_code_share", health_real(&HealthSettings::max_top_code_share, 0, 1)},
                  {"min_frame_stddev", health_real(&HealthSettings::min_frame_stddev, 0, 255)}}},
  };
  return s;
}

}  // namespace

Expected<Settings> parse_settings(const std::string& text_in, const std::string& name) {
  toml::table root;
  try {
    root = toml::parse(text_in, name);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return Error{name + ":" + std::to_string(where.line) + ": " + std::string(e.description())};
  }
  Settings s;
  for (const auto& [section_key, section_node] : root) {
    const std::string section(section_key.str());
    if (section == "models") {
      const toml::array* list = section_node.as_array();
      if (!list || !list->is_array_of_tables()) return Error{name + ": 'models' must be a list of [[models]] tables"};
      for (size_t i = 0; i < list->size(); ++i) {
        ModelEntry m;
        if (auto problem = read_model_entry(*list->get(i)->as_table(), m, "models[" + std::to_string(i) + "]"))
          return Error{name + ":" + *problem};
        s.models.push_back(std::move(m));
      }
      if (Status ok = validate_models(s.models); !ok) return Error{name + ": " + ok.message()};
      continue;
    }
    auto sec = schema().find(section);
    if (sec == schema().end()) return Error{name + ": unknown section [" + section + "]"};
    const toml::table* table = section_node.as_table();
    if (!table) return Error{name + ": '" + section + "' must be a section ([" + section + "])"};
    for (const auto& [key_node, value] : *table) {
      const std::string key(key_node.str());
      auto it = sec->second.find(key);
      if (it == sec->second.end()) return Error{name + ": unknown setting " + section + "." + key};
      if (auto problem = it->second(value, s))
        return Error{name + ":" + std::to_string(value.source().begin.line) + ": " + section + "." + key + " " + *problem};
    }
  }
  if (s.low_watermark_ms >= s.high_watermark_ms)
    return Error{name + ": realtime.low_watermark_ms must be below realtime.high_watermark_ms"};
  if (s.step_token_budget < s.max_batch)
    return Error{name + ": scheduler.step_token_budget must be at least scheduler.max_batch"};
  return s;
}

Status validate_models(const std::vector<ModelEntry>& models) {
  std::map<std::string, const ModelEntry*> by_name;
  for (size_t i = 0; i < models.size(); ++i) {
    const ModelEntry& m = models[i];
    const std::string at = "models[" + std::to_string(i) + "]";
    if (m.name.empty()) return Error{at + ".name is required"};
    if (m.file.empty()) return Error{at + ".file is required (model " + m.name + ")"};
    if (!by_name.emplace(m.name, &m).second) return Error{at + ".name: model " + m.name + " is listed twice"};
  }
  for (const ModelEntry& m : models)
    for (const auto& [modality, target] : m.fallback) {
      if (target == m.name) return Error{"model " + m.name + ": fallback." + modality + " names the model itself"};
      if (!by_name.count(target)) return Error{"model " + m.name + ": fallback." + modality + " names unknown model " + target};
      // Follow the chain for this modality: it must end at a model without a fallback for it.
      std::vector<std::string> chain = {m.name};
      std::string at = target;
      while (true) {
        if (std::find(chain.begin(), chain.end(), at) != chain.end()) {
          std::string path;
          for (const std::string& c : chain) path += c + " -> ";
          return Error{"fallback." + modality + " makes a cycle: " + path + at};
        }
        chain.push_back(at);
        const ModelEntry& next = *by_name.at(at);
        auto it = next.fallback.find(modality);
        if (it == next.fallback.end()) break;
        at = it->second;
      }
    }
  return Status::Ok();
}

std::vector<ModelEntry> Settings::served_models() const {
  if (!models.empty()) return models;
  ModelEntry one;
  one.file = model_path;  // name "": the file's own (general.name), as a single model always was
  return {one};
}

Expected<Settings> load_settings(const std::string& path) {
  std::ifstream f(path);
  if (!f) return Error{path + ": cannot open"};
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_settings(ss.str(), path);
}

}  // namespace tutti
