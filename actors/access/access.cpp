#include "actors/access/access.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace tutti::access {

namespace {

// Equal in time that depends only on the lengths: every byte of the longer string is looked
// at, whatever differs first.
bool constant_time_equal(const std::string& a, const std::string& b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= unsigned(x ^ y);
  }
  return diff == 0;
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r\n") - a + 1);
}

constexpr double kMinute = 60.0;

}  // namespace

std::string ApiKeys::fingerprint(const std::string& key) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a, then a finaliser: 32 bits shown of 64
  for (unsigned char c : key) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", unsigned(h & 0xffffffffu));
  return std::string("key-") + buf;
}

Status ApiKeys::add(const std::string& key, const std::string& name, bool admin) {
  if (key.size() < 8) return Error{"an API key must have at least 8 characters"};
  for (char c : key)
    if (c <= ' ' || c == 0x7f) return Error{"an API key must not contain spaces or control characters"};
  keys_.push_back({key, name.empty() ? fingerprint(key) : name, admin});
  return Status::Ok();
}

Status ApiKeys::add_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) return Error{"cannot read the API key file " + path};
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    ++n;
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    std::istringstream words(line);
    std::string a, b, extra;
    words >> a >> b >> extra;
    if (!extra.empty()) return Error{path + ":" + std::to_string(n) + ": expected KEY or NAME KEY"};
    if (Status s = b.empty() ? add(a) : add(b, a); !s) return Error{path + ":" + std::to_string(n) + ": " + s.message()};
  }
  return Status::Ok();
}

std::optional<std::string> ApiKeys::match(const std::string& presented, bool* admin) const {
  std::optional<std::string> found;
  for (const Entry& e : keys_)  // no early exit: the time does not say which key matched
    if (constant_time_equal(presented, e.key) && !found) {
      found = e.name;
      if (admin) *admin = e.admin;
    }
  return found;
}

std::string ApiKeys::bearer(const std::string& header) {
  const std::string h = trim(header);
  if (h.size() < 7) return "";
  std::string scheme = h.substr(0, 7);
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (scheme != "bearer ") return "";
  return trim(h.substr(7));
}

std::string ApiKeys::from_subprotocols(const std::string& list) {
  const std::string prefix = "openai-insecure-api-key.";
  std::istringstream in(list);
  std::string item;
  while (std::getline(in, item, ',')) {
    item = trim(item);
    if (item.rfind(prefix, 0) == 0) return item.substr(prefix.size());
  }
  return "";
}

void KeyLimiter::expire(std::deque<double>& d, double now) {
  while (!d.empty() && d.front() <= now - kMinute) d.pop_front();
}

std::optional<Refusal> KeyLimiter::begin(const std::string& key, double now, const std::string& modality, bool holds_session) {
  PerKey& k = keys_[key];
  expire(k.requests, now);
  if (limits_.requests_per_minute > 0 && int(k.requests.size()) >= limits_.requests_per_minute)
    return Refusal{ErrorCode::rate_limited, "the key's limit of " + std::to_string(limits_.requests_per_minute) + " requests per minute is reached",
                   std::max(0.1, k.requests.front() + kMinute - now)};
  if (holds_session && limits_.concurrent_sessions > 0 && k.sessions >= limits_.concurrent_sessions)
    return Refusal{ErrorCode::too_many_sessions, "the key's limit of " + std::to_string(limits_.concurrent_sessions) + " concurrent sessions is reached", 1.0};
  if (limits_.tokens_per_minute > 0 && tokens_left(key, modality, now) <= 0) {
    const auto& u = k.tokens[modality];
    return Refusal{ErrorCode::token_quota_exceeded, "the key's quota of " + std::to_string(limits_.tokens_per_minute) + " " + modality +
                                               " tokens per minute is used up",
                   u.empty() ? 1.0 : std::max(0.1, u.front().first + kMinute - now)};
  }
  k.requests.push_back(now);
  if (holds_session) ++k.sessions;
  return std::nullopt;
}

void KeyLimiter::end_session(const std::string& key) {
  auto it = keys_.find(key);
  if (it != keys_.end() && it->second.sessions > 0) --it->second.sessions;
}

int64_t KeyLimiter::tokens_left(const std::string& key, const std::string& modality, double now) {
  if (limits_.tokens_per_minute <= 0) return INT64_MAX;
  PerKey& k = keys_[key];
  auto& u = k.tokens[modality];
  while (!u.empty() && u.front().first <= now - kMinute) u.pop_front();
  int64_t used = k.reserved[modality];
  for (const auto& [at, n] : u) used += n;
  return limits_.tokens_per_minute - used;
}

int64_t KeyLimiter::requests_left(const std::string& key, double now, double* reset_s) {
  if (reset_s) *reset_s = 0;
  if (limits_.requests_per_minute <= 0) return INT64_MAX;
  PerKey& k = keys_[key];
  expire(k.requests, now);
  if (reset_s && !k.requests.empty()) *reset_s = std::max(0.0, k.requests.front() + kMinute - now);
  return std::max<int64_t>(0, limits_.requests_per_minute - int64_t(k.requests.size()));
}

int64_t KeyLimiter::reserve(const std::string& key, const std::string& modality, int64_t wanted, double now) {
  if (limits_.tokens_per_minute <= 0 || wanted <= 0) return wanted;
  const int64_t n = std::max<int64_t>(0, std::min(wanted, tokens_left(key, modality, now)));
  keys_[key].reserved[modality] += n;
  return n;
}

void KeyLimiter::unreserve(const std::string& key, const std::string& modality, int64_t n) {
  if (limits_.tokens_per_minute <= 0 || n <= 0) return;
  int64_t& r = keys_[key].reserved[modality];
  r = std::max<int64_t>(0, r - n);
}

void KeyLimiter::add_tokens(const std::string& key, const std::string& modality, int64_t tokens, double now) {
  if (tokens <= 0 || limits_.tokens_per_minute <= 0) return;  // nothing to hold against
  keys_[key].tokens[modality].push_back({now, tokens});
}

}  // namespace tutti::access
