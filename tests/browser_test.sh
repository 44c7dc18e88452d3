#!/usr/bin/env bash
# The browser client end to end: `tutti serve` on a small unified model, headless Chromium
# on "/?auto=1" with a fake microphone playing a WAV turn, and the page's title (read over
# Chromium's DevTools endpoint) saying that answer audio came back and played.
# Usage: browser_test.sh TUTTI WORKDIR. Exits 77 (skipped) without chromium.
set -uo pipefail
tutti="$1"
work="$2"
command -v chromium >/dev/null || { echo "chromium is not installed (tools/install-deps.sh installs it)"; exit 77; }
mkdir -p "$work"
model="$work/browser-model.gguf"
[ -f "$model" ] || "$tutti" model random --out "$model" --vocab builtin --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 \
  --type f32 --unified >/dev/null 2>&1 || { echo "could not make the model"; exit 1; }
ffmpeg -nostdin -loglevel error -y -f lavfi -i "anullsrc=r=48000:cl=mono:d=0.4" -f lavfi -i "sine=f=150:r=48000:d=0.8" \
  -f lavfi -i "anullsrc=r=48000:cl=mono:d=1.2" -filter_complex "[0][1][2]concat=n=3:v=0:a=1,volume=2" -c:a pcm_s16le "$work/turn.wav" ||
  { echo "ffmpeg could not make the turn"; exit 1; }
# Ports below Linux's ephemeral range (32768+), so no other test's socket can hold them; a
# port that is taken anyway is retried. The server's own log says it is ours.
server=""
browser=""
trap 'kill $server $browser 2>/dev/null; wait 2>/dev/null' EXIT
for attempt in 1 2 3 4 5; do
  port=$((20000 + (RANDOM * 7 + $$ + attempt * 131) % 12000))
  debug=$((port + 1))
  "$tutti" serve --model "$model" --host 127.0.0.1 --port "$port" >"$work/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do
    grep -q "127.0.0.1:$port" "$work/serve.log" 2>/dev/null && curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 $server 2>/dev/null || break
    sleep 0.1
  done
  kill -0 $server 2>/dev/null && break
  echo "port $port was taken; trying another"
done
served=""
for _ in $(seq 1 30); do
  curl -sf "http://127.0.0.1:$port/" -o "$work/page.html" && grep -q "v1/realtime" "$work/page.html" && { served=1; break; }
  sleep 0.1
done
if [ -z "$served" ]; then
  echo "the page is not served on port $port (server alive: $(kill -0 $server 2>/dev/null && echo yes || echo no))"
  head -c 300 "$work/page.html" 2>/dev/null; echo
  tail -5 "$work/serve.log"
  exit 1
fi
rm -rf "$work/profile"
chromium --headless=new --no-sandbox --disable-gpu --no-first-run --user-data-dir="$work/profile" \
  --use-fake-ui-for-media-stream --use-fake-device-for-media-stream --use-file-for-fake-audio-capture="$work/turn.wav" \
  --autoplay-policy=no-user-gesture-required --remote-debugging-port="$debug" "http://127.0.0.1:$port/?auto=1" \
  >"$work/chromium.log" 2>&1 &
browser=$!
for _ in $(seq 1 600); do  # generous: this checks that audio comes back, not how fast
  title=$(curl -sf "http://127.0.0.1:$debug/json/list" | grep -o '"title": *"tutti-ok[^"]*"' | head -1)
  if [ -n "$title" ]; then
    echo "browser: $title"
    exit 0
  fi
  sleep 0.1
done
echo "no audio came back to the page within 60 s"
curl -sf "http://127.0.0.1:$debug/json/list" | head -20
tail -20 "$work/serve.log"
tail -20 "$work/chromium.log"
exit 1
