#!/usr/bin/env bash
# End-to-end check of the tutti command line: make a random model, inspect, tokenize,
# generate (reproducibly), and run a short benchmark whose JSON has the documented fields.
set -euo pipefail
tutti="$1"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

"$tutti" model random --out "$dir/m.gguf" --vocab builtin --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 \
  --type q8_0 --seed 5 --unified 2>/dev/null
"$tutti" model info "$dir/m.gguf" | tee "$dir/info.txt"
grep -q "architecture:  llama" "$dir/info.txt"
grep -q "audio  tokens" "$dir/info.txt"

ids=$("$tutti" tokenize --model "$dir/m.gguf" --text "Hello world")
[ -n "$ids" ] || { echo "no ids"; exit 1; }

a=$("$tutti" generate --model "$dir/m.gguf" --prompt "Hello" --max-tokens 8 --output ids --no-stop)
b=$("$tutti" generate --model "$dir/m.gguf" --prompt "Hello" --max-tokens 8 --output ids --no-stop)
[ "$a" == "$b" ] || { echo "greedy not reproducible: $a / $b"; exit 1; }
[ "$(wc -w <<<"$a")" -eq 8 ] || { echo "expected 8 ids, got: $a"; exit 1; }
s1=$("$tutti" generate --model "$dir/m.gguf" --prompt "Hello" --max-tokens 8 --output ids --temperature 1 --seed 3 --no-stop)
s2=$("$tutti" generate --model "$dir/m.gguf" --prompt "Hello" --max-tokens 8 --output ids --temperature 1 --seed 3 --no-stop)
[ "$s1" == "$s2" ] || { echo "seeded sampling not reproducible"; exit 1; }

# A unified model: text generation never produces media ids; --modality audio produces only
# audio codes (or its end token).
lo=$(grep "audio  tokens" "$dir/info.txt" | sed -E 's/.*\[([0-9]+), ([0-9]+)\).*/\1/')
hi=$(grep "audio  tokens" "$dir/info.txt" | sed -E 's/.*\[([0-9]+), ([0-9]+)\).*/\2/')
first_media=$(grep "tokens \[" "$dir/info.txt" | sed -E 's/.*begin ([0-9]+),.*/\1/' | sort -n | head -1)
for id in $("$tutti" generate --model "$dir/m.gguf" --prompt "Hello" --max-tokens 16 --output ids --temperature 2 --seed 1 --no-stop); do
  [ "$id" -lt "$first_media" ] || { echo "text generation produced media id $id"; exit 1; }
done
audio=$("$tutti" generate --model "$dir/m.gguf" --prompt "Say hi" --max-tokens 16 --output ids --modality audio --temperature 1 --seed 2)
[ -n "$audio" ] || { echo "no audio ids"; exit 1; }
for id in $audio; do
  [ "$id" -ge "$lo" ] && [ "$id" -lt "$hi" ] || { echo "audio id $id outside [$lo, $hi)"; exit 1; }
done

# Errors are one clear line and a non-zero exit, never a crash.
if "$tutti" generate --model "$dir/missing.gguf" --prompt x 2>"$dir/err.txt"; then exit 1; fi
grep -q "missing.gguf" "$dir/err.txt"
head -c 1000 "$dir/m.gguf" > "$dir/cut.gguf"
if "$tutti" model info "$dir/cut.gguf" 2>"$dir/err2.txt"; then exit 1; fi
grep -q "cut.gguf" "$dir/err2.txt"
if "$tutti" generate --model "$dir/m.gguf" --prompt x --max-tokens nope 2>"$dir/err3.txt"; then exit 1; fi
grep -q "max-tokens" "$dir/err3.txt"

# Every subcommand answers --help with its options and defaults (exit 0); an unknown option
# names the options the subcommand does take.
"$tutti" help | grep -q "serve" || { echo "tutti help lists no commands"; exit 1; }
for cmd in serve generate tokenize "model info" "model random" "model init" "model pack" "model quantize" bench "bench serve" \
           "bench media" "bench voice" codec loadtest usage; do
  # shellcheck disable=SC2086
  out=$("$tutti" $cmd --help) || { echo "tutti $cmd --help failed"; exit 1; }
  grep -q "usage: tutti $cmd" <<<"$out" || { echo "tutti $cmd --help: $out"; exit 1; }
done
"$tutti" serve --help | grep -q -- "--tls-cert" || { echo "serve --help lacks --tls-cert"; exit 1; }
"$tutti" serve --help | grep -q "default 8080" || { echo "serve --help lacks the port's default"; exit 1; }
if "$tutti" usage --bogus 2>"$dir/err4.txt"; then exit 1; fi
grep -q -- "--ledger" "$dir/err4.txt" || { echo "an unknown option names no options: $(cat "$dir/err4.txt")"; exit 1; }

json=$("$tutti" bench --model "$dir/m.gguf" --json --min-seconds 0.05 --prompt-tokens 32)
echo "$json"
for field in prefill_tokens_per_s decode_tokens_per_s '"1"' '"4"' '"16"' '"32"' memory_read_gb_per_s \
             decode_bandwidth_fraction threads model_bytes; do
  grep -q "$field" <<<"$json" || { echo "bench JSON lacks $field"; exit 1; }
done
python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["prefill_tokens_per_s"]>0 and d["decode_tokens_per_s"]["32"]>0' "$json" 2>/dev/null \
  || ! command -v python3 >/dev/null
echo "1 passed, 0 failed"
