#!/bin/bash
# On the GPU machine (repo root): build with -DNMLX_CUDA=ON, run the CUDA
# tests (test_cuda_ops, test_cuda_fused, test_cuda_fixtures, test_cuda_batch, test_cuda_sample,
# test_cuda_qgemm, test_cuda_moe; test_cuda_ops, the fixtures and the batch test again with
# NMLX_CUDA_QMM=mma (qmm_kernel instead of the default cuBLAS mat-mat); the MoE fixtures with
# NMLX_CUDA_MOE=sorted and 0: what `ctest -L cuda` runs and more), then
# `nmlx bench --device cuda` on synthetic checkpoints at real shapes.
# Results land in $OUT (build log, test logs, bench JSON lines).
#   BENCH="l1b-q4 l8b-q4 l8b-q8"  which synthetic models to bench (default):
#     qwen3-bf16 = Qwen3-0.6B bf16 (make_synth_qwen3.py, needs torch);
#     l1b-qB / l8b-qB = Llama-3.2-1B / Llama-3.1-8B MLX affine B-bit g64
#     (make_synth_llama.py); l1b-bf16 / l8b-bf16 = the same shapes in bf16;
#     gptoss20b-mxfp4 = GPT-OSS-20B, MXFP4 experts + 8-bit g64 rest (12.1 GB),
#     q30b-a3b-q4 = Qwen3-30B-A3B, 4-bit g64 (17.2 GB) (make_synth_moe.py,
#     mlx-community's layouts; bench/cuda/device_gpu_peer.sh runs llama.cpp on
#     the same shapes).
#   Quantized models are also benched with NMLX_CUDA_QMM=bf16 (prefill with
#   x rounded to bf16 instead of the exact hi+lo split).
#   BATCH="1,8,32": batched decode sizes benched on each model (bench_batch.c:
#     aggregate tok/s of N sessions against one alone); BATCH= skips it.
#   VARIANTS="NMLX_CUDA_GRAPH=0 ...": each model also benched with each of
#   these environment settings (default: without the decode graphs, without the
#   tiled prefill attention, and NMLX_FUSED=0: without the fused ops, to measure
#   what each default saves);
#   MVARIANTS (MoE models only; default NMLX_CUDA_MOE=0, the generic expert path, and
#   NMLX_CUDA_MOE=sorted, the moe_experts op's prefill form at every size).
#   QVARIANTS (quantized models only; default NMLX_CUDA_QGEMV=f32, the f32-x
#   mat-vec, NMLX_CUDA_QMM=mma, qmm_kernel instead of the default cuBLAS GEMMs
#   on row chunks dequantized to f16 hi + lo, and NMLX_CUDA_QMM=gemm1, one GEMM
#   of W hi by x hi, NMLX_CUDA_NORM_MATMUL=1, the residual add + norm staged by
#   the int16 mat-vec, and NMLX_CUDA_PDL=1, the mat-vec launched early (both opt-in);
#   NMLX_CUDA_QMM=bf16 is qmm_kernel with x rounded to bf16,
#   NMLX_CUDA_QMM=gemm16 the GEMMs with W hi only).
#   BATCH_VARIANTS (quantized models; default NMLX_CUDA_QROWS_MMA_T=0, the
#   batch's mat-mats without the few-rows tensor-core kernel (f32 rows kernel up
#   to 8, cuBLAS beyond), and NMLX_CUDA_QMM=gemm1): the batch benchmark again.
#   PROFILE=0: skip the per-op time tables (NMLX_PROFILE) of one decode and of
#   PROFILE_BATCH (default "8 32") sessions, appended to $OUT/profile.txt.
#   KBENCH=0: skip the kernel benchmark (bench_qmatmul.c, Llama-3.1-8B shapes).
#   SANITIZE=1: compute-sanitizer memcheck on a quantized fixture run.
#   AMX=1: the host CPU's AMX prefill kernels tested on cores 8-15 meanwhile
#   (kernel tests, then test_precision: the pick, 3 terms, 1 term forced).
#   QUICK=1: only the tests of the quantized mat-mats (test_cuda_qgemm, test_cuda_ops /
#   fixtures / batch with NMLX_CUDA_QMM=mma and gemm1), of the MoE experts op
#   (test_cuda_moe, the MoE fixtures with each of its forms), test_cuda_fused and
#   test_cuda_fixtures (the norm folded into the mat-vec), to leave the
#   call's time to the benchmarks.
#   QUICK=2: as QUICK=1 without the mat-mats' retests (test_cuda_qgemm, the mma
#   and gemm1 reruns): only what changed since they last passed.
#   DEADLINE=420: no model's benchmarks start after this many seconds (the
#   device runs a command for 600 s at most).
set -o pipefail
OUT=${OUT:-/tmp/nmlx-cuda-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# jansson, pcre2, utf8proc from .deps/ where the image lacks them
. bench/device_deps.sh .
B=build-cuda-dev
T0=$(date +%s)
cmake -B $B -G Ninja -DNMLX_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DNODE_EXECUTABLE=$(command -v node || echo /bin/true) >"$OUT/build.log" 2>&1 &&
  cmake --build $B -j16 --target nmlx-cli test_cuda_ops test_cuda_fused test_cuda_fixtures test_cuda_batch test_cuda_sample test_cuda_qgemm test_cuda_qmm_fused test_cuda_qrows test_cuda_moe bench_cuda_quant bench_cuda_batch >>"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build ok ($(( $(date +%s) - T0 )) s)"
export NMLX_SOURCE_DIR=$PWD
if [ "${QUICK:-0}" = 0 ]; then
  ./$B/tests/test_cuda_ops >"$OUT/ops.log" 2>&1; echo "test_cuda_ops rc=$?"
  tail -20 "$OUT/ops.log" | grep -E "worst"
  grep -E "FAIL|worst|passed" "$OUT/ops.log" | tail -30
  # the opt-in 8-rows-a-warp batched quantized mat-vec must give the same sums
  NMLX_CUDA_QROWS_R=8 ./$B/tests/test_cuda_ops >/tmp/ops_r8.log 2>&1
  echo "test_cuda_ops NMLX_CUDA_QROWS_R=8 rc=$?: $(grep -E "passed" /tmp/ops_r8.log | tail -1)"
  grep FAIL /tmp/ops_r8.log | head -5
fi
# qmm_kernel (NMLX_CUDA_QMM=mma) instead of the default cuBLAS mat-mat for every T > 8 qmatmul
# (the few-rows tensor-core kernel off: it would take 2..64 rows; so in the mma and gemm1 reruns)
if [ "${QUICK:-0}" != 2 ]; then
  NMLX_CUDA_QMM=mma NMLX_CUDA_QROWS_MMA_T=0 ./$B/tests/test_cuda_ops >/tmp/ops_mma.log 2>&1
  echo "test_cuda_ops NMLX_CUDA_QMM=mma rc=$?: $(grep -E "passed" /tmp/ops_mma.log | tail -1)"
  grep -E "FAIL|qmatmul " /tmp/ops_mma.log | head -8
  ./$B/tests/test_cuda_qgemm >"$OUT/qgemm.log" 2>&1; echo "test_cuda_qgemm rc=$?"
  grep -E "FAIL|^qgemm|passed" "$OUT/qgemm.log" | tail -12
  # the fused quantized mat-mat (NMLX_CUDA_QMM=fused, cuda_qmm_fused.cu), alone and as every
  # T > 64 qmatmul of test_cuda_ops
  ./$B/tests/test_cuda_qmm_fused >"$OUT/qmm_fused.log" 2>&1; echo "test_cuda_qmm_fused rc=$?"
  grep -E "FAIL|^fused|^gemm1|^precision|passed" "$OUT/qmm_fused.log" | tail -12
  NMLX_CUDA_QMM=fused ./$B/tests/test_cuda_ops >/tmp/ops_fused.log 2>&1
  echo "test_cuda_ops NMLX_CUDA_QMM=fused rc=$?: $(grep -E "passed" /tmp/ops_fused.log | tail -1)"
  grep -E "FAIL|qmatmul " /tmp/ops_fused.log | head -8
fi
# the few-rows tensor-core mat-mat (cuda_qrows_mma.cu) against the CPU, and the
# batched decode through it (sessions equal to each alone)
./$B/tests/test_cuda_qrows >"$OUT/qrows.log" 2>&1; echo "test_cuda_qrows rc=$?"
grep -E "FAIL|^qrows|passed" "$OUT/qrows.log" | tail -8
NMLX_CUDA_QROWS_MMA_T=64 ./$B/tests/test_cuda_batch >/tmp/batch_qrows.log 2>&1
echo "test_cuda_batch NMLX_CUDA_QROWS_MMA_T=64 rc=$?: $(grep -c '^FAIL' /tmp/batch_qrows.log) FAIL lines; $(grep -E "passed" /tmp/batch_qrows.log | tail -1)"
grep -E "^FAIL" /tmp/batch_qrows.log | head -8
# batched steps captured as graphs (opt-in NMLX_CUDA_BATCH_GRAPH=1), with the kernel above
NMLX_CUDA_BATCH_GRAPH=1 NMLX_CUDA_QROWS_MMA_T=64 ./$B/tests/test_cuda_batch >/tmp/batch_bgraph.log 2>&1
echo "test_cuda_batch NMLX_CUDA_BATCH_GRAPH=1 rc=$?: $(grep -c '^FAIL' /tmp/batch_bgraph.log) FAIL lines; $(grep -E "passed" /tmp/batch_bgraph.log | tail -1)"
grep -E "^FAIL" /tmp/batch_bgraph.log | head -8
# the MoE experts op (cuda_moe.cu) against the CPU's generic path, both forms
./$B/tests/test_cuda_moe >"$OUT/moe.log" 2>&1; echo "test_cuda_moe rc=$?"
grep -E "FAIL|worst|passed" "$OUT/moe.log" | tail -12
# the MoE fixtures through each form of the op (1: decode form; sorted:
# prefill form; 0: the generic path)
for m in 1 sorted 0; do
  export NMLX_CUDA_MOE=$m
  NMLX_TEST_FIXTURES=gpt_oss,qwen3_moe ./$B/tests/test_cuda_fixtures >/tmp/fixtures_moe_$m.log 2>&1
  echo "test_cuda_fixtures MoE NMLX_CUDA_MOE=$m rc=$?: $(grep -E "passed" /tmp/fixtures_moe_$m.log | tail -1)"
  grep -E "FAIL|MISMATCH|moe_experts" /tmp/fixtures_moe_$m.log | head -8
done
export NMLX_CUDA_MOE=1
./$B/tests/test_cuda_fused >"$OUT/fused.log" 2>&1; echo "test_cuda_fused rc=$?"
grep -E "FAIL|worst|passed" "$OUT/fused.log" 2>/dev/null | tail -12
./$B/tests/test_cuda_fixtures >"$OUT/fixtures.log" 2>&1; echo "test_cuda_fixtures rc=$?"
grep -E "quant|FAIL|MISMATCH|ran on cuda|passed" "$OUT/fixtures.log" | tail -24
# the families with device paths of their own: MoE, Gemma 3n, Llama 4, and kv_bits
grep -E "gpt_oss|qwen3_moe|gemma3n|llama4|kv_bits" "$OUT/fixtures.log" | tail -40
# the opt-in decode paths: the norm folded into the mat-vec, the mat-vec launched early (PDL)
NMLX_CUDA_NORM_MATMUL=1 NMLX_CUDA_PDL=1 ./$B/tests/test_cuda_fixtures >/tmp/fixtures_pdl.log 2>&1
echo "test_cuda_fixtures NMLX_CUDA_NORM_MATMUL=1 NMLX_CUDA_PDL=1 rc=$?: $(grep -E "FAIL|passed" /tmp/fixtures_pdl.log | tail -3)"
# the simple prefill attention and plain launches (the defaults off) must pass too
if [ "${OFF_TEST:-1}" = 1 ] && [ "${QUICK:-0}" = 0 ]; then
  NMLX_CUDA_ATTN_TILED=0 NMLX_CUDA_GRAPH=0 ./$B/tests/test_cuda_fixtures >"$OUT/fixtures_off.log" 2>&1
  echo "test_cuda_fixtures NMLX_CUDA_ATTN_TILED=0 NMLX_CUDA_GRAPH=0 rc=$?: $(grep -E "FAIL|passed" "$OUT/fixtures_off.log" | tail -3)"
fi
# qmm_kernel must pass every fixture too, and gemm1 (one GEMM, f16 W and x) the quantized ones
for q in $([ "${QUICK:-0}" = 2 ] || echo mma gemm1); do
  NMLX_CUDA_QMM=$q NMLX_CUDA_QROWS_MMA_T=0 ./$B/tests/test_cuda_fixtures >/tmp/fixtures_q$q.log 2>&1
  echo "[$(( $(date +%s) - T0 ))s] test_cuda_fixtures NMLX_CUDA_QMM=$q rc=$?: $(grep -E "FAIL|passed" /tmp/fixtures_q$q.log | tail -3)"
done
if [ "${QUICK:-0}" = 0 ]; then
  ./$B/tests/test_cuda_batch >"$OUT/batch.log" 2>&1; echo "test_cuda_batch rc=$?"
  echo "  $(grep -c '^PASS' "$OUT/batch.log") PASS lines, $(grep -c '^FAIL' "$OUT/batch.log") FAIL lines"
  grep -E "^FAIL|NOTE|SKIP|passed" "$OUT/batch.log" | tail -40
fi
# batches of 12 and 40 sessions through the other quantized mat-mats
for q in $([ "${QUICK:-0}" = 2 ] || echo mma gemm1); do
  NMLX_CUDA_QMM=$q NMLX_CUDA_QROWS_MMA_T=0 ./$B/tests/test_cuda_batch >/tmp/batch_q$q.log 2>&1
  echo "[$(( $(date +%s) - T0 ))s] test_cuda_batch NMLX_CUDA_QMM=$q rc=$?: $(grep -c '^FAIL' /tmp/batch_q$q.log) FAIL lines; $(grep -E "passed" /tmp/batch_q$q.log | tail -1)"
  grep -E "^FAIL" /tmp/batch_q$q.log | head -8
done
# the sample op against the host sampler (boundary cases counted)
if [ "${QUICK:-0}" = 0 ]; then
  ./$B/tests/test_cuda_sample >"$OUT/sample.log" 2>&1; echo "test_cuda_sample rc=$?"
  grep -E "FAIL|^sample:|passed" "$OUT/sample.log" | tail -12
fi
echo "tests done ($(( $(date +%s) - T0 )) s)"
# AMX=1: the host CPU's AMX-BF16 prefills (dense and quantized) against the
# portable kernels, on cores 8-15 in the background while the GPU benches
# run (correctness only; bench/device_amx.sh times them). Summary at the end.
if [ "${AMX:-0}" = 1 ]; then
  ( cmake --build $B -j8 --target test_kernels test_quant_kernels test_amx_quant_real test_amx_int8_real test_precision >"$OUT/amx_build.log" 2>&1 || exit 1
    { grep -m1 '^model name' /proc/cpuinfo; grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -cE '^amx_(bf16|tile)$'; } >"$OUT/amx.txt"
    NMLX_AMX=1 NMLX_QUANT_PICK_LOG=1 taskset -c 8-15 ./$B/tests/test_kernels >"$OUT/amx_test_kernels.log" 2>&1
    echo "test_kernels NMLX_AMX=1 rc=$?: $(grep -E "AMX dense|passed" "$OUT/amx_test_kernels.log" | tr '\n' ' ')" >>"$OUT/amx.txt"
    taskset -c 8-15 ./$B/tests/test_amx_quant_real >"$OUT/amx_quant_real.log" 2>&1
    echo "test_amx_quant_real rc=$?: $(grep -E "RAN|SKIPPED|passed" "$OUT/amx_quant_real.log" | tr '\n' ' ')" >>"$OUT/amx.txt"
    taskset -c 8-15 ./$B/tests/test_amx_int8_real >"$OUT/amx_int8_real.log" 2>&1
    echo "test_amx_int8_real rc=$?: $(grep -E "RAN|SKIPPED|passed" "$OUT/amx_int8_real.log" | tr '\n' ' ')" >>"$OUT/amx.txt"
    NMLX_AMX_INT8=1 NMLX_PICK_CACHE=0 taskset -c 8-15 ./$B/tests/test_precision >"$OUT/amx_precision_amx8.log" 2>&1
    echo "test_precision NMLX_AMX_INT8=1 rc=$?: $(grep -E "AMX-INT8 quantized prefill|passed" "$OUT/amx_precision_amx8.log" | tr '\n' ' ')" >>"$OUT/amx.txt"
    for q in 1 bf16; do
      NMLX_AMX_QUANT=$q taskset -c 8-15 ./$B/tests/test_quant_kernels >"$OUT/amx_quant_kernels_$q.log" 2>&1
      echo "test_quant_kernels NMLX_AMX_QUANT=$q rc=$?: $(grep -E "passed" "$OUT/amx_quant_kernels_$q.log" | tail -1)" >>"$OUT/amx.txt"
    done
    # issue 9's precision contract on the quantized fixtures, real tiles: the
    # pick (unset), 3 terms forced (exact: must pass), 1 term forced (x and W
    # in bf16: flips argmaxes on two fixtures in emulation, rc=1 expected)
    for q in unset 1 bf16; do
      env=(NMLX_QUANT_PICK_LOG=1 NMLX_PICK_CACHE=0); [ $q != unset ] && env+=(NMLX_AMX_QUANT=$q)
      env "${env[@]}" taskset -c 8-15 ./$B/tests/test_precision >"$OUT/amx_precision_$q.log" 2>&1
      echo "test_precision NMLX_AMX_QUANT=$q rc=$?: $(grep -E "AMX quantized prefill|argmax differs|passed" "$OUT/amx_precision_$q.log" | tr '\n' ' ')" >>"$OUT/amx.txt"
      grep -E "32-token prefill" "$OUT/amx_precision_$q.log" | sed 's/^/  /' >>"$OUT/amx.txt"
    done ) &
  AMX_PID=$!
fi
if [ "${KBENCH:-1}" = 1 ]; then
  ./$B/tests/bench_cuda_quant 200 2>&1 | tee "$OUT/kernels.txt"
  echo "kernel bench done ($(( $(date +%s) - T0 )) s)"
fi
if [ "${SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  timeout 120 compute-sanitizer --tool memcheck ./$B/nmlx run -m tests/fixtures/quant_qwen3_q8g64_bf16 \
    --device cuda -n 8 --ids 1,2,3,4,5 2>&1 | tail -4
fi
bench() { # name dir [env]
  local name=$1 dir=$2
  shift 2
  for p in 512; do
    env "$@" ./$B/nmlx bench -m "$dir" --device cuda -p $p -n 128 -r 3 2>&1 | tail -1 |
      sed "s/^{/{\"bench\":\"$name${1:+ $1}\",/" | tee -a "$OUT/bench.jsonl"
  done
}
for m in ${BENCH:-l1b-q4 l8b-q4 l8b-q8}; do
  # a run is cut at 600 s: no model starts after DEADLINE seconds (default 420)
  if [ $(( $(date +%s) - T0 )) -gt "${DEADLINE:-420}" ]; then echo "deadline: $m not benched"; continue; fi
  D=/tmp/synth-$m
  case $m in
    qwen3-bf16) python3 bench/cuda/make_synth_qwen3.py $D 2>&1 | tail -1 ;;
    l1b-bf16|l8b-bf16) python3 bench/cuda/make_synth_llama.py $D ${m:1:2} 0 | tail -1 ;;
    l1b-q*|l8b-q*) python3 bench/cuda/make_synth_llama.py $D ${m:1:2} ${m#*-q} 64 | tail -1 ;;
    gptoss20b-mxfp4) python3 bench/cuda/make_synth_moe.py $D gptoss20b | tail -1 ;;
    q30b-a3b-q4) python3 bench/cuda/make_synth_moe.py $D qwen3-30b-a3b | tail -1 ;;
    *) echo "unknown BENCH name: $m"; continue ;;
  esac
  bench "$m" $D
  for v in ${VARIANTS-NMLX_CUDA_GRAPH=0 NMLX_CUDA_ATTN_TILED=0 NMLX_FUSED=0}; do bench "$m" $D $v; done
  # MoE models: the generic expert path (before cuda_moe.cu) and the op's prefill form alone
  case $m in gptoss*|q30b*) for v in ${MVARIANTS-NMLX_CUDA_MOE=0 NMLX_CUDA_MOE=sorted}; do bench "$m" $D $v; done ;; esac
  case $m in *-q*|*-mxfp4) for v in ${QVARIANTS-NMLX_CUDA_QGEMV=f32 NMLX_CUDA_QMM=mma NMLX_CUDA_QMM=gemm1 NMLX_CUDA_NORM_MATMUL=1 NMLX_CUDA_PDL=1}; do bench "$m" $D $v; done ;; esac
  if [ -n "${BATCH-1,8,32}" ]; then
    ./$B/tests/bench_cuda_batch $D 32 0 "${BATCH-1,8,32}" cuda 2>&1 | tee -a "$OUT/batch_bench.txt"
    case $m in *-q*|*-mxfp4) for v in ${BATCH_VARIANTS-NMLX_CUDA_QROWS_MMA_T=0 NMLX_CUDA_QMM=gemm1}; do
      echo "== $v" | tee -a "$OUT/batch_bench.txt"
      env $v ./$B/tests/bench_cuda_batch $D 32 0 "${BATCH-1,8,32}" cuda 2>&1 | tee -a "$OUT/batch_bench.txt"
    done ;; esac
  fi
  # where a decode step's time goes, alone and in batches (NMLX_PROFILE: per-op table)
  if [ "${PROFILE:-1}" = 1 ]; then
    { echo "== $m: nmlx bench -p 64 -n 32"
      NMLX_PROFILE=1 ./$B/nmlx bench -m "$D" --device cuda -p 64 -n 32 2>&1 | head -32
      echo "== $m: prefill, nmlx bench -p 512 -n 1"
      NMLX_PROFILE=1 ./$B/nmlx bench -m "$D" --device cuda -p 512 -n 1 2>&1 | head -32
      case $m in *-q*) echo "== $m: prefill with NMLX_CUDA_QMM=gemm1"
        NMLX_CUDA_QMM=gemm1 NMLX_PROFILE=1 ./$B/nmlx bench -m "$D" --device cuda -p 512 -n 1 2>&1 | head -32 ;; esac
      for nb in ${PROFILE_BATCH:-8 32}; do
        echo "== $m: bench_cuda_batch, $nb sessions"
        NMLX_PROFILE=1 ./$B/tests/bench_cuda_batch $D 16 0 $nb cuda 2>&1 | grep -A30 "nmlx profile" | head -32
      done; } > "/tmp/profile_$m.txt" 2>&1
    cat "/tmp/profile_$m.txt" >> "$OUT/profile.txt"
    head -14 "/tmp/profile_$m.txt"
  fi
  rm -rf $D
  echo "$m done ($(( $(date +%s) - T0 )) s)"
done
if [ -n "${AMX_PID:-}" ]; then
  wait "$AMX_PID"; echo "== AMX on the host CPU (rc=$?)"; cat "$OUT/amx.txt" 2>/dev/null
fi
