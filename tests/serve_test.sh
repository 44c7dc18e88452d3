#!/usr/bin/env bash
# `tutti serve` as a process: API keys from a key file and --api-key (401 without, never
# printed), the usage ledger across a kill -9 (every answered request is in it afterwards,
# read by `tutti usage`), SIGHUP reloading the model while it serves, and SIGTERM draining a running generation to its end and exiting 0.
set -euo pipefail
tutti="$1"
dir=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$dir"' EXIT

"$tutti" model random --out "$dir/m.gguf" --vocab builtin --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 \
  --type q8_0 --seed 5 --unified 2>/dev/null
printf '# keys\nops sk-file-key-0123456789\n' >"$dir/keys.txt"
printf '[access]\napi_key_file = "%s"\n[ledger]\npath = "%s"\n' "$dir/keys.txt" "$dir/usage.db" >"$dir/tutti.toml"

start() {  # starts the server on a free port; sets pid and port
  "$tutti" serve --config "$dir/tutti.toml" --model "$dir/m.gguf" --port 0 --api-key sk-flag-key-0123456789 \
    2>"$dir/serve.log" &
  pid=$!
  for _ in $(seq 1 200); do
    port=$(sed -nE 's#.*on http://127\.0\.0\.1:([0-9]+).*#\1#p' "$dir/serve.log" | head -1)
    [ -n "$port" ] && return 0
    sleep 0.05
  done
  echo "the server did not start:"; cat "$dir/serve.log"; exit 1
}
complete() {  # complete KEY [BODY]: prints the HTTP status
  curl -s -o "$dir/out.json" -w '%{http_code}' -H "Authorization: Bearer $1" -H 'Content-Type: application/json' \
    -d "${2:-{\"prompt\":\"hello\",\"max_tokens\":4\}}" "http://127.0.0.1:$port/v1/completions"
}

start
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")" = 200 ] || { echo "health needs no key"; exit 1; }
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/models")" = 401 ] || { echo "models without a key"; exit 1; }
[ "$(complete sk-wrong-0123456789)" = 401 ] || { echo "a wrong key was accepted"; exit 1; }
for i in 1 2 3; do [ "$(complete sk-file-key-0123456789)" = 200 ] || { echo "file key refused"; cat "$dir/out.json"; exit 1; }; done
[ "$(complete sk-flag-key-0123456789)" = 200 ] || { echo "--api-key refused"; exit 1; }
if grep -q "sk-file-key\|sk-flag-key" "$dir/serve.log"; then echo "a key was logged"; exit 1; fi

# SIGHUP reloads the model from its file beside the running one; it keeps serving.
kill -HUP "$pid"
for _ in $(seq 1 200); do
  version=$(curl -s "http://127.0.0.1:$port/health" | python3 -c 'import json,sys; print(max(m.get("version", 0) for m in json.load(sys.stdin)["models"].values()))')
  [ "$version" = 2 ] && break
  sleep 0.05
done
[ "$version" = 2 ] || { echo "SIGHUP did not reload the model"; cat "$dir/serve.log"; exit 1; }
grep -q "reloaded from" "$dir/serve.log" || { echo "the reload was not logged"; exit 1; }
[ "$(complete sk-file-key-0123456789)" = 200 ] || { echo "not serving after the reload"; exit 1; }

# kill -9: every request answered before it is in the ledger.
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""
"$tutti" usage --ledger "$dir/usage.db" --period all --json >"$dir/usage.json"
python3 - "$dir/usage.json" <<'PY'
import json, sys
rows = {r["key"]: r for r in json.load(open(sys.argv[1]))}
assert rows["ops"]["requests"] == 4 and rows["ops"]["tokens_out"]["text"] == 16, rows
flag = [r for k, r in rows.items() if k.startswith("key-")]
assert len(flag) == 1 and flag[0]["requests"] == 1, rows
PY

# SIGTERM while a paced generation runs: it finishes, the process exits 0.
start
curl -s -N -H "Authorization: Bearer sk-file-key-0123456789" -H 'Content-Type: application/json' \
  -d '{"prompt":"x","max_tokens":50,"stream":true,"tutti":{"class":"realtime","rate":50}}' \
  "http://127.0.0.1:$port/v1/completions" >"$dir/stream.txt" &
client=$!
sleep 0.3
kill -TERM "$pid"
status=0; wait "$pid" || status=$?; pid=""
wait "$client" || true
[ "$status" = 0 ] || { echo "exit status $status after SIGTERM"; cat "$dir/serve.log"; exit 1; }
grep -q '"finish_reason":"length"' "$dir/stream.txt" || { echo "the running stream was cut:"; tail -c 400 "$dir/stream.txt"; exit 1; }
grep -q "0 generation(s) cut short" "$dir/serve.log" || { cat "$dir/serve.log"; exit 1; }
"$tutti" usage --ledger "$dir/usage.db" --period all | tee "$dir/usage.txt"
grep -qE "^ops +all +5 " "$dir/usage.txt" || { echo "the drained request is not in the ledger"; exit 1; }
echo "serve: keys, ledger across kill -9, SIGHUP reload, SIGTERM drain: ok"
