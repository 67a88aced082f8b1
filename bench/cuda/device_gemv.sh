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
OUT=${OUT:-/tmp/nmlx-gemv}
DEADLINE=${DEADLINE:-540}
. bench/cuda/device_prelude.sh gemv.log
synth8b
cuda_build nmlx-cli test_cuda_ops test_cuda_fused test_cuda_fixtures bench_cuda_quant
t_patterns 'passed|FAIL|error' 8 'FAIL|differs|mismatch'
# most wanted first; each later step only while DEADLINE (s, default 540) allows
go 120 test_cuda_ops && t 150 ./$B/tests/test_cuda_ops
go 60 bench && { echo "$(el) bench_cuda_quant q16"; timeout 150 ./$B/tests/bench_cuda_quant 200 q16 $CFGS 2>&1 | tail -100; }
synth8b_wait
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
