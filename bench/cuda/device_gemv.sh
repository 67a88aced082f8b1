#!/bin/bash
# On the GPU machine (repo root, carry .deps): validate and time the int16
# decode mat-vec's kernel v2 (cuda_qgemv16.cu, the default) against v1
# (NMLX_CUDA_QGEMV16=v1). Steps: build; test_cuda_ops (v2, and every int16
# case re-run under v1 and ten v2 configurations: bit-for-bit equal);
# bench_cuda_quant 200 q16 (us and GB/s per shape and configuration); nmlx
# bench pp512/tg128 on a synthetic Llama-3.1-8B 4-bit g64, v2 against v1;
# test_cuda_fused (gate/up pairs, and the v1 norm form against v2's
# unfused sequence at 1e-6); test_cuda_fixtures (decode steps captured as
# graphs: v2 launched inside a capture); FULL=1 adds test_cuda_ops under v1
# and compute-sanitizer memcheck on test_cuda_fused.
#   OUT=dir [CFGS="d8b2,d4b2 a16b2,a8b2 ..."] [FULL=1] bash bench/cuda/device_gemv.sh
set -o pipefail
OUT=${OUT:-/tmp/nmlx-gemv}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gemv.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s]"; }
nvidia-smi --query-gpu=name --format=csv,noheader
. bench/device_deps.sh .
B=build-cuda-dev
python3 bench/cuda/make_synth_llama.py /tmp/synth-l8b-q4 8b 4 64 >"$OUT/synth.log" 2>&1 &
SYN=$!
cmake -B $B -G Ninja -DNMLX_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DNODE_EXECUTABLE=$(command -v node || echo /bin/true) >"$OUT/build.log" 2>&1 &&
  cmake --build $B -j16 --target nmlx-cli test_cuda_ops test_cuda_fused test_cuda_fixtures bench_cuda_quant >>"$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; exit 1; }
echo "$(el) build ok"
export NMLX_SOURCE_DIR=$PWD
t() { timeout "$1" "${@:2}" >"$OUT/t.log" 2>&1; echo "$(el) rc=$? $*: $(grep -E 'passed|FAIL|error' "$OUT/t.log" | tail -3 | tr '\n' ' ')"; grep -m8 -E "FAIL|differs|mismatch" "$OUT/t.log"; cat "$OUT/t.log" >>"$OUT/tests.log"; }
# most wanted first; each later step only while DEADLINE (s, default 540) allows
go() { [ $(( $(date +%s) - T0 + $1 )) -le "${DEADLINE:-540}" ] || { echo "$(el) deadline: skipped ${*:2}"; return 1; }; }
go 120 test_cuda_ops && t 150 ./$B/tests/test_cuda_ops
go 60 bench && { echo "$(el) bench_cuda_quant q16"; timeout 150 ./$B/tests/bench_cuda_quant 200 q16 $CFGS 2>&1 | tail -100; }
wait $SYN; tail -1 "$OUT/synth.log"
D=/tmp/synth-l8b-q4
for v in v2 v1; do
  go 60 "l8b-q4 $v" && echo "$(el) l8b-q4 $v: $(NMLX_CUDA_QGEMV16=$v timeout 120 ./$B/nmlx bench -m $D --device cuda -p 512 -n 128 -r 3 2>&1 | tail -1)"
done
go 60 test_cuda_fused && t 120 ./$B/tests/test_cuda_fused
go 90 test_cuda_fixtures && t 200 ./$B/tests/test_cuda_fixtures
if [ -n "$FULL" ]; then
  go 100 "test_cuda_ops v1" && NMLX_CUDA_QGEMV16=v1 t 150 ./$B/tests/test_cuda_ops
  go 100 memcheck && t 150 compute-sanitizer --tool memcheck ./$B/tests/test_cuda_fused
fi
echo "$(el) done"
