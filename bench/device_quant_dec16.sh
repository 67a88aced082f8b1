#!/usr/bin/env bash
# The int16-x VNNI decode mat-vec (quant_dec_vnni_avx512.c) on another
# machine (e.g. the GPU machine's host CPU, no network): builds nmlx's
# quantized kernel tests and bench_quant, runs test_quant_int8 (the kernel
# against its references), prints the one-time kernel pick, then
# `bench_quant decode` (f32 / bf16 / int16-vnni decode kernels alternating,
# one layer's seven mat-vecs at Qwen3-0.6B and Llama-3.2-1B shapes, weights
# streamed from DRAM) pinned to 1, 2 and 8 cores, 4-bit and 8-bit g64; the
# same cache-resident on 1 core; batched steps (`few`) with the int16 decode
# off and on; its accuracy (`decode-acc`).
# Carry `.deps` (Debian packages of jansson, pcre2, utf8proc) where the
# host lacks them.
#
#   OUT=/some/dir bash bench/device_quant_dec16.sh
set -uo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp}"
LOG="$OUT/quant_dec16.txt"
B="$HERE/build-device"
. "$HERE/bench/device_quant_build.sh" test_quant_int8
{ echo "== test_quant_int8"; NMLX_QUANT_PICK_LOG=1 "$B/tests/test_quant_int8" 2>&1 | grep -E "FAIL|pick|passed" | head -20; } >> "$LOG"
for bits in 4 8; do
  taskset -c 0 "$B/bench_quant" decode 5 $bits 1 64 >> "$LOG" 2>&1
  taskset -c 0,1 "$B/bench_quant" decode 5 $bits 2 64 >> "$LOG" 2>&1
done
taskset -c 0-7 "$B/bench_quant" decode 5 4 8 64 >> "$LOG" 2>&1
# hot (cache-resident): the kernels' compute speed, 1 core
BENCH_HOT=1 taskset -c 0 "$B/bench_quant" decode 10 4 1 64 >> "$LOG" 2>&1
BENCH_HOT=1 taskset -c 0 "$B/bench_quant" decode 10 8 1 64 >> "$LOG" 2>&1
# batched decode steps: the int16 few-token form against the previous default's
for e in 0 1; do
  echo "== few-token, NMLX_QUANT_INT16_DEC=$e" >> "$LOG"
  NMLX_QUANT_INT16_DEC=$e taskset -c 0,1 "$B/bench_quant" few 0.3 avx512 2 q4,q8 2048x2048 >> "$LOG" 2>&1
done
"$B/bench_quant" decode-acc 4 64 1024 3072 8 >> "$LOG" 2>&1
cat "$LOG"
