#!/bin/bash
# On the GPU machine (repo root, carry .deps .device/lcpp-cuda): llama-server
# and the Llama-3.1-8B Q4_0 GGUF made ready in $HOME/lcpp-serve and
# /dev/shm/gg for a device_serve.sh call that follows on the same warm
# machine. The prebuilt llama.cpp and the carried node do not fit one call's
# carry (64 MiB with the tree), so that call carries node alone:
#   1. bash bench/cuda/device_serve_peer_prep.sh        carry .deps .device/lcpp-cuda
#   2. bash bench/cuda/device_serve.sh                  carry .deps and .device/serve's
#      node.xz, node_modules.tar.xz, node-include (within 30 s: the machine stays warm)
set -euo pipefail
P=$PWD/.device/lcpp-cuda L=$HOME/lcpp-serve G=/dev/shm/gg
[ -f "$P/bin.tar.xz" ] || { echo "carry .device/lcpp-cuda (bench/cuda/lcpp_cuda_prepare.sh)"; exit 1; }
mkdir -p "$L/build" "$L/src" "$G"
[ -x "$L/build/bin/llama-server" ] || { tar -xJf "$P/bin.tar.xz" -C "$L/build" && tar -xJf "$P/aux.tar.xz" -C "$L/src"; }
export LD_LIBRARY_PATH=$L/build/bin
Q=$G/llama-3.1-8b-Q4_0.gguf
if [ ! -f "$Q" ]; then
  python3 "$P/make_gguf.py" --gguf-py "$L/src/llama.cpp/gguf-py" --tok "$L/src/llama3_1" --out "$G" \
    --models llama-3.1-8b 2>&1 | grep -E "GB in|rror" || true
  "$L/build/bin/llama-quantize" "$G/llama-3.1-8b-F16.gguf" "$Q" Q4_0 > /tmp/quantize.log 2>&1 ||
    { tail /tmp/quantize.log; exit 1; }
  rm -f "$G/llama-3.1-8b-F16.gguf"
fi
ls -la "$G"
"$L/build/bin/llama-server" --version 2>&1 | tail -2
