// Minimal command-line parsing for the tutti subcommands: `--name value` options, `--flag`
// switches and positional arguments. Unknown or malformed options are errors that name
// the option, so a typo never runs with a silent default.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace tutti::cli {

// "a,b,,c" -> {"a", "b", "c"}: a comma-separated option value (empty items dropped).
std::vector<std::string> split_list(const std::string& list);

// HOST:PORT, the host a name, an IPv4 address or a bracketed IPv6 address ([::1]:7070).
// Without a port: `default_port` where one is given, else nullopt, as for anything malformed.
struct HostPort {
  std::string host;
  uint16_t port = 0;
};
std::optional<HostPort> parse_host_port(const std::string& s, std::optional<uint16_t> default_port = std::nullopt);

class Args {
 public:
  // `options` take a value, `switches` do not.
  Args(const std::vector<std::string>& argv, std::set<std::string> options, std::set<std::string> switches);

  const std::string& error() const { return error_; }
  bool ok() const { return error_.empty(); }
  const std::vector<std::string>& positional() const { return positional_; }

  bool has(const std::string& name) const { return values_.count(name) || set_.count(name); }
  std::string get(const std::string& name, const std::string& fallback = "") const;
  // Numeric getters record an error (see error()) when the value does not parse.
  long long get_int(const std::string& name, long long fallback);
  double get_double(const std::string& name, double fallback);
  bool require(const std::string& name);  // records an error if missing

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> set_;
  std::vector<std::string> positional_;
  std::string error_;
};

}  // namespace tutti::cli
