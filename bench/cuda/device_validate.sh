#!/bin/bash
# On the GPU machine (repo root, carry .deps): the shortest check of the
# opt-in CUDA paths (each off by default until it has passed here), for a
# call with little device time. Builds only what it runs, then in order of
# value: test_cuda_qrows (few-rows tensor-core mat-mat), test_cuda_batch
# through it (NMLX_CUDA_QROWS_MMA_T=64) and with batched graphs, test_cuda_moe
# and the MoE fixtures (NMLX_CUDA_MOE=1), every fixture with the norm folded
# into the mat-vec and PDL (NMLX_CUDA_NORM_MATMUL=1 NMLX_CUDA_PDL=1), then
# bench_cuda_batch on the Llama-3.1-8B shape 4-bit with and without the new
# kernel, and nmlx bench with and without PDL / the norm fold. Output lines
# go to stdout and $OUT/validate.log as they come (a cut call keeps them).
#   OUT=dir bash bench/cuda/device_validate.sh
set -o pipefail
OUT=${OUT:-/tmp/nmlx-validate}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/validate.log") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s]"; }
nvidia-smi --query-gpu=name --format=csv,noheader
. bench/device_deps.sh .
B=build-cuda-dev
cmake -B $B -G Ninja -DNMLX_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DNODE_EXECUTABLE=$(command -v node || echo /bin/true) >"$OUT/build.log" 2>&1 &&
  cmake --build $B -j16 --target nmlx-cli test_cuda_qrows test_cuda_batch test_cuda_moe \
    test_cuda_fixtures bench_cuda_batch >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "$(el) build ok"
export NMLX_SOURCE_DIR=$PWD
t() { # name, env..., binary
  local name=$1; shift
  env "$@" >"$OUT/$name.log" 2>&1
  echo "$(el) $name rc=$?: $(grep -E "passed" "$OUT/$name.log" | tail -1)"
  grep -E "^FAIL|FAIL:|qrows:|worst" "$OUT/$name.log" | head -6
}
t qrows ./$B/tests/test_cuda_qrows
t batch_qrows NMLX_CUDA_QROWS_MMA_T=64 ./$B/tests/test_cuda_batch
t moe ./$B/tests/test_cuda_moe
t fixtures_moe NMLX_CUDA_MOE=1 NMLX_TEST_FIXTURES=gpt_oss,qwen3_moe ./$B/tests/test_cuda_fixtures
t fixtures_norm_pdl NMLX_CUDA_NORM_MATMUL=1 NMLX_CUDA_PDL=1 ./$B/tests/test_cuda_fixtures
t batch_graph NMLX_CUDA_BATCH_GRAPH=1 NMLX_CUDA_QROWS_MMA_T=64 ./$B/tests/test_cuda_batch
D=/tmp/synth-l8b-q4
python3 bench/cuda/make_synth_llama.py $D 8b 4 64 | tail -1
for v in NMLX_CUDA_QROWS_MMA_T=0 NMLX_CUDA_QROWS_MMA_T=64 "NMLX_CUDA_QROWS_MMA_T=64 NMLX_CUDA_BATCH_GRAPH=1"; do
  echo "$(el) bench_cuda_batch $v"
  env $v ./$B/tests/bench_cuda_batch $D 32 0 1,8,32 cuda 2>&1 | tail -4
done
for v in NMLX_CUDA_PDL=0 NMLX_CUDA_PDL=1 "NMLX_CUDA_PDL=1 NMLX_CUDA_NORM_MATMUL=1" NMLX_CUDA_NORM_MATMUL=1; do
  echo "$(el) nmlx bench $v: $(env $v ./$B/nmlx bench -m $D --device cuda -p 512 -n 128 -r 3 2>&1 | tail -1)"
done
echo "$(el) done"
