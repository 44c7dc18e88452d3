#!/usr/bin/env bash
# SNAC through the command line and the server: a published-layout checkpoint (both
# weight-norm key styles) packed into one file, decoded and encoded by `tutti codec` against
# the reference outputs, malformed checkpoints refused in one line, an Orpheus-shaped
# backbone packed with the orpheus layout, and /v1/audio/speech on both layouts and on
# `tutti model init --codec snac`, checked by ffprobe. Skipped (77) without ../shared.
set -euo pipefail
tutti="$1"
shared="${TUTTI_SHARED_DIR:-$(dirname "$0")/../../shared}"
snac="$shared/codecs/snac-small-random"
[ -f "$snac/config.json" ] || { echo "skipped: $snac is absent (set TUTTI_SHARED_DIR)"; exit 77; }
helper="$(dirname "$0")/../tools/snac/checkpoint.py"
dir=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

"$tutti" model random --out "$dir/bb.gguf" --vocab builtin --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 \
  --type f32 --seed 5 2>/dev/null

max_abs_diff() {  # two .f32 files: prints the largest difference (inf if lengths differ)
  python3 -c "
import struct,sys
a=open(sys.argv[1],'rb').read(); b=open(sys.argv[2],'rb').read()
if len(a)!=len(b): print('inf'); sys.exit()
x=struct.unpack(f'<{len(a)//4}f',a); y=struct.unpack(f'<{len(b)//4}f',b)
print(max(abs(p-q) for p,q in zip(x,y)))" "$1" "$2"
}

# ---- both key styles, decoded and encoded as the reference did
mkdir -p "$dir/param"
cp "$snac/config.json" "$dir/param/"
cp "$snac/pytorch_model.param.bin" "$dir/param/pytorch_model.bin"
for src in "$snac" "$dir/param"; do
  "$tutti" model pack --backbone "$dir/bb.gguf" --snac "$src" --out "$dir/u.gguf" 2>/dev/null
  "$tutti" model info "$dir/u.gguf" | grep -q "tutti token layout"
  "$tutti" codec decode --model "$dir/u.gguf" --codes "$snac/codes.txt" --out "$dir/dec.f32" --zero-noise 2>/dev/null
  err=$(max_abs_diff "$dir/dec.f32" "$snac/decoded.f32")
  python3 -c "import sys; sys.exit(0 if float('$err') < 1e-6 else 1)" || { echo "decode differs from the reference by $err ($src)"; exit 1; }
