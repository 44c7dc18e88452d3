// Who may use the server, and how much: API keys (bearer tokens) and per-key limits. Plain
// classes with the clock passed in, so tests drive them without sockets; the HTTP and
// WebSocket sessions ask them before any work starts (actors/http/generation.cpp admits every
// generation through them; the HTTP session authenticates).
//
// Keys come from the settings (`[access] api_keys`), a key file (`[access] api_key_file`:
// one key per line, optionally "name key"; # comments) and `tutti serve --api-key KEY`.
// When none is configured the server is open. A key is compared with every configured key
// in constant time (no early exit on the first differing byte or key), and is never logged
// or reported: records and metrics name it by its name from the key file, or by a
// fingerprint ("key-" and 8 hex digits of a hash) that does not reveal it.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pipeline/expected.h"

namespace tutti::access {

struct KeyLimits {
  int requests_per_minute = 0;      // 0: no limit
  int concurrent_sessions = 0;      // generations and WebSocket sessions at once
  int64_t tokens_per_minute = 0;    // per modality (text, audio, image, video, music) in and out
  int jobs_per_key = 0;             // video and stream jobs running at once; 0: no limit
};

class ApiKeys {
 public:
  // Adds a key under `name` (empty: its fingerprint). Keys shorter than 8 characters are
  // refused (they would be guessable). An admin key may see and stop every key's jobs.
  Status add(const std::string& key, const std::string& name = "", bool admin = false);
  // Reads a key file: one key per line, or "name key"; blank lines and # comments skipped.
  Status add_file(const std::string& path);
  bool enabled() const { return !keys_.empty(); }
  size_t size() const { return keys_.size(); }
  // The name of the key that `presented` is, compared in constant time against all keys;
  // nullopt if none matches.
  // `admin`, when given, says whether the matching key is an admin key.
  std::optional<std::string> match(const std::string& presented, bool* admin = nullptr) const;
  // The key from "Authorization: Bearer KEY" (empty if absent or malformed).
  static std::string bearer(const std::string& authorization_header);
  // The key from a WebSocket subprotocol list ("realtime, openai-insecure-api-key.KEY"): how
  // browsers, which cannot set headers on a WebSocket, present one.
  static std::string from_subprotocols(const std::string& sec_websocket_protocol);
  static std::string fingerprint(const std::string& key);

 private:
  struct Entry {
    std::string key, name;
    bool admin = false;
  };
  std::vector<Entry> keys_;
};

// Why a request may not start now, and when to try again.
struct Refusal {
  ErrorCode code = ErrorCode::rate_limited;  // rate_limited | too_many_sessions | token_quota_exceeded
  std::string message;  // names the limit, never the key
  double retry_after_s = 1;
};

// Per-key limits over a sliding minute. Not thread-safe: used on the I/O thread.
class KeyLimiter {
 public:
  explicit KeyLimiter(KeyLimits limits = {}) : limits_(limits) {}
  const KeyLimits& limits() const { return limits_; }
  // A request (or a WebSocket response) of `key` that will produce `modality` wants to start
  // at `now` (seconds). On success it counts against requests per minute and, if
  // holds_session, holds one session until end_session.
  std::optional<Refusal> begin(const std::string& key, double now, const std::string& modality, bool holds_session = true);
  void end_session(const std::string& key);
  // Tokens used by `key` in `modality` ("text", "audio", ...), input and output together.
  void add_tokens(const std::string& key, const std::string& modality, int64_t tokens, double now);
  // The quota held for running answers: a generation reserves what it may produce when it
  // starts (no more than is left), is charged as it produces, and gives back the rest at its
  // end; a key whose quota is used or reserved starts nothing more. reserve() returns what it
  // got (all of `wanted` without a quota).
  int64_t tokens_left(const std::string& key, const std::string& modality, double now);
  int64_t reserve(const std::string& key, const std::string& modality, int64_t wanted, double now);
  void unreserve(const std::string& key, const std::string& modality, int64_t n);
  // Requests `key` may still start in the sliding minute, and the seconds until the oldest
  // one leaves it (INT64_MAX and 0 without a limit).
  int64_t requests_left(const std::string& key, double now, double* reset_s = nullptr);

 private:
  struct PerKey {
    std::deque<double> requests;                                     // start times in the last minute
    int sessions = 0;
    std::map<std::string, std::deque<std::pair<double, int64_t>>> tokens;  // per modality: (time, tokens)
    std::map<std::string, int64_t> reserved;  // per modality: held for running answers
  };
  static void expire(std::deque<double>& d, double now);
  KeyLimits limits_;
  std::map<std::string, PerKey> keys_;
};

}  // namespace tutti::access
