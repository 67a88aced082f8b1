#!/bin/bash
# On the GPU machine (repo root, carry .deps): validate and time the fused
# dequantizing GEMM (NMLX_CUDA_QMM=fused, cuda_qmm_fused.cu) against the
# default f16 GEMM (gemm1). Steps: build; test_cuda_qmm_fused; test_cuda_ops
# with the fused form; compute-sanitizer memcheck and racecheck on a quick
# test run; bench_cuda_quant (kernel times, 128 and 64 tiles); nmlx bench
# pp512/tg128 on synthetic Llama-3.1-8B 4-bit and 8-bit g64, default vs fused;
# then ncu per-kernel sums of a decode and an 8-session batched decode
# (device_prefill_profile.sh, 2 layers) while time is left (PDEADLINE).
#   OUT=dir [MODELS="q4 q8"] bash bench/cuda/device_fused.sh
OUT=${OUT:-/tmp/nmlx-fused}
. bench/cuda/device_prelude.sh fused.log
# the 8B checkpoint is written while the build runs
synth8b
cuda_build nmlx-cli test_cuda_qmm_fused test_cuda_ops test_cuda_qgemm bench_cuda_quant
t_patterns 'passed|FAIL|error' 5 'FAIL|mismatch'
t 120 ./$B/tests/test_cuda_qmm_fused
NMLX_CUDA_QMM=fused t 150 ./$B/tests/test_cuda_ops
NMLX_TEST_QMM_QUICK=1 t 150 compute-sanitizer --tool memcheck ./$B/tests/test_cuda_qmm_fused
NMLX_TEST_QMM_QUICK=1 t 150 compute-sanitizer --tool racecheck ./$B/tests/test_cuda_qmm_fused
echo "$(el) bench_cuda_quant"
timeout 100 ./$B/tests/bench_cuda_quant 200 2>&1 | tail -25
NMLX_CUDA_QMM_TILE=64 timeout 60 ./$B/tests/bench_cuda_quant 200 2>&1 | grep -i fused | tail -8
synth8b_wait
for m in ${MODELS-q4 q8}; do
  D=/tmp/synth-l8b-$m
  [ -f $D/config.json ] || python3 bench/cuda/make_synth_llama.py $D 8b ${m#q} 64 | tail -1
  for v in - NMLX_CUDA_QMM=fused; do
    [ $(( $(date +%s) - T0 )) -gt "${DEADLINE:-500}" ] && { echo "deadline"; break 2; }
    e=$v; [ "$v" = - ] && e=
    echo "$(el) l8b-$m ${v}: $(env $e ./$B/nmlx bench -m $D --device cuda -p 512 -n 128 -r 3 2>&1 | tail -1)"
  done
  rm -rf $D
done
# where a decode step and an 8-session batched step go (2-layer 8B, ncu)
if [ $(( $(date +%s) - T0 )) -lt "${PDEADLINE:-420}" ]; then
  OUT=$OUT/prof LAYERS=2 P=4 N=33 BATCH=8 KBENCH=0 timeout 150 bash bench/cuda/device_prefill_profile.sh
fi
echo "$(el) done"
