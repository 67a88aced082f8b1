#!/usr/bin/env bash
# Installs what nmlx needs on a fresh Debian 12 machine (idempotent), then
# configures and builds it into build/. Usage: bash scripts/setup.sh [cmake args]
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(build-essential cmake pkg-config libjansson-dev libpcre2-dev libutf8proc-dev nodejs npm valgrind)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# node/npm may come from elsewhere than Debian (e.g. nodesource); accept any.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs/}"); missing=("${missing[@]/npm/}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
if [ -f package-lock.json ] && [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DNMLX_WERROR=ON "$@" >/dev/null
cmake --build build -j"$(nproc)"
