#include "tools/loadtest/scenario.h"

#include <toml++/toml.h>

#include <fstream>
#include <sstream>

namespace tutti::loadtest {

double Scenario::total_seconds() const {
  double t = 0;
  for (const Stage& s : stages) t += s.duration_s;
  return t;
}

Status set_target(Scenario& s, const std::string& target) {
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos || colon + 1 == target.size()) return Error{"target must be HOST:PORT, got '" + target + "'"};
  std::string host = target.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  try {
    port = std::stoi(target.substr(colon + 1));
  } catch (...) {
  }
  if (port < 1 || port > 65535) return Error{"target port must be 1..65535"};
  const bool loopback = host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
  if (!loopback)
    return Error{"target '" + host + "' is not a loopback address: the load test only measures servers on this machine"};
  s.host = host == "localhost" ? "127.0.0.1" : host;
  s.port = uint16_t(port);
  return Status::Ok();
}

namespace {

template <class T>
Status read(const toml::table& t, const char* key, T& out, const std::string& where) {
  const toml::node* n = t.get(key);
  if (!n) return Status::Ok();
  if constexpr (std::is_same_v<T, std::string>) {
    if (!n->is_string()) return Error{where + "." + key + " must be a string"};
    out = *n->value<std::string>();
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!n->is_number()) return Error{where + "." + key + " must be a number"};
    out = T(*n->value<double>());
    if (out < 0) return Error{where + "." + key + " must not be negative"};
  } else {
    if (!n->is_integer()) return Error{where + "." + key + " must be an integer"};
    const int64_t v = *n->value<int64_t>();
    if (v < 0) return Error{where + "." + key + " must not be negative"};
    out = T(v);
  }
  return Status::Ok();
}

Status read_distribution(const toml::table& t, const char* key, Distribution& d, const std::string& where) {
  const toml::node* n = t.get(key);
  if (!n) return Status::Ok();
  const toml::table* dt = n->as_table();
  if (!dt) return Error{where + "." + key + " must be a table {mean, sd, min, max}"};
  const std::string w = where + "." + key;
  for (auto [name, field] : {std::pair{"mean", &d.mean}, std::pair{"sd", &d.sd}, std::pair{"min", &d.min}, std::pair{"max", &d.max}})
    if (Status s = read(*dt, name, *field, w); !s) return s;
  if (d.min > d.max) return Error{w + ": min must not exceed max"};
  return Status::Ok();
}

}  // namespace

Expected<Scenario> parse_scenario(const std::string& text, const std::string& name) {
  toml::table root;
  try {
    root = toml::parse(text, name);
  } catch (const toml::parse_error& e) {
    std::ostringstream m;
    m << name << ":" << e.source().begin.line << ": " << e.description();
    return Error{m.str()};
  }
  Scenario s;
  s.name = name;
  if (const toml::table* run = root["run"].as_table()) {
    std::string target = s.host + ":" + std::to_string(s.port);
    if (Status st = read(*run, "target", target, "run"); !st) return st.error();
    if (Status st = set_target(s, target); !st) return st.error();
    for (Status st : {read(*run, "api_key", s.api_key, "run"), read(*run, "admin_key", s.admin_key, "run"), read(*run, "model", s.model, "run"),
                      read(*run, "max_requests", s.max_requests, "run"), read(*run, "drain_s", s.drain_s, "run"),
                      read(*run, "seed", s.seed, "run"), read(*run, "name", s.name, "run")})
      if (!st) return st.error();
  }
  if (const toml::array* stages = root["stage"].as_array()) {
    for (size_t i = 0; i < stages->size(); ++i) {
      const toml::table* t = (*stages)[i].as_table();
      const std::string where = "stage[" + std::to_string(i) + "]";
      if (!t) return Error{where + " must be a table"};
      Stage st;
      for (Status r : {read(*t, "duration_s", st.duration_s, where), read(*t, "voice_sessions", st.voice_sessions, where),
                       read(*t, "text_rate", st.text_rate, where), read(*t, "speech_rate", st.speech_rate, where),
                       read(*t, "image_rate", st.image_rate, where), read(*t, "stream_jobs", st.stream_jobs, where),
                       read(*t, "music_rate", st.music_rate, where), read(*t, "video_rate", st.video_rate, where),
                       read(*t, "reload", st.reload, where), read(*t, "reload_file", st.reload_file, where)})
        if (!r) return r.error();
      if (st.duration_s <= 0) return Error{where + ".duration_s must be positive"};
      s.stages.push_back(st);
    }
  }
  if (s.stages.empty()) return Error{name + ": no [[stage]]: a run needs at least one"};
  if (const toml::table* t = root["text"].as_table()) {
    if (Status r = read_distribution(*t, "prompt_words", s.prompt_words, "text"); !r) return r.error();
    if (Status r = read_distribution(*t, "max_tokens", s.max_tokens, "text"); !r) return r.error();
  }
  if (const toml::table* t = root["voice"].as_table())
    for (Status r : {read(*t, "wav", s.voice_wav, "voice"), read(*t, "barge_in", s.barge_in, "voice"),
                     read(*t, "answer_tokens", s.answer_tokens, "voice")})
      if (!r) return r.error();
  if (s.barge_in > 1) return Error{"voice.barge_in is a fraction (0..1)"};
  if (const toml::table* t = root["speech"].as_table())
    for (Status r : {read(*t, "input", s.speech_input, "speech"), read(*t, "response_format", s.speech_format, "speech")})
      if (!r) return r.error();
  if (const toml::table* t = root["image"].as_table())
    for (Status r : {read(*t, "prompt", s.image_prompt, "image"), read(*t, "size", s.image_size, "image")})
      if (!r) return r.error();
  if (const toml::table* t = root["music"].as_table())
    for (Status r : {read(*t, "prompt", s.music_prompt, "music"), read(*t, "duration_s", s.music_seconds, "music"),
                     read(*t, "response_format", s.music_format, "music")})
      if (!r) return r.error();
  if (const toml::table* t = root["video"].as_table())
    for (Status r : {read(*t, "prompt", s.video_prompt, "video"), read(*t, "seconds", s.video_seconds, "video"),
                     read(*t, "size", s.video_size, "video")})
      if (!r) return r.error();
  if (const toml::table* t = root["stream"].as_table())
    if (Status r = read(*t, "max_response_seconds", s.stream_response_seconds, "stream"); !r) return r.error();
  for (const auto& [key, value] : root)
    if (key != "run" && key != "stage" && key != "text" && key != "voice" && key != "speech" && key != "image" && key != "music" &&
        key != "video" && key != "stream")
      return Error{name + ": unknown section [" + std::string(key.str()) + "]"};
  return s;
}

Expected<Scenario> load_scenario(const std::string& path) {
  std::ifstream f(path);
  if (!f) return Error{"cannot read scenario " + path};
  std::stringstream b;
  b << f.rdbuf();
  return parse_scenario(b.str(), path);
}

}  // namespace tutti::loadtest
