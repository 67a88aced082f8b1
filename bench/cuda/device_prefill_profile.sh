#!/bin/bash
# On the GPU machine (repo root, carry .deps): where a prefill's GPU time goes,
# kernel by kernel. Builds the CLI and bench_cuda_quant, writes a Llama-3.1-8B
# shape checkpoint with LAYERS layers (default 2; MLX 4-bit g64, BITS), times
# every kernel of `nmlx bench -p P -n 1` under ncu (gpu__time_duration only,
# so one replay a kernel) and prints the per-kernel sums (bench/cuda/
# kernel_sum.py), then the kernel benchmark (bench_cuda_quant, REPS).
#   OUT=dir [LAYERS=2] [BITS=4] [P=512] [N=1] [BATCH=] [ENVS="- NMLX_CUDA_QMM=gemm"] [KBENCH=1] bash bench/cuda/device_prefill_profile.sh
# ("-" in ENVS: the defaults; each other word one VAR=value setting)
# Decode: P=4 N=33 (32 decode steps dominate the sums). BATCH="8 32": also
# bench_cuda_batch's steps of that many sessions (16 steps each) under ncu.
# NCU_FLAGS="--cache-control none --clock-control none": kernels timed with
# warm caches at the running clock (ncu's defaults flush the caches and lock
# the base clock, which inflates small kernels).
set -o pipefail
OUT=${OUT:-/tmp/nmlx-prefill}
mkdir -p "$OUT"
. bench/device_deps.sh . >/dev/null
B=build-cuda-dev
cmake -B $B -G Ninja -DNMLX_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DNODE_EXECUTABLE=/bin/true >"$OUT/build.log" 2>&1 &&
  cmake --build $B -j16 --target nmlx-cli bench_cuda_quant bench_cuda_batch >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
D=/tmp/synth-l8b-q${BITS:-4}-${LAYERS:-2}L
[ -f $D/config.json ] || python3 bench/cuda/make_synth_llama.py $D 8b ${BITS:-4} 64 ${LAYERS:-2} | tail -1
for v in ${ENVS:--}; do
  echo "== $v: nmlx bench -p ${P:-512} -n ${N:-1} under ncu"
  [ "$v" = - ] && set -- || set -- $v # "-": the defaults
  f="$OUT/ncu-p${P:-512}n${N:-1}-${v//[^A-Za-z0-9]/_}.csv"
  env "$@" ncu ${NCU_FLAGS:-} --metrics gpu__time_duration.sum --csv ./$B/nmlx bench -m $D --device cuda -p ${P:-512} -n ${N:-1} -r 1 \
    >"$f" 2>"$OUT/ncu.err"
  python3 bench/cuda/kernel_sum.py "$f" | head -30
  for nb in ${BATCH:-}; do
    echo "== $v: bench_cuda_batch, $nb sessions, 16 steps, under ncu"
    f="$OUT/ncu-batch$nb-${v//[^A-Za-z0-9]/_}.csv"
    env "$@" ncu ${NCU_FLAGS:-} --metrics gpu__time_duration.sum --csv ./$B/tests/bench_cuda_batch $D 16 0 $nb cuda >"$f" 2>"$OUT/ncu.err"
    python3 bench/cuda/kernel_sum.py "$f" | head -30
  done
done
[ "${KBENCH:-1}" = 1 ] && timeout 200 ./$B/tests/bench_cuda_quant ${REPS:-50} 2>&1 | tee "$OUT/kbench.txt"
