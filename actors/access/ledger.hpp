// The usage ledger: one record per finished or failed request, in an embedded SQLite
// database in WAL mode. Billing runs on it, so a record is committed before the request's
// last bytes are sent (a client that has its whole answer is in the ledger), each request
// id is recorded at most once (a second record for it is ignored), and a crash or kill -9
// of the server loses nothing that was committed. With `synchronous = normal` (the default)
// a commit is a write into the WAL that the OS keeps across the process dying; `full` also
// survives power loss at the cost of an fsync per record.
//
// Plain class, no sockets or actors. Not thread-safe: the server uses it from its I/O
// thread (stream jobs and video jobs post there too).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pipeline/expected.h"

struct sqlite3;
struct sqlite3_stmt;

namespace tutti::access {

// Modalities tokens are counted in, in and out.
inline const char* const kLedgerModalities[] = {"text", "audio", "image", "video", "music"};

struct UsageRecord {
  std::string request_id;  // unique per request (a realtime response has its own)
  std::string key;         // the key's name or fingerprint ("" when the server is open)
  std::string model, endpoint, request_class;  // model: the one that answered
  bool fallback = false;  // it answered in place of the model asked for (an unhealthy modality)
  std::string node;       // the executor node it ran on (a cluster ingress's); "": this process
  std::map<std::string, int64_t> tokens_in, tokens_out;  // by modality
  double started_at = 0, finished_at = 0;                // unix seconds
  double first_output_s = -1;                            // to the first token or byte; -1: none
  std::string outcome;  // completed | incomplete | cancelled | failed | refused
  std::string error;    // for failed / refused
};

struct UsageTotals {
  std::string key, period;  // period: the day (YYYY-MM-DD, UTC) or "all"
  int64_t requests = 0, failed = 0;
  std::map<std::string, int64_t> tokens_in, tokens_out;
};

class UsageLedger {
 public:
  // Opens (creating) the database at `path`; synchronous is "normal" or "full".
  static Expected<std::unique_ptr<UsageLedger>> open(const std::string& path, const std::string& synchronous = "normal");
  ~UsageLedger();
  UsageLedger(const UsageLedger&) = delete;
  UsageLedger& operator=(const UsageLedger&) = delete;

  // Commits one record. A request id already recorded is left as it is (Ok, false).
  Expected<bool> record(const UsageRecord& r);
  // Totals per key and period ("day" or "all"), records finished in [since, until) unix s.
  Expected<std::vector<UsageTotals>> totals(const std::string& period, double since = 0, double until = 1e18) const;
  Expected<int64_t> count() const;
  // Moves the WAL into the database file (on shutdown: the file is then whole on its own).
  Status checkpoint();

 private:
  explicit UsageLedger(sqlite3* db) : db_(db) {}
  sqlite3* db_;
  sqlite3_stmt* insert_ = nullptr;
};

}  // namespace tutti::access
