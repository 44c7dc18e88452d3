// A real server for tests: a small unified random model, the actor pipeline and the HTTP
// server on an ephemeral loopback port. Shut down in the destructor.
#pragma once

#include <sqlite3.h>

#include "actors/serving.hpp"
#include "codecs/model_pack.h"
#include "test_support.h"

namespace tutti::test {

struct ServerUnderTest {
  std::unique_ptr<Backend> backend = make_cpu_backend({1});
  std::unique_ptr<Model> model;
  std::shared_ptr<const Tokenizer> tokenizer;
  std::unique_ptr<Serving> server;  // the same assembly as `tutti serve`
  uint16_t port = 0;

  // Admission decides on measured step times, which a loaded test machine (ctest -j,
  // sanitizers) stretches without notice: off here, so that a test about something else never
  // meets a refusal; the tests about admission turn it on (realtime_load_test.cpp).
  static actors::PipelineConfig default_pipeline() {
    actors::PipelineConfig pc;
    pc.kv_cache_bytes = 8 << 20;
    pc.scheduler.admission.enabled = false;
    return pc;
  }

  // `unified`: a model with the media modalities (the default), or a text-only Llama.
  // `model_path`: another model file instead (snac_model_path()).
  explicit ServerUnderTest(http::ServerConfig sc = {}, actors::PipelineConfig pc = default_pipeline(), bool unified = true,
                           const std::string& model_path = "") {
    RandomModelSpec spec;
    spec.dim = 64; spec.layers = 2; spec.heads = 4; spec.kv_heads = 2; spec.ffn = 96; spec.unified = unified; spec.seed = 4;
    const std::string path = !model_path.empty() ? model_path : random_model(spec, unified ? "http-unified.gguf" : "http-text.gguf");
    model = std::move(Model::load(path, *backend)).value();
    tokenizer = std::shared_ptr<const Tokenizer>(std::move(Tokenizer::from_gguf(model->file())).value());
    Serving::Options o;
    o.pipeline = pc;
    o.caf_workers = 2;
    o.server = std::move(sc);
    o.server.port = 0;
    if (o.server.model_name.empty()) o.server.model_name = "tutti-test";
    auto s = Serving::start(*model, tokenizer, std::move(o));
    EXPECT_TRUE(s) << s.error().message;
    if (s) server = std::move(s).value();
    port = server ? server->port() : 0;
  }
  ~ServerUnderTest() {
    if (server) server->stop();
  }
};

// A unified model whose audio codec is SNAC (random weights at the shared checkpoint's
// small width, tutti layout) beside the other modalities: made once per process.
inline std::string snac_model_path() {
  const std::string path = temp_path("http-snac.gguf");
  if (!std::filesystem::exists(path)) {
    RandomModelSpec spec;
    spec.dim = 64; spec.layers = 2; spec.heads = 4; spec.kv_heads = 2; spec.ffn = 96; spec.seed = 4;
    const std::string backbone = random_model(spec, "http-snac-backbone.gguf");
    codecs::SnacConfig small;
    small.encoder_dim = 16;
    small.decoder_dim = 128;
    codecs::PackOptions o;
    o.kmeans_iterations = 2;
    o.snac = std::make_shared<const codecs::SnacWeights>(codecs::random_snac_weights(small, 11));
    auto material = codecs::generated_material(default_modalities(1000), 3);
    material.erase(Modality::Audio);
    material.erase(Modality::Music);
    Status s = codecs::pack_unified_model(backbone, material, path + ".tmp", o);
    EXPECT_TRUE(s.ok()) << s.message();
    std::filesystem::rename(path + ".tmp", path);
  }
  return path;
}

// The usage ledger's rows, oldest first, read straight from its database (the server may
// still be writing it: WAL lets a reader in).
struct LedgerRow {
  std::string request_id, endpoint, outcome, error;
  nlohmann::json tokens_in, tokens_out;
  std::string model;     // the model that answered
  bool fallback = false;  // in place of the one asked for
  std::string node;       // the executor node it ran on ("" : the server's own process)
};
inline std::vector<LedgerRow> ledger_rows(const std::string& path) {
  std::vector<LedgerRow> rows;
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(db);
    return rows;
  }
  sqlite3_busy_timeout(db, 2000);
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT request_id, endpoint, outcome, COALESCE(error, ''), tokens_in, tokens_out, COALESCE(model, ''), fallback, COALESCE(node, '') FROM usage ORDER BY finished_at",
                         -1, &st, nullptr) == SQLITE_OK) {
    auto text = [&](int i) { return std::string(reinterpret_cast<const char*>(sqlite3_column_text(st, i))); };
    while (sqlite3_step(st) == SQLITE_ROW)
      rows.push_back({text(0), text(1), text(2), text(3), nlohmann::json::parse(text(4), nullptr, false), nlohmann::json::parse(text(5), nullptr, false),
                      text(6), sqlite3_column_int(st, 7) != 0, text(8)});
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return rows;
}
// Waits (up to ~5 s) until the ledger holds `n` rows; the rows then.
inline std::vector<LedgerRow> ledger_rows_when(const std::string& path, size_t n) {
  std::vector<LedgerRow> rows;
  for (int i = 0; i < 250 && (rows = ledger_rows(path)).size() < n; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return rows;
}
inline std::string fresh_ledger(const std::string& name) {
  const std::string path = std::string(TUTTI_BINARY_DIR) + "/test-data/" + name;
  std::filesystem::create_directories(std::string(TUTTI_BINARY_DIR) + "/test-data");
  for (const char* ext : {"", "-wal", "-shm"}) std::remove((path + ext).c_str());
  return path;
}

}  // namespace tutti::test
