#!/bin/bash
# On the GPU machine (repo root, carry .deps): validate and time the few-rows
# v2 kernel (cuda_qrows2.h, the default of cuda_qrows_mma.cu) against v1
# and v3 (cuda_qrows3.h, opt-in: x staged in the kernel, v2's bits).
# Steps: build; the CPU emulation; test_cuda_qrows (v1, v2 and v3 forms
# against the CPU, v3 = v2 bit for bit); bench_cuda_quant's few-rows table
# (v1, v2, v3 defaults, the NMLX_BENCH_QROWS_CFGS sweep: "v=3,..." items
# are v3's); bench_cuda_batch on a synthetic Llama-3.1-8B 4-bit g64 at 1,
# 8, 32 sessions, v2, v3, v1; test_cuda_batch (v2, then v3); compute-sanitizer
# memcheck and racecheck on a quick test_cuda_qrows; test_cuda_batch with
# v1. Stages past DEADLINE seconds (540) are skipped.
#   OUT=dir [CFGS="mt=..;..."] [BATCH=1,8,32] bash bench/cuda/device_qrows.sh
OUT=${OUT:-/tmp/nmlx-qrows}
. bench/cuda/device_prelude.sh qrows.log
synth8b
cuda_build test_qrows2_emu test_cuda_qrows test_cuda_batch bench_cuda_quant bench_cuda_batch
t_patterns 'passed|PASS|FAIL|error|qrows' 8 'FAIL|mismatch|ERROR'
# stages in order of need; each skipped once DEADLINE (default 540 s) has passed
ok() { [ $(( $(date +%s) - T0 )) -lt "${DEADLINE:-540}" ] || { echo "$(el) deadline: $* skipped"; return 1; }; }
t 60 ./$B/tests/test_qrows2_emu quick
t 240 ./$B/tests/test_cuda_qrows
ok rows bench && {
  echo "$(el) bench_cuda_quant rows"
  NMLX_BENCH_QROWS_CFGS="${CFGS-v=3,wr=2;v=3,wr=4;v=3,bps=4;v=3,bps=0;mt=4,wr=4;bps=4}" \
    timeout 200 ./$B/tests/bench_cuda_quant 100 rows >"$OUT/rows.txt" 2>&1; echo "$(el) rc=$? (all lines: \$OUT/rows.txt)"
  grep -E "step|CUDA ERROR|SKIP|failed" "$OUT/rows.txt"
  awk '$1 == "q4g64" && ($3 == 8 || $3 == 32)' "$OUT/rows.txt"
}
synth8b_wait
D=/tmp/synth-l8b-q4
for v in - NMLX_CUDA_QROWS=v3 NMLX_CUDA_QROWS=v1; do
  ok "batch bench $v" || break
  e=$v; [ "$v" = - ] && e=
  echo "$(el) bench_cuda_batch l8b-q4 ${v}"
  env $e timeout 120 ./$B/tests/bench_cuda_batch $D 32 0 "${BATCH-1,8,32}" cuda 2>&1 | tail -6
done
ok test_cuda_batch && t 240 ./$B/tests/test_cuda_batch
ok "test_cuda_batch v3" && NMLX_CUDA_QROWS=v3 t 240 ./$B/tests/test_cuda_batch
ok memcheck && NMLX_TEST_QROWS_QUICK=1 t 150 compute-sanitizer --tool memcheck ./$B/tests/test_cuda_qrows
ok racecheck && NMLX_TEST_QROWS_QUICK=1 t 150 compute-sanitizer --tool racecheck ./$B/tests/test_cuda_qrows
ok "test_cuda_batch v1" && NMLX_CUDA_QROWS=v1 t 240 ./$B/tests/test_cuda_batch
echo "$(el) done"
