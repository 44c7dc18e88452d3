#include "tools/tutti/args.h"

namespace tutti::cli {

Args::Args(const std::vector<std::string>& argv, std::set<std::string> options, std::set<std::string> switches) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.size() > 2 && a.compare(0, 2, "--") == 0) {
      std::string name = a.substr(2), value;
      const size_t eq = name.find('=');
      const bool inline_value = eq != std::string::npos;
      if (inline_value) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      if (switches.count(name) && !inline_value) {
        set_.insert(name);
      } else if (options.count(name)) {
        if (!inline_value) {
          if (i + 1 >= argv.size()) {
            error_ = "option --" + name + " needs a value";
            return;
          }
          value = argv[++i];
        }
        values_[name] = value;
      } else {
        // Name what this command does take, so a typo is one look away from its fix.
        std::string known;
        for (const auto* set : {&options, &switches})
          for (const std::string& o : *set) known += (known.empty() ? "--" : ", --") + o;
        error_ = "unknown option --" + name + (known.empty() ? "; this command takes no options" : "; this command takes " + known) +
                 " (see --help)";
        return;
      }
    } else {
      positional_.push_back(a);
    }
  }
}

std::string Args::get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

long long Args::get_int(const std::string& name, long long fallback) {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  try {
    size_t used = 0;
    const long long v = std::stoll(it->second, &used);
    if (used == it->second.size()) return v;
  } catch (...) {
  }
  if (error_.empty()) error_ = "--" + name + " expects an integer, got '" + it->second + "'";
  return fallback;
}

double Args::get_double(const std::string& name, double fallback) {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  try {
    size_t used = 0;
    const double v = std::stod(it->second, &used);
    if (used == it->second.size()) return v;
  } catch (...) {
  }
  if (error_.empty()) error_ = "--" + name + " expects a number, got '" + it->second + "'";
  return fallback;
}

bool Args::require(const std::string& name) {
  if (values_.count(name)) return true;
  if (error_.empty()) error_ = "missing required option --" + name;
  return false;
}

std::vector<std::string> split_list(const std::string& list) {
  std::vector<std::string> out;
  size_t p = 0;
  while (p <= list.size()) {
    const size_t q = std::min(list.find(',', p), list.size());
    if (q > p) out.push_back(list.substr(p, q - p));
    p = q + 1;
  }
  return out;
}

std::optional<HostPort> parse_host_port(const std::string& s, std::optional<uint16_t> default_port) {
  HostPort hp;
  std::optional<std::string> port;  // the text after the host's colon, when there is one
  if (!s.empty() && s.front() == '[') {
    const size_t close = s.find(']');
    if (close == std::string::npos) return std::nullopt;
    hp.host = s.substr(1, close - 1);
    if (close + 1 < s.size()) {
      if (s[close + 1] != ':') return std::nullopt;
      port = s.substr(close + 2);
    }
  } else if (const size_t colon = s.rfind(':'); colon != std::string::npos) {
    hp.host = s.substr(0, colon);
    port = s.substr(colon + 1);
  } else {
    hp.host = s;
  }
  if (hp.host.empty()) return std::nullopt;
  if (!port) {
    if (!default_port) return std::nullopt;
    hp.port = *default_port;
    return hp;
  }
  if (port->empty() || port->size() > 5 || port->find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  const int n = std::stoi(*port);
  if (n <= 0 || n > 65535) return std::nullopt;
  hp.port = uint16_t(n);
  return hp;
}

}  // namespace tutti::cli
