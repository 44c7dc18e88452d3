#!/usr/bin/env bash
# Soak test (make soak): `tutti serve` on the default model under steady mixed load from
# `tutti loadtest` for SECONDS (default 600), sampling the server's memory (RSS) and open file
# descriptors. Passes when, at the end: no sequence, KV block or generation is left, memory
# grew less than 15% over the second half of the run, file descriptors are back to where they
# were, and the usage ledger holds one record per HTTP request the load test made (video jobs
# once) and one per realtime and stream-job response.
# Usage: tools/soak.sh [SECONDS] [WORKDIR]
set -euo pipefail
seconds="${1:-600}"
work="${2:-build/soak}"
tutti="${TUTTI:-build/tools/tutti/tutti}"
model="${MODEL:-models/default.gguf}"
mkdir -p "$work"
rm -f "$work"/usage.db*
key="sk-soak-$(date +%s)-0123456789"
"$tutti" serve --model "$model" --port 0 --api-key "$key" --ledger "$work/usage.db" 2>"$work/serve.log" &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true' EXIT
port=""
for _ in $(seq 1 400); do
  port=$(sed -nE 's#.*on http://127\.0\.0\.1:([0-9]+).*#\1#p' "$work/serve.log" | head -1)
  [ -n "$port" ] && break
  sleep 0.05
done
[ -n "$port" ] || { echo "soak: the server did not start"; cat "$work/serve.log"; exit 1; }
cat >"$work/scenario.toml" <<TOML
[run]
name = "soak"
target = "127.0.0.1:$port"
api_key = "$key"
drain_s = 30
[[stage]]
duration_s = $seconds
voice_sessions = 2
stream_jobs = 1
text_rate = 1.0
speech_rate = 0.05
music_rate = 0.03
image_rate = 0.01
video_rate = 0.005
[voice]
barge_in = 0.25
answer_tokens = 300
TOML
sample() {  # seconds-since-start rss_kb fds
  echo "$1 $(awk '/VmRSS/ {print $2}' /proc/$pid/status) $(ls /proc/$pid/fd | wc -l)"
}
fds_before=$(ls /proc/$pid/fd | wc -l)
: >"$work/samples.txt"
(
  t=0
  while kill -0 $pid 2>/dev/null; do sample $t >>"$work/samples.txt"; sleep 10; t=$((t + 10)); done
) &
sampler=$!
"$tutti" loadtest "$work/scenario.toml" --out "$work/soak" --quiet | tee "$work/loadtest.txt"
sleep 2
curl -s -H "Authorization: Bearer $key" "http://127.0.0.1:$port/metrics" >"$work/metrics.txt"
fds_after=$(ls /proc/$pid/fd | wc -l)
sample end >>"$work/samples.txt"
kill -TERM $pid
wait $pid || { echo "soak: the server did not exit cleanly"; exit 1; }
kill $sampler 2>/dev/null || true
trap - EXIT
python3 - "$work" "$fds_before" "$fds_after" <<'PY'
import json, sqlite3, sys
work, fds_before, fds_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
metrics = {}
for line in open(f"{work}/metrics.txt"):
    if line and not line.startswith("#"):
        name, _, value = line.rpartition(" ")
        metrics[name] = float(value)
samples = [l.split() for l in open(f"{work}/samples.txt") if l.strip()]
rss = [int(s[1]) for s in samples]
half = rss[len(rss) // 2] if len(rss) > 2 else rss[0]
growth = (rss[-1] - half) / half
report = json.load(open(f"{work}/soak.json"))
c = {k: v["all"] for k, v in report["counters"].items()}
db = sqlite3.connect(f"{work}/usage.db")
by_endpoint = dict(db.execute("select endpoint, count(*) from usage group by endpoint").fetchall())
records = sum(by_endpoint.values())
requests = sum(c.get(k, 0) for k in ("text.requests", "speech.requests", "music.requests", "image.requests", "video.requests",
                                      "voice.responses", "stream.responses"))
# Every HTTP generation (a video job counts once, however often it is polled) has its record.
http_complete = all(by_endpoint.get(endpoint, 0) == c.get(counter, 0) for endpoint, counter in (
    ("/v1/chat/completions", "text.requests"), ("/v1/audio/speech", "speech.requests"), ("/v1/music/generations", "music.requests"),
    ("/v1/images/generations", "image.requests"), ("/v1/videos", "video.requests")))
# Stream jobs: one record per answer; the jobs reported their answers before they were
# deleted, and an answer running at the deletion is recorded as cancelled: at most one a job.
streams = by_endpoint.get("/v1/streams", 0)
streams_complete = c.get("stream.responses", 0) <= streams <= c.get("stream.responses", 0) + c.get("stream.jobs", 0)
# A realtime response the client did not wait for (its session ended) is recorded as
# cancelled without the client seeing its response.done: at most one per session.
realtime = by_endpoint.get("/v1/realtime", 0)
realtime_complete = c.get("voice.responses", 0) <= realtime <= c.get("voice.responses", 0) + c.get("voice.sessions", 0)
errors = {k: v for k, v in c.items() if k.startswith("errors.")}
print(f"soak: {len(samples)} samples, RSS {rss[0]} -> {half} (half) -> {rss[-1]} kB ({growth:+.1%} over the second half), "
      f"fds {fds_before} -> {fds_after}, ledger {records} records for {requests} requests, errors {errors}")
checks = {
    "no running sequences": metrics.get("tutti_running_sequences", -1) == 0,
    "no KV blocks held": metrics.get("tutti_kv_blocks_in_use", -1) == 0,
    "no generations running": metrics.get("tutti_generations_running", -1) == 0,
    "memory flat (<15% growth over the second half)": growth < 0.15,
    "file descriptors back (±2)": abs(fds_after - fds_before) <= 2,
    "ledger complete (one record per HTTP request; realtime and stream-job responses all there)":
        http_complete and realtime_complete and streams_complete,
}
for name, ok in checks.items():
    print(("  ok    " if ok else "  FAIL  ") + name)
sys.exit(0 if all(checks.values()) else 1)
PY
