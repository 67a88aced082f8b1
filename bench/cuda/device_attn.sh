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
set -o pipefail
OUT=${OUT:-/tmp/nmlx-attn}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/attn.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s]"; }
nvidia-smi --query-gpu=name --format=csv,noheader
. bench/device_deps.sh .
B=build-cuda-dev
# the 8B checkpoint is written while the build runs
python3 bench/cuda/make_synth_llama.py /tmp/synth-l8b-q4 8b 4 64 >"$OUT/synth.log" 2>&1 &
SYN=$!
cmake -B $B -G Ninja -DNMLX_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DNODE_EXECUTABLE=$(command -v node || echo /bin/true) >"$OUT/build.log" 2>&1 &&
  cmake --build $B -j16 --target nmlx-cli test_cuda_ops test_cuda_fixtures test_cuda_batch bench_cuda_attn bench_cuda_depth >>"$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; exit 1; }
echo "$(el) build ok"
export NMLX_SOURCE_DIR=$PWD
t() { timeout "$1" "${@:2}" >"$OUT/t.log" 2>&1; echo "$(el) rc=$? $*: $(grep -E 'passed|FAIL|error' "$OUT/t.log" | tail -3 | tr '\n' ' ')"; grep -m8 -E "FAIL|mismatch|did not run" "$OUT/t.log"; cat "$OUT/t.log" >>"$OUT/tests.log"; }
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
wait $SYN; tail -1 "$OUT/synth.log"
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
