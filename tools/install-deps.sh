#!/usr/bin/env bash
# Installs the Debian 12 packages tutti needs to build and test. Idempotent: packages that are
# already present are left alone, and apt is not touched at all when nothing is missing.
# Must run as root (or with sudo available) on a bare Debian 12 machine.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libgtest-dev libgmock-dev
  libicu-dev            # Unicode general categories for the BPE pre-tokenizers
  libcaf-dev            # C++ Actor Framework 0.17: the serving pipeline's actors
  nlohmann-json3-dev    # JSON for the HTTP and WebSocket protocols
  libboost1.81-dev      # Boost.Beast / Asio: HTTP and WebSocket transports
  libtomlplusplus-dev   # the settings file (config/default.toml)
  libopus-dev libogg-dev                       # Opus frames and Ogg Opus streams
  libavformat-dev libavcodec-dev libswresample-dev libswscale-dev libavutil-dev  # FFmpeg 5.1
  libzmq3-dev cppzmq-dev  # ZeroMQ: FFmpeg streams piped in and out (stream jobs)
  libsqlite3-dev          # the usage ledger (SQLite in WAL mode)
  libssl-dev              # TLS: HTTPS and wss:// through Asio's OpenSSL streams
  ffmpeg espeak-ng sox  # tests: ffprobe checks outputs; speech, tones and noise as test signals
  clang libclang-rt-14-dev  # tests: the media fuzz target (libFuzzer)
  chromium curl             # tests: the browser client in headless Chromium
  python3                   # tools/snac/checkpoint.py: SNAC checkpoints read without PyTorch
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
