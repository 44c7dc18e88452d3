#include "actors/access/ledger.hpp"

#include <sqlite3.h>

#include <nlohmann/json.hpp>

namespace tutti::access {

namespace {

Error sql_error(sqlite3* db, const std::string& what) { return Error{"usage ledger: " + what + ": " + sqlite3_errmsg(db)}; }

Status exec(sqlite3* db, const char* sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
    std::string m = msg ? msg : "unknown error";
    sqlite3_free(msg);
    return Error{std::string("usage ledger: ") + m};
  }
  return Status::Ok();
}

// Token counts are stored as one JSON object per direction ({"text": 12, "audio": 400}):
// the modalities a model has can grow without a schema change.
std::string counts_json(const std::map<std::string, int64_t>& m) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : m)
    if (v != 0) j[k] = v;
  return j.dump();
}

void add_counts(std::map<std::string, int64_t>& into, const unsigned char* text) {
  if (!text) return;
  auto j = nlohmann::json::parse(reinterpret_cast<const char*>(text), nullptr, false);
  if (!j.is_object()) return;
  for (auto it = j.begin(); it != j.end(); ++it)
    if (it.value().is_number_integer()) into[it.key()] += it.value().get<int64_t>();
}

bool has_column(sqlite3* db, const char* table, const char* column) {
  sqlite3_stmt* q = nullptr;
  const std::string sql = std::string("PRAGMA table_info(") + table + ")";
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &q, nullptr) != SQLITE_OK) return false;
  bool found = false;
  while (sqlite3_step(q) == SQLITE_ROW)
    if (const unsigned char* name = sqlite3_column_text(q, 1); name && std::string(reinterpret_cast<const char*>(name)) == column) found = true;
  sqlite3_finalize(q);
  return found;
}

}  // namespace

