#!/usr/bin/env bash
# Builds the input fuzz target (tests/fuzz/input_fuzz.cpp) with clang's libFuzzer and
# AddressSanitizer, seeds it with small valid files made by ffmpeg, and runs it for a
# bounded time: fuzz.sh [SECONDS] [WORKDIR]. A crash, leak or sanitizer report fails
# the run and leaves the input in WORKDIR. Exits 77 (skipped) when clang or libFuzzer is
# missing.
set -euo pipefail
seconds="${1:-60}"
work="${2:-build/fuzz}"
src="$(cd "$(dirname "$0")/.." && pwd)"
command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (tools/install-deps.sh installs it)"; exit 77; }
mkdir -p "$work/corpus" "$work/obj"
probe="$work/obj/probe.cpp"
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' >"$probe"
clang++ -fsanitize=fuzzer "$probe" -o "$work/obj/probe" 2>/dev/null || { echo "fuzz: clang has no libFuzzer (libclang-rt-14-dev)"; exit 77; }

bin="$work/input_fuzz"
sources=(codecs/byte_queue.cpp codecs/media_decoder.cpp codecs/opus_codec.cpp codecs/media_encoder.cpp
         codecs/patch_tokenizer.cpp codecs/rvq.cpp codecs/audio_tokenizer.cpp codecs/mdct.cpp
         actors/http/openai.cpp actors/http/errors.cpp actors/http/media.cpp actors/access/access.cpp actors/http/realtime_events.cpp actors/http/realtime_audio.cpp actors/http/stream_address.cpp actors/http/multipart.cpp pipeline/unicode.cpp pipeline/model_config.cpp pipeline/request_kinds.cpp
         pipeline/gguf.cpp pipeline/tokenizer.cpp pipeline/quantize.cpp
         kernels/tensor_type.cpp tests/fuzz/input_fuzz.cpp)
newest=0
for f in "${sources[@]/#/$src/}" "$src"/codecs/*.h "$src"/actors/http/*.hpp; do
  t=$(stat -c %Y "$f"); [ "$t" -gt "$newest" ] && newest=$t
done
if [ ! -x "$bin" ] || [ "$(stat -c %Y "$bin")" -lt "$newest" ]; then
  echo "fuzz: building $bin"
  flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address -I"$src" $(pkg-config --cflags opus ogg libavformat libavcodec libswresample libswscale libavutil icu-uc))
  objs=()
  for f in "${sources[@]}"; do
    o="$work/obj/$(echo "$f" | tr / _).o"
    clang++ "${flags[@]}" -c "$src/$f" -o "$o" &
    objs+=("$o")
    while [ "$(jobs -r | wc -l)" -ge 2 ]; do sleep 0.2; done
  done
  wait
  clang++ -fsanitize=fuzzer,address "${objs[@]}" -o "$bin" \
    $(pkg-config --libs opus ogg libavformat libavcodec libswresample libswscale libavutil icu-uc) -lpthread
fi

# Seeds: the corpus in the repository (small valid inputs of each kind, and every input that
# once crashed, as regression seeds).
cp -n "$src"/tests/fuzz/corpus/* "$work/corpus/"
echo "fuzz: running for $seconds s"
# A fixed seed (FUZZ_SEED to change it) makes the run in ctest repeatable; long runs for
# finding new inputs pass their own.
ASAN_OPTIONS=detect_leaks=1 "$bin" "$work/corpus" -seed="${FUZZ_SEED:-1}" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$work/" -print_final_stats=1 2>&1 | tail -15
