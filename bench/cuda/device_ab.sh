#!/bin/bash
# On the GPU machine (repo root, carry .deps): the opt-in decode paths written
# without a GPU (session 15), checked and timed against the defaults in one
# call, so the next session can pick new defaults from one measurement.
# In priority order under DEADLINE (default 560 s):
#   1. build the CLI, the CUDA tests that cover the new paths, the benchmarks;
#   2. those tests: test_cuda_fused (add_rmsnorm with its weight loaded
#      early), test_cuda_ops (decode attention: idle blocks out and one
#      block's direct output, on by default), test_cuda_qrows (few-rows v3
#      = v2 bit for bit), test_cuda_batch with NMLX_CUDA_QROWS=v3;
#   3. synthetic Llama-3.1-8B and Llama-3.2-1B 4-bit g64: `nmlx bench -p 512
#      -n 128 -r 3` under each setting of VARIANTS, engines' defaults first
#      and last (drift check); bench_cuda_batch 1,8,32 with the few-rows v2
#      and v3 and with the buffer cache;
#   4. kernel tables: bench_cuda_quant rows (v1 / v2 / v3), bench_cuda_attn.
# NMLX_CUDA_QMM_ROWS=2048 / 1024 (prefill): the dequantized f16 chunk of the
# quantized mat-mat (default up to 8192 x 4096 = 64 MB) small enough to stay
# in the H100's 50 MB L2 between the dequantization and the GEMM.
#   OUT=dir [DEADLINE=560] [VARIANTS="..."] [MODELS="l8b-q4 l1b-q4"] bash bench/cuda/device_ab.sh
# AB_TESTS="test_a test_b": those CUDA tests instead of step 2's list; a word
# may carry settings joined by '+', e.g. NMLX_CUDA_NORM_MATMUL=1+test_cuda_fixtures;
# BATCH_VARIANTS (default "- NMLX_CUDA_QROWS=v3 NMLX_CUDA_BUF_CACHE=1", "" none);
# TABLES=0 leaves step 4 out. MODELS may name l1b-bf16 / l8b-bf16 / l*b-q8 too;
# a checkpoint device_gpu_peer.sh wrote in this machine's /tmp/gpu-peer-synth is reused.
# A VARIANTS word is one setting or several joined by '+', e.g.
# NMLX_CUDA_NORM_MATMUL=1+NMLX_CUDA_PDL=0; "-" is the defaults.
OUT=${OUT:-/tmp/nmlx-ab}
DEADLINE=${DEADLINE:-560}
. bench/cuda/device_prelude.sh ab.log
M8=/tmp/synth-l8b-q4 # the 8B 4-bit: bench_cuda_batch's too
[ -f /tmp/gpu-peer-synth/l8b-q4/config.json ] && M8=/tmp/gpu-peer-synth/l8b-q4
[ -f $M8/config.json ] || synth8b
if [ -n "${AB_TESTS:-}" ]; then
  cuda_build nmlx-cli $(for x in $AB_TESTS; do echo "${x##*+}"; done | sort -u) bench_cuda_quant bench_cuda_attn bench_cuda_batch
else
  cuda_build nmlx-cli test_cuda_fused test_cuda_ops test_cuda_qrows test_cuda_batch bench_cuda_quant \
    bench_cuda_attn bench_cuda_batch
fi
t_patterns 'passed|FAIL|error' 8 'FAIL|mismatch|differ'
if [ -n "${AB_TESTS:-}" ]; then
  for x in $AB_TESTS; do
    e=${x%"${x##*+}"}; e=${e//+/ }
    go 90 "$x" && t 200 env $e ./$B/tests/${x##*+}
  done
else
  go 60 fused && t 120 ./$B/tests/test_cuda_fused
  go 90 ops && t 150 ./$B/tests/test_cuda_ops # the decode attention's new default (idle blocks out, nb == 1 direct)
  go 60 qrows && t 120 ./$B/tests/test_cuda_qrows
  go 60 batch && t 120 env NMLX_CUDA_QROWS=v3 ./$B/tests/test_cuda_batch
fi
VARIANTS=${VARIANTS:-"- NMLX_CUDA_NORM_MATMUL=1 NMLX_CUDA_PDL=1 NMLX_CUDA_QMM_ROWS=2048 NMLX_CUDA_QMM_ROWS=1024 -"}
[ -n "${SYN:-}" ] && synth8b_wait
for m in ${MODELS:-l8b-q4 l1b-q4}; do
  M=/tmp/synth-$m
  [ -f $M/config.json ] || [ ! -f /tmp/gpu-peer-synth/$m/config.json ] || M=/tmp/gpu-peer-synth/$m
  case $m in
    *-bf16) [ -f $M/config.json ] || python3 bench/cuda/make_synth_llama.py $M ${m:1:2} 0 | tail -1 ;;
    *) [ -f $M/config.json ] || python3 bench/cuda/make_synth_llama.py $M ${m:1:2} ${m#*-q} 64 | tail -1 ;;
  esac
  for v in $VARIANTS; do
    go 25 "$m $v" || break
    e=${v//+/ }; [ "$v" = - ] && e=
    echo "$(el) $m $v: $(env $e timeout 60 ./$B/nmlx bench -m $M --device cuda -p 512 -n 128 -r 3 2>&1 | tail -1)"
  done
done
for v in ${BATCH_VARIANTS-- NMLX_CUDA_QROWS=v3 NMLX_CUDA_BUF_CACHE=1}; do
  go 50 "batch $v" || break
  e=$v; [ "$v" = - ] && e=
  echo "$(el) bench_cuda_batch ${v}"; env $e timeout 100 ./$B/tests/bench_cuda_batch $M8 32 0 1,8,32 cuda 2>&1 | tail -5
done
[ "${TABLES:-1}" = 1 ] && go 60 rows && {
  echo "$(el) bench_cuda_quant 50 rows (v1 / v2 / v3)"
  timeout 150 ./$B/tests/bench_cuda_quant 50 rows >"$OUT/rows.txt" 2>&1
  grep -E "step|CUDA ERROR|SKIP|failed" "$OUT/rows.txt"
  awk '$1 == "q4g64" && ($3 == 8 || $3 == 2)' "$OUT/rows.txt"
}
[ "${TABLES:-1}" = 1 ] && go 40 attn && { echo "$(el) bench_cuda_attn 20"; timeout 90 ./$B/tests/bench_cuda_attn 20 2>&1 | tail -40 >"$OUT/attn.txt"; cat "$OUT/attn.txt"; }
echo "$(el) done"
