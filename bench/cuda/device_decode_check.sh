#!/bin/bash
# On the GPU machine (repo root, carry .deps): one call that validates and
# times the decode-side kernels together (int16 mat-vec v2, flash-decoding
# attention, few-rows mat-mat v2, norms in registers, rope_kv_rows) against
# their old forms. In priority order under DEADLINE (default 560 s):
#   1. build the CLI, every CUDA test and the benchmarks;
#   2. kernel tables: bench_cuda_quant q16 (mat-vec configs vs v1),
#      bench_cuda_quant rows (few-rows configs vs v1), bench_cuda_attn;
#   3. ctest -L cuda (every CUDA test at the new defaults, 3 at a time);
#   4. synthetic Llama-3.1-8B 4-bit g64: nmlx bench pp512/tg128 with the
#      defaults and with the old kernels (OLD), bench_cuda_batch 1,8,32 with
#      the defaults and the old few-rows kernel, bench_cuda_depth;
#   5. compute-sanitizer memcheck of test_cuda_fused and bench_cuda_attn.
#   OUT=dir [DEADLINE=560] [OLD="NMLX_CUDA_QGEMV16=v1 ..."] [KBENCH=0] [MODELS="l8b-q8 l1b-q4"]
#     [DEPTH=0] bash bench/cuda/device_decode_check.sh
#   KBENCH=0 skips step 2; OLD= (empty) benches the defaults only; MODELS: more
#   synthetic checkpoints (make_synth_llama.py names: l1b-q4, l8b-q8, l1b-bf16, ...)
#   benched with the defaults after the 8B 4-bit.
OUT=${OUT:-/tmp/nmlx-decode}
DEADLINE=${DEADLINE:-560}
. bench/cuda/device_prelude.sh check.log
synth8b
TESTS=$(ls tests/cuda/test_*.c | xargs -n1 basename | sed 's/\.c$//')
cuda_build nmlx-cli $TESTS bench_cuda_quant bench_cuda_attn bench_cuda_depth bench_cuda_batch
[ "${KBENCH:-1}" = 1 ] && go 60 q16 && { echo "$(el) bench_cuda_quant 200 q16"; timeout 150 ./$B/tests/bench_cuda_quant 100 q16 ${Q16_CFGS:-} 2>&1 | tee "$OUT/q16.txt" | grep -E "v1|d8b2,d4b2|a16b2,a8b2|d4b2r2|DIFFERS|ERROR" | head -50; }
[ "${KBENCH:-1}" = 1 ] && go 60 rows && {
  echo "$(el) bench_cuda_quant 50 rows"
  NMLX_BENCH_QROWS_CFGS="${ROWS_CFGS-bps=4;mt=2,wr=1}" timeout 150 ./$B/tests/bench_cuda_quant 50 rows >"$OUT/rows.txt" 2>&1
  echo "$(el) rc=$? (all lines: \$OUT/rows.txt)"
  grep -E "step|CUDA ERROR|SKIP|failed" "$OUT/rows.txt"
  awk '$1 == "q4g64" && ($3 == 8 || $3 == 32)' "$OUT/rows.txt"
}
[ "${KBENCH:-1}" = 1 ] && go 40 attn && { echo "$(el) bench_cuda_attn 20"; timeout 90 ./$B/tests/bench_cuda_attn 20 2>&1 | tail -30; }
[ "${CTEST:-1}" = 1 ] && go 150 ctest && {
  ctest --test-dir $B -L cuda -j3 --timeout 240 >"$OUT/ctest.log" 2>&1
  echo "$(el) ctest -L cuda rc=$?"
  grep -E "Test +#|tests passed|FAIL" "$OUT/ctest.log" | head -30
  grep -E "[0-9]+ passed, [0-9]+ failed|differs|DIFFERS" "$B/Testing/Temporary/LastTest.log" | sort | uniq -c | head -30
  grep -B2 -A8 -E "^FAIL|: FAIL" "$B/Testing/Temporary/LastTest.log" | head -60
}
synth8b_wait
D=/tmp/synth-l8b-q4
OLD=${OLD-NMLX_CUDA_QGEMV16=v1 NMLX_CUDA_ATTN_DECODE=old NMLX_CUDA_QROWS=v1}
for v in - ${OLD:+"$OLD"}; do
  go 40 "nmlx bench $v" || break
  e=$v; [ "$v" = - ] && e=
  echo "$(el) l8b-q4 ${v}: $(env $e timeout 100 ./$B/nmlx bench -m $D --device cuda -p 512 -n 128 -r 3 2>&1 | tail -1)"
done
for v in - ${OLD:+NMLX_CUDA_QROWS=v1}; do
  go 60 "batch $v" || break
  e=$v; [ "$v" = - ] && e=
  echo "$(el) bench_cuda_batch ${v}"; env $e timeout 120 ./$B/tests/bench_cuda_batch $D 32 0 1,8,32 cuda 2>&1 | tail -6
done
for v in $([ "${DEPTH:-1}" = 1 ] && echo - ${OLD:+NMLX_CUDA_ATTN_DECODE=old}); do
  go 50 "depth $v" || break
  e=$v; [ "$v" = - ] && e=
  echo "$(el) bench_cuda_depth ${v}"; env $e timeout 100 ./$B/tests/bench_cuda_depth $D cuda 16,512,2048,4096 64 2>&1 | tail -6
done
rm -rf $D
for m in ${MODELS:-}; do
  go 60 "$m" || break
  M=/tmp/synth-$m
  case $m in
    l1b-bf16|l8b-bf16) python3 bench/cuda/make_synth_llama.py $M ${m:1:2} 0 | tail -1 ;;
    *) python3 bench/cuda/make_synth_llama.py $M ${m:1:2} ${m#*-q} 64 | tail -1 ;;
  esac
  echo "$(el) $m: $(timeout 100 ./$B/nmlx bench -m $M --device cuda -p 512 -n 128 -r 3 2>&1 | tail -1)"
  rm -rf $M
done
go 40 memcheck && {
  NMLX_TEST_QMM_QUICK=1 timeout 60 compute-sanitizer --tool memcheck ./$B/tests/test_cuda_fused 2>&1 | grep -E "ERROR SUMMARY|passed" | tail -2
  timeout 60 compute-sanitizer --tool memcheck ./$B/tests/bench_cuda_attn 1 2 2>&1 | grep -E "ERROR SUMMARY" | tail -1
}
echo "$(el) done"
