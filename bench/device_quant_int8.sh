#!/usr/bin/env bash
# The int8-activation prefill on another machine (e.g. the GPU machine's
# host CPU, no network): builds nmlx's quantized kernel tests and
# bench_quant, runs the int8 tests, then `bench_quant prefill` (f32 / bf16 /
# int8 kernels alternating) pinned to 1, 2 and 8 cores. Carry `.deps`
# (Debian packages of jansson, pcre2, utf8proc) where the host lacks them.
#
#   OUT=/some/dir bash bench/device_quant_int8.sh
set -uo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp}"
LOG="$OUT/quant_int8.txt"
B="$HERE/build-device"
. "$HERE/bench/device_quant_build.sh" test_quant_int8 test_quant_kernels
{ echo "== test_quant_int8"; "$B/tests/test_quant_int8" 2>&1 | tail -3
  echo "== test_quant_kernels (NMLX_QUANT_INT8=prefill)"; NMLX_QUANT_INT8=prefill "$B/tests/test_quant_kernels" 2>&1 | tail -2
  echo "== test_quant_kernels"; "$B/tests/test_quant_kernels" 2>&1 | tail -2; } >> "$LOG"
for bits in 4 8; do
  taskset -c 0 "$B/bench_quant" prefill 3 $bits 1 512 >> "$LOG" 2>&1
  taskset -c 0,1 "$B/bench_quant" prefill 3 $bits 2 512 >> "$LOG" 2>&1
done
taskset -c 0-7 "$B/bench_quant" prefill 3 4 8 512 >> "$LOG" 2>&1
cat "$LOG"
