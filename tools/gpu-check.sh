#!/usr/bin/env bash
# The GPU check, in one call on a lent machine (about 5 minutes on an H100): builds the CUDA
# backend for sm_90, runs the GPU tests (the CUDA backend against the CPU backend), then the
# benchmarks on a random ~1B model (dim 2048, 16 layers, 32 heads, 8 KV heads, ffn 5632) in
# BF16, Q8_0 and Q4_K_M (made by `tutti model quantize` from the BF16 file), and prints one
# table. Prepare with tools/gpu-prepare.sh on the dev machine.
# Results also land in $OUT (the device tool brings them back).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1

# Debian libraries carried as .deb files, unpacked beside the system (never over /).
ROOT=/tmp/tutti-debroot
if [ -d .gpu-debs ]; then
  mkdir -p "$ROOT"
  for f in .gpu-debs/*.deb; do dpkg -x "$f" "$ROOT"; done
fi
export LD_LIBRARY_PATH="$ROOT/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nvcc --version | tail -1

t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTUTTI_CUDA=ON -DTUTTI_CUDA_ARCHITECTURES=90 \
  -DCMAKE_PREFIX_PATH="$ROOT/usr" -DCMAKE_INCLUDE_PATH="$ROOT/usr/include" >"$OUT/configure.log" 2>&1 ||
  { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j 16 --target tutti kernels_test >"$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -40; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"

# GPU tests (skips would mean no device was seen: they print why).
TUTTI_SHARED_DIR="$PWD/.gpu-shared" ./build-gpu/tests/kernels_test --gtest_filter='Cuda*' --gtest_brief=1 2>&1 | tee "$OUT/gpu-tests.txt" | tail -40
tests_rc=${PIPESTATUS[0]}

B=./build-gpu/tools/tutti/tutti
for t in bf16 q8_0 q4_k_m; do
  if [ "$t" = q4_k_m ]; then
    [ -f "/tmp/m1b-$t.gguf" ] || $B model quantize /tmp/m1b-bf16.gguf "/tmp/m1b-$t.gguf" q4_k_m --threads 16 >/dev/null 2>&1 || exit 1
  else
    [ -f "/tmp/m1b-$t.gguf" ] || $B model random --out "/tmp/m1b-$t.gguf" --vocab builtin --dim 2048 --layers 16 --heads 32 \
      --kv-heads 8 --ffn 5632 --type "$t" >/dev/null || exit 1
  fi
  timeout 240 $B bench --model "/tmp/m1b-$t.gguf" --device cuda --batches 1,64,256 --prompt-tokens 2048 --context 16 \
    --kv-cache-mb 16384 --min-seconds 1 --json >"$OUT/bench-$t.json" 2>"$OUT/bench-$t.log" || { tail -20 "$OUT/bench-$t.log"; }
done

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
print("\n%-6s %10s %10s %12s %12s %12s %10s %14s" % ("type", "copy GB/s", "b1 tok/s", "b1/copy bw", "b64 tok/s", "b256 tok/s", "pp2048", "host ms/step b1"))
for t in ("bf16", "q8_0", "q4_k_m"):
    p = os.path.join(out, "bench-%s.json" % t)
    try:
        j = json.load(open(p))
    except Exception as e:
        print("%-6s no result (%s)" % (t, e)); continue
    d = j["decode_tokens_per_s"]; h = j.get("host_cpu_ms_per_step", {})
    print("%-6s %10.0f %10.1f %12.3f %12.1f %12.1f %10.0f %14.3f" % (t, j["memory_read_gb_per_s"], d.get("1", 0),
          j["decode_bandwidth_fraction"], d.get("64", 0), d.get("256", 0), j["prefill_tokens_per_s"], h.get("1", 0)))
print("(b1/copy bw: weight bytes per batch-1 step / median step time / device-to-device copy bandwidth, read + write)")
PY
exit $tests_rc
