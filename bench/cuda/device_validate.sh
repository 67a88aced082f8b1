#!/bin/bash
# On the GPU machine (repo root, carry .deps): the shortest full check, for a
# call with little device time. Builds the CLI, every CUDA test and the batch
# benchmark, runs `ctest -L cuda` (every CUDA test at the defaults, plus the
# qmm_kernel reruns; 3 at a time) with each test's time, then, while time is
# left (DEADLINE, default 420 s), the MoE shapes' speed with the experts op
# (default) and without it (NMLX_CUDA_MOE=0): nmlx bench -p 512 -n 128.
# Output lines go to stdout and $OUT/validate.log as they come (a cut call
# keeps them); ctest's log is $OUT/ctest.log.
#   OUT=dir [MOE="q30b-a3b gptoss20b"] [DEADLINE=420] bash bench/cuda/device_validate.sh
OUT=${OUT:-/tmp/nmlx-validate}
. bench/cuda/device_prelude.sh validate.log
cuda_build nmlx-cli test_cuda_ops test_cuda_fused test_cuda_fixtures test_cuda_batch \
  test_cuda_sample test_cuda_qgemm test_cuda_qrows test_cuda_moe test_cuda_threads bench_cuda_batch bench_cuda_quant
ctest --test-dir $B -L cuda -j3 --timeout 400 --output-on-failure >"$OUT/ctest.log" 2>&1
echo "$(el) ctest -L cuda rc=$?"
grep -E "Test +#|tests passed|FAIL" "$OUT/ctest.log" | head -30
grep -E "passed.*failed|[0-9]+ passed" "$B/Testing/Temporary/LastTest.log" | sort | uniq -c | head -20
for m in ${MOE-q30b-a3b gptoss20b}; do
  [ $(( $(date +%s) - T0 )) -gt "${DEADLINE:-420}" ] && { echo "deadline: $m not benched"; continue; }
  D=/tmp/synth-$m
  [ -f $D/config.json ] || python3 bench/cuda/make_synth_moe.py $D $([ $m = q30b-a3b ] && echo qwen3-30b-a3b || echo $m) | tail -1
  for v in NMLX_CUDA_MOE=1 NMLX_CUDA_MOE=0; do
    echo "$(el) $m $v: $(env $v ./$B/nmlx bench -m $D --device cuda -p 512 -n 128 -r 2 2>&1 | tail -1)"
  done
done
echo "$(el) done"
