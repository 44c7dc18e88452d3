#!/usr/bin/env bash
# Run HERE (a Debian 12 machine with the archive reachable) before a GPU check: the lent GPU
# machine can reach nothing, and its image has CUDA, CMake and ninja but not the Debian
# libraries tutti builds against. This downloads their .deb files into .gpu-debs/ and copies
# the shared f32 test model into .gpu-shared/ (both ignored by git); the device call then
# names them in `carry` and runs tools/gpu-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu-debs .gpu-shared/models
(cd .gpu-debs && apt-get download libicu-dev libicu72 libtomlplusplus-dev libtomlplusplus3 libgtest-dev libgmock-dev \
  nlohmann-json3-dev libcaf-dev libcaf-core0.17 libcaf-io0.17 libcaf-openssl0.17 libboost1.81-dev 2>&1 | grep -v '^W:' || true)
shared="${TUTTI_SHARED_DIR:-../shared}"
cp "$shared"/models/tiny-llama-spm-f32.gguf "$shared"/models/tiny-llama-spm-f32.expected.txt .gpu-shared/models/
# The newer architectures and the K-quant files (the GPU tests compare them with the CPU).
for m in tiny-llama31-f32 tiny-qwen2-f32 tiny-qwen3-f32 tiny-llama-q4_k_m tiny-llama-q6_k; do
  cp "$shared"/models/$m.gguf "$shared"/models/$m.expected.txt .gpu-shared/models/ 2>/dev/null || true
done
du -sh .gpu-debs .gpu-shared
echo 'device run: carry [".gpu-debs", ".gpu-shared"], command "bash tools/gpu-check.sh"'
