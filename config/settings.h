// tutti's settings file (TOML, parsed with toml++): config/default.toml documents every
// setting with its default. Unknown sections or keys, wrong types and out-of-range values are
// errors that name the setting (a typo must not silently fall back to a default).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "pipeline/expected.h"

namespace tutti {

// One entry of [[models]]: a weight file served under a name, with its own engine settings
// (0 or "": the shared [model] / [kv_cache] ones) and, per modality, the model that answers
// that modality while this one's is unhealthy.
struct ModelEntry {
  std::string name;
  std::string file;
  int threads = 0;
  int kv_cache_mb = 0;
  std::string device;
  std::map<std::string, std::string> fallback;  // modality name -> model name
};

// [health]: the per-modality canaries (docs/architecture.md, "Models, health and fallback").
struct HealthSettings {
  double canary_interval_s = 60;       // 0: only at load and on demand
  int pass_streak = 3;                 // passes in a row before a degraded modality returns
  double text_perplexity_ratio = 1.5;  // canary perplexity may be at most this x its baseline
  double decode_tolerance = 0.01;      // relative: fixed codes decode to their checksum within it
  double min_rms = 1e-4;               // generated audio quieter than this is silent
  double max_clip_fraction = 0.05;     // samples at |x| >= 0.999
  double min_code_entropy_bits = 1.0;  // of the generated codes
  double max_top_code_share = 0.6;     // share of the most frequent generated code
  double min_frame_stddev = 1.0;       // decoded frames' pixel standard deviation (0..255)
};

struct Settings {
  // [[models]]: several models at once; empty: one, [model] path (see models()).
  std::vector<ModelEntry> models;
  HealthSettings health;
  // [model]
  std::string model_path = "models/default.gguf";
  std::string device = "cpu";
  int threads = 0;
  std::string kernels = "auto";
  // [kv_cache]
  int kv_cache_mb = 256;
  std::string kv_cache_type = "f16";
  int kv_block_tokens = 16;
  bool prefix_cache = true;
  // [scheduler]
  int max_batch = 32;
  int step_token_budget = 512;
  int prefill_chunk = 256;
  int max_waiting = 64;
  int max_running = 64;
  bool pacing = true;
  int client_window = 256;
  // [realtime]
  double low_watermark_ms = 200;
  int prefill_while_speaking_ms = 300;
  int max_conversation_tokens = 4096;
  double high_watermark_ms = 600;
  // [admission]
  bool admission = true;
  double realtime_headroom = 0.25;
  std::string realtime_overload = "refuse";  // refuse | queue
  double realtime_queue_ms = 2000;
  double realtime_wait_ms = 1000, interactive_wait_ms = 400, batch_wait_ms = 30000;
  // The request class of each HTTP endpoint's generations (a request may name its own).
  std::string chat_class = "interactive", speech_class = "interactive", music_class = "batch", image_class = "batch",
              video_class = "batch";
  // [server]
  std::string host = "127.0.0.1";
  int port = 8080;
  // TLS beside the plain port: a PEM certificate chain and key; "" for none (see tls.hpp).
  std::string tls_cert, tls_key;
  int tls_port = 8443;
  // Other names the served model answers to (OpenAI's), listed by /v1/models.
  std::vector<std::string> model_aliases = {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-mini", "tts-1", "tts-1-hd",
                                            "gpt-4o-mini-tts", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
                                            "gpt-4o-realtime-preview", "gpt-4o-mini-realtime-preview", "gpt-realtime", "gpt-realtime-mini",
                                            "gpt-realtime-2.1", "gpt-image-1", "dall-e-3", "sora-2"};
  int64_t max_body_bytes = 1 << 20;
  int64_t max_upload_bytes = 25 << 20;
  int max_connections = 256;
  int reserved_connections = 16;
  int max_connections_per_peer = 0;
  double head_timeout_s = 10;
  int64_t max_session_bytes = 16 << 20;
  int64_t max_pending_bytes = 8 << 20;
  int max_tokens = 1024;
  double read_timeout_s = 60;
  double write_timeout_s = 60;
  int send_buffer_bytes = 0;
  // [access]
  std::vector<std::string> api_keys;   // bearer tokens; none (and no key file): the server is open
  std::string api_key_file;            // one key per line, or "name key"
  std::vector<std::string> admin_keys;  // keys that may list and stop every key's jobs
  int requests_per_minute = 0;         // per key; 0: no limit
  int concurrent_sessions = 0;
  int64_t tokens_per_minute = 0;       // per key and modality
  int jobs_per_key = 2;                // video and stream jobs running at once, per key (0: no limit)
  // [streams]
  std::vector<std::string> stream_allowed_hosts = {"127.0.0.0/8", "::1"};
  double stream_turn_idle_ms = 800, stream_max_turn_s = 15;
  double stream_idle_timeout_s = 60;
  // [ledger]
  std::string ledger_path = "usage.db";  // "": no ledger
  std::string ledger_synchronous = "normal";
  // [threads]
  int caf_workers = 2;
  // [shutdown]
  double drain_seconds = 10;
  // [cluster] (docs/scaling.md): an ingress and executor nodes; the role is serve's --role.
  double cluster_heartbeat_s = 3;           // a dead or hung node is dropped within this (it beats every quarter of it)
  std::string cluster_host = "127.0.0.1";   // the ingress's cluster address (0.0.0.0: every interface)
  int cluster_port = 7070;                  // ... and port
  std::string cluster_secret_file;          // the shared secret every node presents (its first line)
  std::string cluster_join;                 // an executor node's ingress, HOST:PORT
  std::string cluster_node_name;            // an executor node's name ("": its hostname and HTTP port)
  std::string cluster_tls_cert, cluster_tls_key, cluster_tls_ca;  // TLS between nodes (all three, or none)
  int cluster_prefix_bytes = 256;           // the prompt bytes that decide a text request's node
  double cluster_max_imbalance = 2.0;       // affinity yields past this x the least loaded node's load

  // The models to serve: [[models]], or one entry for [model] path (its name: the file's own).
  std::vector<ModelEntry> served_models() const;
};

// The [[models]] list's own rules: names unique and non-empty, files given, fallbacks naming a
// modality and another listed model, and no chain of fallbacks for a modality that returns to
// where it started.
Status validate_models(const std::vector<ModelEntry>& models);

Expected<Settings> parse_settings(const std::string& toml_text, const std::string& source_name);
Expected<Settings> load_settings(const std::string& path);

}  // namespace tutti
