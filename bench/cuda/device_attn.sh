#!/bin/bash
# On the GPU machine (repo root, carry .deps): validate and time the
# flash-decoding attention (cuda_attention_decode.cu, the default for
# decode) against the old kernels (NMLX_CUDA_ATTN_DECODE=old). Steps: build;
# bench_cuda_attn (kernel times at n_kv 64..8192, old / split / new);
# test_cuda_ops (every attention case on every kernel, recorded steps
# replayed at other lengths); the fixtures and the batch test, default and
# old; compute-sanitizer memcheck + racecheck on a short bench; then on
# synthetic Llama-3.1-8B 4-bit g64: decode tok/s at KV depths 16 / 512 /
# 2048 / 4096 (bench_cuda_depth) and nmlx bench pp512 / tg128, default vs
# old, while time is left (DEADLINE).
#   OUT=dir [DEADLINE=540] bash bench/cuda/device_attn.sh
OUT=${OUT:-/tmp/nmlx-attn}
. bench/cuda/device_prelude.sh attn.log
# the 8B checkpoint is written while the build runs
synth8b
cuda_build nmlx-cli test_cuda_ops test_cuda_fixtures test_cuda_batch bench_cuda_attn bench_cuda_depth
t_patterns 'passed|FAIL|error' 8 'FAIL|mismatch|did not run'
echo "$(el) bench_cuda_attn"
timeout 120 ./$B/tests/bench_cuda_attn 20 2>&1
t 200 ./$B/tests/test_cuda_ops
grep -E "attention graph|attention .*decode rel|^attention +worst" "$OUT/t.log" | head -12
t 200 ./$B/tests/test_cuda_fixtures
NMLX_CUDA_ATTN_DECODE=old t 200 ./$B/tests/test_cuda_fixtures
t 120 ./$B/tests/test_cuda_batch
NMLX_CUDA_ATTN_DECODE=old t 120 ./$B/tests/test_cuda_batch
t 150 compute-sanitizer --tool memcheck ./$B/tests/bench_cuda_attn 1 2
t 150 compute-sanitizer --tool racecheck ./$B/tests/bench_cuda_attn 1 2
grep -m3 -E "ERROR SUMMARY|RACECHECK SUMMARY|hazard" "$OUT/tests.log" | tail -3
synth8b_wait
D=/tmp/synth-l8b-q4
# decode tok/s at KV depths 16..4096 (recorded step graphs), new then old
for v in - NMLX_CUDA_ATTN_DECODE=old; do
  [ $(( $(date +%s) - T0 )) -gt "${DEADLINE:-540}" ] && { echo "deadline"; break; }
  e=$v; [ "$v" = - ] && e=
  env $e timeout 150 ./$B/tests/bench_cuda_depth $D cuda 16,512,2048,4096 64 2>&1 | tail -5
done
for v in - NMLX_CUDA_ATTN_DECODE=old; do
  [ $(( $(date +%s) - T0 )) -gt "${DEADLINE:-540}" ] && { echo "deadline"; break; }
  e=$v; [ "$v" = - ] && e=
  echo "$(el) l8b-q4 ${v}: $(env $e ./$B/nmlx bench -m $D --device cuda -p 512 -n 128 -r 2 2>&1 | tail -1)"
done
echo "$(el) done"
