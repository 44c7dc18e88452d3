#!/usr/bin/env bash
# The official OpenAI clients (openai, @openai/agents-realtime from npm, pinned in
# package-lock.json and installed with `npm ci`) against a real `tutti serve` over TLS with a
# development CA: official_clients.mjs has the checks. Exits 77 (skipped) where Node or npm
# is missing.
# Usage: official_clients_test.sh TUTTI WORKDIR
set -uo pipefail
tutti="$1"
work="$2"
here="$(cd "$(dirname "$0")" && pwd)"
command -v node >/dev/null || { echo "node is not installed: the official clients cannot run"; exit 77; }
command -v npm >/dev/null || { echo "npm is not installed: the official clients cannot be installed"; exit 77; }
mkdir -p "$work"
# The clients, installed from the lockfile once per lockfile (npm ci wipes node_modules).
cp "$here/package.json" "$here/package-lock.json" "$here/official_clients.mjs" "$work/"
stamp="$work/node_modules/.lock-$(sha256sum "$here/package-lock.json" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  (cd "$work" && npm ci --no-audit --no-fund --loglevel=error) || { echo "npm ci failed"; exit 1; }
  touch "$stamp"
fi
model="$work/clients-model.gguf"
[ -f "$model" ] || "$tutti" model random --out "$model" --vocab builtin --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 \
  --type f32 --unified >/dev/null 2>&1 || { echo "could not make the model"; exit 1; }
# A spoken sentence, then 1.5 s of silence (the end of the turn), as 24 kHz PCM16 mono.
espeak-ng -w "$work/speech.wav" "Hello, how are you today? Tell me about the weather." 2>/dev/null &&
  ffmpeg -nostdin -loglevel error -y -i "$work/speech.wav" -af "apad=pad_dur=1.5" -ar 24000 -ac 1 -f s16le "$work/speech.pcm" ||
  { echo "could not make the speech"; exit 1; }
key="sk-clients-test-$RANDOM$RANDOM"
# Admission refuses by measured step times, which a busy test machine makes arbitrary: this
# test is about the clients' grammar, so it is off here (tests/scheduler_test.cpp covers it).
printf '[admission]\nenabled = false\n[ledger]\npath = "%s"\n' "$work/usage.db" >"$work/tutti.toml"
rm -rf "$work/tls"
"$tutti" serve --config "$work/tutti.toml" --model "$model" --host 127.0.0.1 --port 0 --tls-port 0 --tls-self-signed --tls-dir "$work/tls" --api-key "$key" \
  >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait 2>/dev/null' EXIT
tls_port=""
for _ in $(seq 1 200); do
  tls_port=$(sed -nE 's#.* and https://127\.0\.0\.1:([0-9]+).*#\1#p' "$work/serve.log" | head -1)
  [ -n "$tls_port" ] && break
  kill -0 $server 2>/dev/null || break
  sleep 0.05
done
[ -n "$tls_port" ] || { echo "the server did not start:"; cat "$work/serve.log"; exit 1; }
model_name=$(curl -sf --cacert "$work/tls/ca.pem" -H "Authorization: Bearer $key" "https://localhost:$tls_port/v1/models" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
[ -n "$model_name" ] || { echo "no model at https://localhost:$tls_port/v1/models"; tail -5 "$work/serve.log"; exit 1; }
cd "$work" && TUTTI_BASE_URL="https://localhost:$tls_port/v1" TUTTI_CA="$work/tls/ca.pem" NODE_EXTRA_CA_CERTS="$work/tls/ca.pem" \
  TUTTI_MODEL="$model_name" TUTTI_KEY="$key" TUTTI_SPEECH="$work/speech.pcm" timeout 600 node official_clients.mjs
status=$?
[ $status -eq 0 ] || { echo "--- server log (last lines)"; tail -20 "$work/serve.log"; }
exit $status
