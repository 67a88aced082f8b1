#!/bin/bash
# The AMX-BF16 dense bf16 prefill (src/compute/cpu/matmul_amx.c) on an Intel
# host with AMX (the GPU machine's Emerald Rapids): builds nmlx (Release,
# -Werror, CPU only), runs test_kernels with NMLX_AMX=1 (must print "AMX
# dense bf16 prefill: RAN") and the pick log, the other CPU kernel tests
# with NMLX_AMX=1, then bench_amx (1 thread pinned to core 0, T=512).
#   OUT=dir [FULL=1] bash bench/device_amx.sh
# FULL=1 also builds everything and runs every C test (ctest -R '^test_')
# with NMLX_AMX=1 (the bf16 fixtures' prefill through AMX), ~3 more minutes.
# If bench/device_cpu_peer.sh ran before in the same call (its checkpoints
# in /dev/shm/nmlx-cpu-peer/models), it also times the bf16 cells' prefill
# end to end (p512, 2 threads pinned to cores 0,1), NMLX_AMX=0 and =1
# alternating, 2 rounds.
# Needs .deps/ (Debian packages of jansson, pcre2, utf8proc; see
# bench/cuda/device_run.sh) unless the host has them.
set -u
OUT=${OUT:-/tmp/nmlx-amx-out}
mkdir -p "$OUT"
if ! pkg-config --exists jansson && ls .deps/*.deb >/dev/null 2>&1; then
  R=/tmp/nmlx-deps
  for f in .deps/*.deb; do dpkg -x "$f" $R; done
  export PKG_CONFIG_SYSROOT_DIR=$R PKG_CONFIG_PATH=$R/usr/lib/x86_64-linux-gnu/pkgconfig:$R/usr/share/pkgconfig
  export LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
fi
{ lscpu | sed -n 's/^Model name: *//p' | head -1
  grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx512_bf16|amx_bf16|amx_int8|amx_tile)$' | tr '\n' ' '
  echo; nproc; uname -r; } | tee "$OUT/env.txt"
B=build-amx
T0=$(date +%s)
cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release -DNODE_EXECUTABLE=/bin/true >"$OUT/build.log" 2>&1 &&
  cmake --build $B -j"$(nproc)" --target nmlx nmlx-cli test_kernels test_quant_kernels test_quant_int8 >>"$OUT/build.log" 2>&1 ||
  { tail -40 "$OUT/build.log"; exit 1; }
gcc -std=c11 -O2 -Iinclude -Isrc bench/bench_amx.c $B/libnmlx.a \
  $(pkg-config --libs jansson libpcre2-8 libutf8proc) -lpthread -lm -o $B/bench_amx >>"$OUT/build.log" 2>&1 ||
  { tail -20 "$OUT/build.log"; exit 1; }
echo "build ok ($(( $(date +%s) - T0 )) s)"
export NMLX_SOURCE_DIR=$PWD
NMLX_AMX=1 NMLX_QUANT_PICK_LOG=1 ./$B/tests/test_kernels >"$OUT/test_kernels.log" 2>&1
echo "test_kernels NMLX_AMX=1 rc=$?"
grep -E "AMX|pick|FAIL|passed" "$OUT/test_kernels.log" | head -30
for t in test_quant_kernels test_quant_int8; do
  NMLX_AMX=1 ./$B/tests/$t >"$OUT/$t.log" 2>&1; echo "$t NMLX_AMX=1 rc=$?: $(grep -E "passed" "$OUT/$t.log" | tail -1)"
done
./$B/tests/test_kernels >"$OUT/test_kernels_default.log" 2>&1
echo "test_kernels default rc=$?: $(grep -E "AMX|passed" "$OUT/test_kernels_default.log" | tr '\n' ' ')"
if [ "${FULL:-0}" = 1 ]; then # every C test (test_*) with NMLX_AMX=1: bf16 fixtures through AMX
  cmake --build $B -j"$(nproc)" >>"$OUT/build.log" 2>&1 || echo "full build failed (see build.log)"
  NMLX_AMX=1 timeout 300 ctest --test-dir $B -j8 -R '^test_' >"$OUT/ctest_amx.log" 2>&1
  echo "ctest -R ^test_ NMLX_AMX=1 rc=$?: $(grep -E "tests passed|FAILED|Failed|Timeout" "$OUT/ctest_amx.log" | tr '\n' ' ')"
fi
taskset -c 0 ./$B/bench_amx 512 5 2>&1 | tee "$OUT/bench_amx.txt"
M=/dev/shm/nmlx-cpu-peer/models
for model in qwen3-0.6b llama-3.2-1b; do
  [ -d "$M/$model/hf" ] || { echo "end to end: no $M/$model/hf (run bench/device_cpu_peer.sh first)"; continue; }
  for round in 1 2; do
    for a in 0 1; do
      r=$(NMLX_AMX=$a NMLX_QUANT_PICK_LOG=1 timeout 120 taskset -c 0,1 ./$B/nmlx bench -m "$M/$model/hf" -p 512 -n 0 -t 2 -r 2 2>>"$OUT/e2e.log" | tail -1)
      echo "e2e $model bf16 p512 t2 NMLX_AMX=$a round $round: $(echo "$r" | grep -oE '"prefill_tok_s":[0-9.]+')" | tee -a "$OUT/e2e.txt"
    done
  done
done
grep -E "amx" "$OUT/e2e.log" 2>/dev/null | sort | uniq -c | head -4
