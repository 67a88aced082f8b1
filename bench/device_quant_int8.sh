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
{ lscpu | grep -E "Model name|^CPU\(s\)|Thread|Socket"; grep -o -w -E \
    "avx2|avx512f|avx512bw|avx512_vnni|avx_vnni|avx512_bf16|amx_int8|amx_bf16" /proc/cpuinfo |
    sort -u | tr '\n' ' '; echo; gcc --version | head -1; } > "$LOG"
# jansson, pcre2, utf8proc from .deps/ where the image lacks them
. "$HERE/bench/device_deps.sh" "$HERE"
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
B="$HERE/build-device"
cmake -S "$HERE" -B "$B" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DNODE_EXECUTABLE="$(command -v node || echo /bin/true)" > "$OUT/build.log" 2>&1 &&
  cmake --build "$B" -j 12 --target nmlx test_quant_int8 test_quant_kernels >> "$OUT/build.log" 2>&1 ||
  { echo "build failed" >> "$LOG"; tail -30 "$OUT/build.log" >> "$LOG"; exit 1; }
gcc -std=c11 -O2 -I"$HERE/include" -I"$HERE/src" "$HERE/bench/bench_quant.c" "$B/libnmlx.a" \
  $(pkg-config --libs jansson libpcre2-8 libutf8proc) -lpthread -lm -o "$B/bench_quant" >> "$OUT/build.log" 2>&1
{ echo "== test_quant_int8"; "$B/tests/test_quant_int8" 2>&1 | tail -3
  echo "== test_quant_kernels (NMLX_QUANT_INT8=prefill)"; NMLX_QUANT_INT8=prefill "$B/tests/test_quant_kernels" 2>&1 | tail -2
  echo "== test_quant_kernels"; "$B/tests/test_quant_kernels" 2>&1 | tail -2; } >> "$LOG"
for bits in 4 8; do
  taskset -c 0 "$B/bench_quant" prefill 3 $bits 1 512 >> "$LOG" 2>&1
  taskset -c 0,1 "$B/bench_quant" prefill 3 $bits 2 512 >> "$LOG" 2>&1
done
taskset -c 0-7 "$B/bench_quant" prefill 3 4 8 512 >> "$LOG" 2>&1
cat "$LOG"