Expected<std::unique_ptr<UsageLedger>> UsageLedger::open(const std::string& path, const std::string& synchronous) {
  if (synchronous != "normal" && synchronous != "full") return Error{"usage ledger: synchronous must be normal or full"};
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr) != SQLITE_OK) {
    Error e = Error{"usage ledger: cannot open " + path + ": " + (db ? sqlite3_errmsg(db) : "out of memory")};
    sqlite3_close(db);
    return e;
  }
  std::unique_ptr<UsageLedger> ledger(new UsageLedger(db));
  sqlite3_busy_timeout(db, 5000);  // `tutti usage` may read while the server writes
  const std::string pragmas = "PRAGMA journal_mode=WAL; PRAGMA synchronous=" + synchronous + ";";
  if (Status s = exec(db, pragmas.c_str()); !s) return s.error();
  if (Status s = exec(db,
                      "CREATE TABLE IF NOT EXISTS usage ("
                      " request_id TEXT PRIMARY KEY, key TEXT NOT NULL, model TEXT, endpoint TEXT, class TEXT,"
                      " tokens_in TEXT NOT NULL, tokens_out TEXT NOT NULL, started_at REAL, finished_at REAL NOT NULL,"
                      " first_output_s REAL, outcome TEXT NOT NULL, error TEXT, fallback INTEGER NOT NULL DEFAULT 0, node TEXT);"
                      "CREATE INDEX IF NOT EXISTS usage_key_time ON usage(key, finished_at);");
      !s)
    return s.error();
  // A ledger made before fallbacks existed gets the column (every old row: 0).
  if (!has_column(db, "usage", "fallback"))
    if (Status s = exec(db, "ALTER TABLE usage ADD COLUMN fallback INTEGER NOT NULL DEFAULT 0;"); !s) return s.error();
  // ... and one made before clusters the node column (old rows: null, this process).
  if (!has_column(db, "usage", "node"))
    if (Status s = exec(db, "ALTER TABLE usage ADD COLUMN node TEXT;"); !s) return s.error();
  if (sqlite3_prepare_v2(db,
                         "INSERT OR IGNORE INTO usage (request_id, key, model, endpoint, class, tokens_in, tokens_out, started_at,"
                         " finished_at, first_output_s, outcome, error, fallback, node) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         -1, &ledger->insert_, nullptr) != SQLITE_OK)
    return sql_error(db, "prepare");
  return ledger;
}

UsageLedger::~UsageLedger() {
  sqlite3_finalize(insert_);
  sqlite3_close(db_);
}

Expected<bool> UsageLedger::record(const UsageRecord& r) {
  sqlite3_reset(insert_);
  sqlite3_clear_bindings(insert_);
  const std::string in = counts_json(r.tokens_in), out = counts_json(r.tokens_out);
  int i = 1;
  for (const std::string* s : {&r.request_id, &r.key, &r.model, &r.endpoint, &r.request_class, &in, &out})
    sqlite3_bind_text(insert_, i++, s->c_str(), int(s->size()), SQLITE_TRANSIENT);
  sqlite3_bind_double(insert_, i++, r.started_at);
  sqlite3_bind_double(insert_, i++, r.finished_at);
  if (r.first_output_s >= 0) sqlite3_bind_double(insert_, i++, r.first_output_s);
  else sqlite3_bind_null(insert_, i++);
  sqlite3_bind_text(insert_, i++, r.outcome.c_str(), int(r.outcome.size()), SQLITE_TRANSIENT);
  if (r.error.empty()) sqlite3_bind_null(insert_, i++);
  else sqlite3_bind_text(insert_, i++, r.error.c_str(), int(r.error.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int(insert_, i++, r.fallback ? 1 : 0);
  if (r.node.empty()) sqlite3_bind_null(insert_, i++);
  else sqlite3_bind_text(insert_, i++, r.node.c_str(), int(r.node.size()), SQLITE_TRANSIENT);
  if (sqlite3_step(insert_) != SQLITE_DONE) return sql_error(db_, "insert");
  return sqlite3_changes(db_) == 1;
}

Expected<std::vector<UsageTotals>> UsageLedger::totals(const std::string& period, double since, double until) const {
  if (period != "day" && period != "all") return Error{"usage ledger: period must be day or all"};
  const char* sql = period == "day"
                        ? "SELECT key, strftime('%Y-%m-%d', finished_at, 'unixepoch'), outcome, tokens_in, tokens_out FROM usage"
                          " WHERE finished_at >= ? AND finished_at < ? ORDER BY key, finished_at"
                        : "SELECT key, 'all', outcome, tokens_in, tokens_out FROM usage WHERE finished_at >= ? AND finished_at < ?"
                          " ORDER BY key, finished_at";
  sqlite3_stmt* q = nullptr;
  if (sqlite3_prepare_v2(db_, sql, -1, &q, nullptr) != SQLITE_OK) return sql_error(db_, "prepare");
  std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> guard(q, sqlite3_finalize);
  sqlite3_bind_double(q, 1, since);
  sqlite3_bind_double(q, 2, until);
  std::map<std::pair<std::string, std::string>, UsageTotals> by;
  int rc;
  while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
    auto text = [&](int c) { const unsigned char* t = sqlite3_column_text(q, c); return t ? std::string(reinterpret_cast<const char*>(t)) : std::string(); };
    UsageTotals& t = by[{text(0), text(1)}];
    t.key = text(0), t.period = text(1);
    t.requests++;
    const std::string outcome = text(2);
    if (outcome == "failed" || outcome == "refused") t.failed++;
    add_counts(t.tokens_in, sqlite3_column_text(q, 3));
    add_counts(t.tokens_out, sqlite3_column_text(q, 4));
  }
  if (rc != SQLITE_DONE) return sql_error(db_, "query");
  std::vector<UsageTotals> out;
  for (auto& [k, v] : by) out.push_back(std::move(v));
  return out;
}

Expected<int64_t> UsageLedger::count() const {
  sqlite3_stmt* q = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT COUNT(*) FROM usage", -1, &q, nullptr) != SQLITE_OK) return sql_error(db_, "prepare");
  std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> guard(q, sqlite3_finalize);
  if (sqlite3_step(q) != SQLITE_ROW) return sql_error(db_, "count");
  return int64_t(sqlite3_column_int64(q, 0));
}

Status UsageLedger::checkpoint() {
  if (sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr) != SQLITE_OK)
    return sql_error(db_, "checkpoint");
  return Status::Ok();
}

}  // namespace tutti::access
