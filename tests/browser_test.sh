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
port=$((20000 + RANDOM % 20000))
debug=$((port + 1))
"$tutti" serve --model "$model" --host 127.0.0.1 --port "$port" >"$work/serve.log" 2>&1 &
server=$!
browser=""
trap 'kill $server $browser 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/" | grep -q "v1/realtime" || { echo "the page is not served"; exit 1; }
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
