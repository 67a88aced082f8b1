#!/bin/bash
# On the GPU machine (repo root, carry .deps): where the decode-side kernels'
# warps wait (ncu sections SpeedOfLight, Occupancy, WarpStateStats,
# LaunchStats; warm caches, running clock; bench/cuda/ncu_stalls.py prints
# each launch). Three views:
#   1. the few-rows mat-mat of a batched step (bench_cuda_quant rows, q4,
#      4096x4096 and fused gate/up, T = 8: its x split and the kernel);
#   2. the kernels of one decode token, Llama-3.1-8B shape with LAYERS
#      layers (default 2), `nmlx bench -p 4 -n 3`, the last token's launches;
#   3. wall time a token of the 32-layer model (nmlx bench -p 4 -n 128), so
#      the kernels' sum can be set against it.
#   OUT=dir [LAYERS=2] bash bench/cuda/device_stalls.sh
OUT=${OUT:-/tmp/nmlx-stalls}
DEADLINE=${DEADLINE:-540}
. bench/cuda/device_prelude.sh stalls.log
cuda_build nmlx-cli bench_cuda_quant bench_cuda_batch
SEC="--section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats"
NCU="ncu --cache-control none --clock-control none $SEC --page raw --csv"
for s in 0 2; do
  go 60 "rows shape $s" || break
  echo "$(el) == few-rows, q4, shape $s, T = 8 (launches after the warm-up)"
  NMLX_BENCH_ROWS_ONLY=0,$s,2,1 $NCU -k regex:'qrows|qx_split' --launch-skip 10 --launch-count 6 \
    ./$B/tests/bench_cuda_quant 3 rows >"$OUT/rows$s.csv" 2>"$OUT/ncu.err"
  python3 bench/cuda/ncu_stalls.py "$OUT/rows$s.csv" || tail -5 "$OUT/ncu.err"
done
D=/tmp/synth-l8b-q4-${LAYERS:-2}L
[ -f $D/config.json ] || python3 bench/cuda/make_synth_llama.py $D 8b 4 64 ${LAYERS:-2} | tail -1
go 90 "decode token kernels" && {
  echo "$(el) == one decode token, ${LAYERS:-2} layers (kernels after the first 2 tokens)"
  # per token: LAYERS x ~8 kernels + embed, head, sampling; skip prefill + 2 tokens
  $NCU ./$B/nmlx bench -m $D --device cuda -p 4 -n 4 -r 1 >"$OUT/token.csv" 2>"$OUT/ncu.err"
  python3 bench/cuda/ncu_stalls.py "$OUT/token.csv" 4 | tail -n 60
}
go 120 "32-layer wall" && {
  synth8b; synth8b_wait
  for v in - NMLX_CUDA_PDL=1 NMLX_CUDA_GRAPH=0; do
    [ "$v" = - ] && set -- || set -- $v
    echo "$(el) $v: $(env "$@" ./$B/nmlx bench -m /tmp/synth-l8b-q4 --device cuda -p 4 -n 128 -r 3)"
  done
  echo "$(el) bench_cuda_batch 8 sessions: $(./$B/tests/bench_cuda_batch /tmp/synth-l8b-q4 32 0 1,8 cuda 2>&1 | tail -3 | tr '\n' ' ')"
}
echo "$(el) done"
