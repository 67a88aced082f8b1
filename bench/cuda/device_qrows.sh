#!/bin/bash
# On the GPU machine (repo root, carry .deps): validate and time the few-rows
# v2 kernel (cuda_qrows2.h, the default of cuda_qrows_mma.cu) against v1.
# Steps: build; the CPU emulation; test_cuda_qrows (v1 and v2 forms against
# the CPU); test_cuda_batch with v2 and with v1; compute-sanitizer memcheck
# and racecheck on a quick test_cuda_qrows; bench_cuda_quant's few-rows table
# (v1, v2 default, the NMLX_BENCH_QROWS_CFGS sweep); bench_cuda_batch on a
# synthetic Llama-3.1-8B 4-bit g64 at 1, 8, 32 sessions, v2 then v1.
#   OUT=dir [CFGS="mt=..;..."] [BATCH=1,8,32] bash bench/cuda/device_qrows.sh
set -o pipefail
OUT=${OUT:-/tmp/nmlx-qrows}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/qrows.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s]"; }
nvidia-smi --query-gpu=name --format=csv,noheader
. bench/device_deps.sh .
B=build-cuda-dev
python3 bench/cuda/make_synth_llama.py /tmp/synth-l8b-q4 8b 4 64 >"$OUT/synth.log" 2>&1 &
SYN=$!
cmake -B $B -G Ninja -DNMLX_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DNODE_EXECUTABLE=$(command -v node || echo /bin/true) >"$OUT/build.log" 2>&1 &&
  cmake --build $B -j16 --target test_qrows2_emu test_cuda_qrows test_cuda_batch bench_cuda_quant bench_cuda_batch >>"$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; exit 1; }
echo "$(el) build ok"
export NMLX_SOURCE_DIR=$PWD
t() { timeout "$1" "${@:2}" >"$OUT/t.log" 2>&1; echo "$(el) rc=$? $*: $(grep -E 'passed|PASS|FAIL|error|qrows' "$OUT/t.log" | tail -3 | tr '\n' ' ')"; grep -m8 -E "FAIL|mismatch|ERROR" "$OUT/t.log"; cat "$OUT/t.log" >>"$OUT/tests.log"; }
t 60 ./$B/tests/test_qrows2_emu quick
t 240 ./$B/tests/test_cuda_qrows
t 240 ./$B/tests/test_cuda_batch
NMLX_CUDA_QROWS=v1 t 240 ./$B/tests/test_cuda_batch
NMLX_TEST_QROWS_QUICK=1 t 200 compute-sanitizer --tool memcheck ./$B/tests/test_cuda_qrows
NMLX_TEST_QROWS_QUICK=1 t 200 compute-sanitizer --tool racecheck ./$B/tests/test_cuda_qrows
echo "$(el) bench_cuda_quant rows"
NMLX_BENCH_QROWS_CFGS="${CFGS-mt=2,wr=1;mt=4,wr=4;wr=1,bps=4;bps=4;bps=8;bps=0}" \
  timeout 200 ./$B/tests/bench_cuda_quant 100 rows >"$OUT/rows.txt" 2>&1; echo "$(el) rc=$? (all lines: \$OUT/rows.txt)"
grep -E "step|CUDA ERROR|SKIP|failed" "$OUT/rows.txt"
awk '$1 == "q4g64" && ($3 == 8 || $3 == 32)' "$OUT/rows.txt"
wait $SYN; tail -1 "$OUT/synth.log"
D=/tmp/synth-l8b-q4
for v in - NMLX_CUDA_QROWS=v1; do
  [ $(( $(date +%s) - T0 )) -gt "${DEADLINE:-540}" ] && { echo "deadline"; break; }
  e=$v; [ "$v" = - ] && e=
  echo "$(el) bench_cuda_batch l8b-q4 ${v}"
  env $e timeout 120 ./$B/tests/bench_cuda_batch $D 32 0 "${BATCH-1,8,32}" cuda 2>&1 | tail -6
done
echo "$(el) done"