done
"$tutti" codec encode --model "$dir/u.gguf" --in "$snac/speech.f32" --out "$dir/codes.txt" 2>/dev/null
same=$(python3 -c "
a=open('$dir/codes.txt').read().split(); b=open('$snac/speech_codes.txt').read().split()
print(sum(x==y for x,y in zip(a,b)) if len(a)==len(b) else -1, len(b))")
read -r n total <<<"$same"
[ "$n" -ge $((total * 98 / 100)) ] || { echo "encoder reproduced $n of $total reference codes"; exit 1; }

# ---- malformed checkpoints: one line on stderr, exit 1, never a crash
refuse() {  # refuse NAME MUTATE-ARGS... : the mutated checkpoint must be refused naming NAME
  local what="$1"; shift
  rm -rf "$dir/bad"
  python3 "$helper" mutate "$snac" "$dir/bad" "$@"
  set +e
  "$tutti" model pack --backbone "$dir/bb.gguf" --snac "$dir/bad" --out "$dir/bad.gguf" 2>"$dir/err.txt"
  local rc=$?
  set -e
  [ "$rc" -eq 1 ] || { echo "pack of a checkpoint with $* exited $rc"; cat "$dir/err.txt"; exit 1; }
  [ "$(wc -l <"$dir/err.txt")" -eq 1 ] || { echo "not one line for $*:"; cat "$dir/err.txt"; exit 1; }
  grep -q -- "$what" "$dir/err.txt" || { echo "the error for $* does not name $what:"; cat "$dir/err.txt"; exit 1; }
}
refuse "weight_g" --drop decoder.model.3.block.1.weight_g
refuse "decoder.model.1.weight_v" --reshape decoder.model.1.weight_v
refuse "NaN" --nan decoder.model.2.block.1.weight_v
refuse "encoder.block.1.block.4.weight_v" --config 'encoder_rates=[4,2,8,8]'
refuse "attn_window_size" --config 'attn_window_size=32'
printf 'not a zip' >"$dir/bad/pytorch_model.bin"
set +e; "$tutti" model pack --backbone "$dir/bb.gguf" --snac "$dir/bad" --out "$dir/bad.gguf" 2>"$dir/err.txt"; rc=$?; set -e
[ "$rc" -eq 1 ] && grep -q "zip" "$dir/err.txt" || { echo "a damaged archive: exit $rc"; cat "$dir/err.txt"; exit 1; }

start() {  # start MODEL: the server on a free port; sets pid and port
  "$tutti" serve --model "$1" --port 0 2>"$dir/serve.log" &
  pid=$!
  for _ in $(seq 1 400); do
    port=$(sed -nE 's#.*on http://127\.0\.0\.1:([0-9]+).*#\1#p' "$dir/serve.log" | head -1)
    [ -n "$port" ] && return 0
    sleep 0.05
  done
  echo "the server did not start:"; cat "$dir/serve.log"; exit 1
}
stop() { kill "$pid"; wait "$pid" || true; pid=""; }
speech() {  # speech FORMAT VOICE [RATE]: a speech answer, checked by ffprobe (Opus is always 48 kHz)
  local code
  code=$(curl -s -o "$dir/speech.$1" -w '%{http_code}' -d "{\"input\":\"Hello from tutti.\",\"voice\":\"$2\",\"response_format\":\"$1\"}" \
    "http://127.0.0.1:$port/v1/audio/speech")
  [ "$code" = 200 ] || { echo "speech answered $code"; cat "$dir/speech.$1"; exit 1; }
  ffprobe -v error -show_entries stream=codec_name,sample_rate -of csv=p=0 "$dir/speech.$1" >"$dir/probe.txt"
 grep -q "${3:-24000}" "$dir/probe.txt" || { echo "ffprobe: $(cat "$dir/probe.txt")"; exit 1; }
}

# ---- the tutti layout, served
start "$dir/u.gguf"
speech wav alloy
speech mp3 nova
stop

# ---- an Orpheus-shaped backbone (Llama 3 vocabulary + <custom_token_N>), orpheus layout
"$tutti" model random --out "$dir/orph-bb.gguf" --vocab "$shared/vocab/ggml-vocab-llama-bpe.gguf" --custom-tokens 28684 \
  --dim 32 --layers 1 --heads 2 --ffn 64 --type f16 --tied --seed 3 2>/dev/null
set +e; "$tutti" model pack --backbone "$dir/bb.gguf" --snac "$snac" --audio-layout orpheus --out "$dir/o.gguf" 2>"$dir/err.txt"; rc=$?; set -e
[ "$rc" -eq 1 ] && grep -q "156938" "$dir/err.txt" || { echo "orpheus layout on a small vocabulary: exit $rc"; cat "$dir/err.txt"; exit 1; }
"$tutti" model pack --backbone "$dir/orph-bb.gguf" --snac "$snac" --audio-layout orpheus --out "$dir/o.gguf" 2>/dev/null
"$tutti" model info "$dir/o.gguf" | tee "$dir/oinfo.txt" | grep -q "orpheus token layout"
grep -q "tokens \[128266, 156938)" "$dir/oinfo.txt" || { echo "orpheus code range:"; cat "$dir/oinfo.txt"; exit 1; }
grep -q "begin 128257, end 128258" "$dir/oinfo.txt"
start "$dir/o.gguf"
speech wav tara
stop

# ---- the default model with a full-size random SNAC
"$tutti" model init --codec snac --out "$dir/d.gguf" 2>/dev/null
"$tutti" model info "$dir/d.gguf" | grep -q "19.8 M parameters"
start "$dir/d.gguf"
speech opus alloy 48000
stop
echo "snac cli: ok"
