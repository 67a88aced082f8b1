#!/bin/bash
# On the GPU machine (repo root): issue 10's table, nmlx against llama.cpp
# on the same GPU in the same call, engines alternating per model, batch 1:
#   nmlx      `nmlx bench --device cuda -p 512 -n 128 -r 3` on synthetic
#             real-shape checkpoints (make_synth_llama.py: MLX affine g64 or
#             bf16; make_synth_moe.py: mlx-community's MoE layouts);
#   llama.cpp `llama-bench -ngl 99 -p 512 -n 128 -r 3` (flash attention at
#             its default) on random-weight GGUFs of the same shapes (gpu-peer's
#             make_gguf.py F16, then llama-quantize Q4_0 / Q8_0; make_moe_gguf.py),
#             the release node-llama-cpp 3.22.1 bundles, CUDA, sm_90.
# Models (MODELS, in this order by default):
#   l8b-q4   Llama-3.1-8B 4-bit g64  vs Q4_0     l1b-q4   Llama-3.2-1B 4-bit g64 vs Q4_0
#   l8b-q8   Llama-3.1-8B 8-bit g64  vs Q8_0     l1b-bf16 Llama-3.2-1B bf16 vs F16
#   l8b-bf16 Llama-3.1-8B bf16 vs F16
#   gptoss20b (MXFP4 experts vs MXFP4_MOE), qwen3-30b-a3b (4-bit g64 vs Q4_0): not by default
#
#   OUT=dir [MODELS="..."] [PASSES=1] [DEADLINE=500] [CHECK=1] bash bench/cuda/device_gpu_peer.sh
#   (P, N: other prompt / generation lengths; NMLX_DEVICE, NGL, SYNTH_ARGS="--tiny
#   --layers 2": a check of the MoE path on a CPU; NCU_ROWS=1: the few-rows
#   kernel of an 8-session step under ncu --set full; ROWS_TABLE=1: bench_cuda_quant
#   rows; PEER=0: nmlx alone; NCU_PREFILL=1: one pp512 of each engine under ncu,
#   kernel by kernel; NMLX_AB="NMLX_PREFILL_CHUNK=256 NMLX_CUDA_QMM_ACT=1": after the
#   table, nmlx bench on each model again under each setting, AB_P prompt tokens, AB_N
#   generated, until AB_DEADLINE; AB_MODELS: on those models only; NCU_TOKEN=1: then one
#   decode token's kernels under ncu, a 2-layer 8B 4-bit, each with its top stalls;
#   NCU_DECODE=1: each model's kernels over a 16-token prompt and 32 generated tokens;
#   ATTN_TABLE=1: bench_cuda_attn, the decode attention kernels alone, ATTN_RUNS="2 4": again
#   with those shortest runs of the phased kernel)
#   CHECK=1 first runs the CUDA tests named in CHECK_TESTS (default test_cuda_ops
#   test_cuda_batch) and bench_cuda_batch 1,8,32 on the 8B 4-bit (default and
#   BATCH_OLD's settings: words of VAR=value joined by "+"), when l8b-q4 is among MODELS.
#
# Carry .deps and one of:
#   .device/lcpp-cuda  made HERE by bench/cuda/lcpp_cuda_prepare.sh: prebuilt
#                      llama-bench / llama-quantize (+ gguf-py, tokenizer,
#                      make_gguf.py): nothing to build on the GPU machine;
#   .device/serve + .device/cpu-peer   the sources: llama-bench is built here
#                      in a process session of its own (~9 min on 16 cores; it
#                      goes on after the call, so a second call on the same
#                      warm machine finds it).
# Results, kept in $HOME/gpu-peer/res across calls on one machine (a model's
# two figures always from one call): $OUT/gpu_peer.jsonl, $OUT/gpu_peer.txt.
set -u
DEADLINE=${DEADLINE:-500}
MODELS=${MODELS:-"l8b-q4 l1b-q4 l8b-q8 l1b-bf16 l8b-bf16"}
PASSES=${PASSES:-1}
OUT=${OUT:-/tmp/nmlx-gpu-peer-out}
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
mkdir -p "$OUT"
HERE=$PWD
LP=$HERE/.device/lcpp-cuda S=$HERE/.device/serve C=$HERE/.device/cpu-peer
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$OUT/gpu.txt"
. bench/device_deps.sh .

# 1. llama.cpp: the prebuilt binaries, else a build in its own session
L=$HOME/gpu-peer
mkdir -p $L/res $L/src $L/build/bin
if [ "${PEER:-1}" = 0 ]; then
  echo "PEER=0: nmlx only"
elif [ -f "$LP/bin.tar.xz" ]; then
  [ -x $L/build/bin/llama-bench ] || tar -xJf "$LP/bin.tar.xz" -C $L/build
  [ -d $L/src/llama3_1 ] || tar -xJf "$LP/aux.tar.xz" -C $L/src
  MAKE_GGUF=$LP
  export LD_LIBRARY_PATH=$L/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  $L/build/bin/llama-bench --help > /dev/null 2>&1 ||
    { echo "the prebuilt llama-bench does not run here:"; ldd $L/build/bin/llama-bench | grep -i "not found"; exit 1; }
  echo "llama.cpp: prebuilt ($(tar -xJOf "$LP/bin.tar.xz" --wildcards 'bin/*' 2>/dev/null | wc -c) bytes)"
elif [ -f "$S/lcpp-server-src.tar.xz" ] && [ -f "$C/lcpp-src.tar.xz" ]; then
  MAKE_GGUF=$S
  if [ ! -x $L/build/bin/llama-bench ] && ! { [ -f $L/build.pid ] && kill -0 "$(cat $L/build.pid)" 2>/dev/null; }; then
    rm -rf $L/src $L/build && mkdir -p $L/src
    tar -xJf "$S/lcpp-server-src.tar.xz" -C $L/src
    tar -xJf "$C/lcpp-src.tar.xz" -C $L/src llama.cpp/tools/llama-bench
    echo 'add_subdirectory(llama-bench)' >> $L/src/llama.cpp/tools/CMakeLists.txt
    setsid bash -c "cd $L && cmake -S src/llama.cpp -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_APP=OFF -DGGML_CUDA_NCCL=OFF -DLLAMA_BUILD_COMMIT=de3ff81 -DLLAMA_BUILD_NUMBER=0 \
        > cmake.log 2>&1 && ninja -C build -j12 llama-bench llama-quantize > build.log 2>&1; echo \$? > build.rc" \
      < /dev/null > /dev/null 2>&1 &
    echo $! > $L/build.pid
    echo "llama.cpp build started (setsid) at $(el)s"
  fi
else
  echo "carry .device/lcpp-cuda (bench/cuda/lcpp_cuda_prepare.sh) or .device/serve + .device/cpu-peer"; exit 1
fi

# 2. nmlx: the CLI (and the checks' tests) in the background
B=build-cuda-dev
CHECK_TESTS=${CHECK_TESTS:-"test_cuda_ops test_cuda_batch"}
( cmake -B $B -G Ninja -DNMLX_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
    -DNODE_EXECUTABLE=$(command -v node || echo /bin/true) > "$OUT/nmlx_build.log" 2>&1 &&
  cmake --build $B -j16 --target nmlx-cli $([ "${CHECK:-1}" = 1 ] && echo $CHECK_TESTS bench_cuda_batch) \
    $([ "${ROWS_TABLE:-0}" = 1 ] && echo bench_cuda_quant) $([ "${ATTN_TABLE:-0}" = 1 ] && echo bench_cuda_attn) \
    >> "$OUT/nmlx_build.log" 2>&1 ) &
NPID=$!

# 3. the checkpoints: nmlx's under /tmp, the GGUFs in /dev/shm where there is room
W=/tmp/gpu-peer-synth G=/dev/shm/gpu-peer-gg
mkdir -p $W
[ "$(df --output=avail -B1 /dev/shm 2>/dev/null | tail -1)" -gt 40000000000 ] 2>/dev/null || G=$HOME/gpu-peer-gg
mkdir -p $G
gguf_of() { case $1 in
  l8b-q4) echo llama-3.1-8b-Q4_0 ;; l8b-q8) echo llama-3.1-8b-Q8_0 ;; l8b-bf16) echo llama-3.1-8b-F16 ;;
  l1b-q4) echo llama-3.2-1b-Q4_0 ;; l1b-q8) echo llama-3.2-1b-Q8_0 ;; l1b-bf16) echo llama-3.2-1b-F16 ;;
  *) echo "$1" ;; esac; }
synth() { # nmlx's checkpoint of model $1
  [ -f $W/$1/config.json ] && return
  case $1 in
    l1b-bf16|l8b-bf16) python3 bench/cuda/make_synth_llama.py $W/$1 ${1:1:2} 0 | tail -1 ;;
    l*b-q*) python3 bench/cuda/make_synth_llama.py $W/$1 ${1:1:2} ${1#*-q} 64 | tail -1 ;;
    *) python3 bench/cuda/make_synth_moe.py $W/$1 $1 ${SYNTH_ARGS:-} | tail -1 ;;
  esac
}
( for m in $MODELS; do synth $m; done ) > "$OUT/synth.log" 2>&1 &
SPID=$!
[ -f "$LP/bin.tar.xz" ] || [ "${PEER:-1}" = 0 ] || while [ ! -d $L/src/llama3_1 ]; do sleep 1; done
GP=$L/src/llama.cpp/gguf-py TOK=$L/src/llama3_1
[ "${PEER:-1}" = 0 ] || for shape in llama-3.1-8b llama-3.2-1b; do # the dense F16 files first (the GPU draws them)
  need=0
  for m in $MODELS; do case "$(gguf_of $m)" in $shape-*) need=1 ;; esac; done
  [ $need = 1 ] && [ ! -f $G/$shape-F16.gguf ] &&
    python3 "$MAKE_GGUF/make_gguf.py" --gguf-py $GP --tok $TOK --out $G --models $shape 2>&1 | grep -E "GB in|Error|error"
done
[ "${PEER:-1}" = 0 ] || for m in $MODELS; do
  case $m in l*b-q*) ;; l*b-bf16) continue ;;
    *) [ -f $G/$m.gguf ] || python3 bench/cuda/make_moe_gguf.py --gguf-py $GP --tok $TOK --make-gguf "$MAKE_GGUF" \
         --out $G/$m.gguf $m ${SYNTH_ARGS:-} 2>&1 | grep -v "Unknown separator" | tail -2; continue ;;
  esac
  g=$(gguf_of $m)
  [ -f $G/$g.gguf ] && continue
  while [ ! -x $L/build/bin/llama-quantize ] && [ $(el) -lt $DEADLINE ]; do sleep 5; done # a build here
  [ -x $L/build/bin/llama-quantize ] || break
  $L/build/bin/llama-quantize $G/${g%-Q*}-F16.gguf $G/$g.gguf ${g##*-} 16 > "$OUT/quantize-$m.log" 2>&1 ||
    { echo "llama-quantize $m failed"; tail -5 "$OUT/quantize-$m.log"; }
done
# the F16 files only where a bf16 cell needs them (room for the rest)
echo " $MODELS " | grep -q " l8b-bf16 " || rm -f $G/llama-3.1-8b-F16.gguf
echo " $MODELS " | grep -q " l1b-bf16 " || rm -f $G/llama-3.2-1b-F16.gguf
wait $SPID; grep -v "^$" "$OUT/synth.log" | tail -20
echo "checkpoints written at $(el)s: $(du -sh $W | cut -f1) nmlx, $(du -sh $G | cut -f1) GGUF"
wait $NPID || { tail -30 "$OUT/nmlx_build.log"; exit 1; }
echo "nmlx built at $(el)s"

# 4. the checks of this commit's kernels
if [ "${CHECK:-1}" = 1 ]; then
  for t in $CHECK_TESTS; do
    [ $(el) -lt $DEADLINE ] || break
    echo "$(el)s $t: $(timeout 200 ./$B/tests/$t 2>&1 | tee "$OUT/$t.log" | grep -E "[0-9]+ passed, [0-9]+ failed" | tail -1)"
    grep -E "FAIL|differs" "$OUT/$t.log" | head -10
  done
  if echo " $MODELS " | grep -q " l8b-q4 "; then
    for v in - ${BATCH_OLD-NMLX_CUDA_ATTN_DECODE=old}; do
      [ $(el) -lt $DEADLINE ] || break
      e=${v//+/ }; [ "$v" = - ] && e=
      echo "$(el)s bench_cuda_batch 8B 4-bit ${e}"
      env $e timeout 120 ./$B/tests/bench_cuda_batch $W/l8b-q4 32 0 1,8,32 cuda 2>&1 | tail -4
    done
  fi
fi

# 4a. ROWS_TABLE=1: the few-rows kernels alone (bench_cuda_quant rows: v1, v2, configs)
if [ "${ROWS_TABLE:-0}" = 1 ] && [ $(el) -lt $DEADLINE ]; then
  echo "$(el)s bench_cuda_quant 20 rows"
  timeout 150 ./$B/tests/bench_cuda_quant 20 rows > "$OUT/rows.txt" 2>&1
  grep -E "step|ERROR|SKIP" "$OUT/rows.txt"; awk '$1 == "q4g64" && $3 == 8' "$OUT/rows.txt"
fi

# 4a'. ATTN_TABLE=1: the decode attention kernels alone (bench_cuda_attn: old,
# split, dec_block, phased at 16..8192 keys), then the phased kernel with
# ATTN_RUNS' shortest runs (NMLX_CUDA_ATTN_PHASED_RUN)
if [ "${ATTN_TABLE:-0}" = 1 ] && [ $(el) -lt $DEADLINE ]; then
  for r in 1 ${ATTN_RUNS:-}; do
    echo "$(el)s bench_cuda_attn 20, NMLX_CUDA_ATTN_PHASED_RUN=$r"
    NMLX_CUDA_ATTN_PHASED_RUN=$r timeout 120 ./$B/tests/bench_cuda_attn 20 2>&1 | tee "$OUT/attn-run$r.txt" | tail -12
  done
fi

# 4b. NCU_ROWS=1: the few-rows kernel of an 8-session batched step under ncu
# (--set full: where its time goes), 8 launches of the decode steps (past the 8 prompts: 32 layers x 4 a prompt)
if [ "${NCU_ROWS:-0}" = 1 ] && echo " $MODELS " | grep -q " l8b-q4 " && [ $(el) -lt $DEADLINE ]; then
  echo "$(el)s ncu: qrows2_kernel, 8 sessions"
  timeout 180 ncu --set full -k regex:qrows2_kernel --launch-skip 1200 --launch-count 8 -o "$OUT/ncu_rows" \
    ./$B/tests/bench_cuda_batch $W/l8b-q4 8 0 8 cuda > "$OUT/ncu_rows.log" 2>&1
  ncu --import "$OUT/ncu_rows.ncu-rep" --page details > "$OUT/ncu_rows.txt" 2>&1
  grep -E "qrows2_kernel|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|L2 Cache Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|No Eligible|Block Limit" \
    "$OUT/ncu_rows.txt" | head -80
fi

# 4c. NCU_PREFILL=1: one pp512 of each engine kernel by kernel (ncu, warm caches,
# running clock; llama-bench --no-warmup), summed by kernel_sum.py: where the
# prefill gap to llama.cpp is, before the table's timed runs
if [ "${NCU_PREFILL:-0}" = 1 ]; then
  for m in $MODELS; do
    [ $(el) -lt $DEADLINE ] || break
    echo "$(el)s ncu prefill: nmlx $m"
    timeout 150 ncu --cache-control none --clock-control none --metrics gpu__time_duration.sum --csv \
      ./$B/nmlx bench -m $W/$m --device cuda -p ${P:-512} -n 1 -r 1 > "$OUT/ncu-pp-nmlx-$m.csv" 2> "$OUT/ncu.err"
    python3 bench/cuda/kernel_sum.py "$OUT/ncu-pp-nmlx-$m.csv" | head -22
    [ "${PEER:-1}" = 0 ] || [ ! -x $L/build/bin/llama-bench ] || [ $(el) -ge $DEADLINE ] && continue
    echo "$(el)s ncu prefill: llama.cpp $m"
    timeout 150 ncu --cache-control none --clock-control none --metrics gpu__time_duration.sum --csv \
      $L/build/bin/llama-bench -m $G/$(gguf_of $m).gguf -ngl ${NGL:-99} -p ${P:-512} -n 0 -r 1 --no-warmup \
      > "$OUT/ncu-pp-lcpp-$m.csv" 2>> "$OUT/ncu.err"
    python3 bench/cuda/kernel_sum.py "$OUT/ncu-pp-lcpp-$m.csv" | head -22
  done
fi

# 5. per model, nmlx then llama.cpp (PASSES times, the order reversed on even passes)
nmlx_bench() {
  echo "== nmlx $1 at $(el)s"
  timeout 300 ./$B/nmlx bench -m $W/$1 --device ${NMLX_DEVICE:-cuda} -p ${P:-512} -n ${N:-128} -r 3 2> $L/res/nmlx-$1-$2.err |
    tail -1 > $L/res/nmlx-$1-$2.json
  grep -q prefill_tok_s $L/res/nmlx-$1-$2.json || { echo "nmlx bench $1 failed"; tail -5 $L/res/nmlx-$1-$2.err; rm -f $L/res/nmlx-$1-$2.json; }
}
lcpp_bench() {
  [ "${PEER:-1}" = 0 ] && return
  [ -x $L/build/bin/llama-bench ] || { echo "llama-bench not built (yet)"; return; }
  echo "== llama-bench $1 at $(el)s"
  timeout 300 $L/build/bin/llama-bench -m $G/$(gguf_of $1).gguf -ngl ${NGL:-99} -p ${P:-512} -n ${N:-128} -r 3 -o jsonl \
    > $L/res/lcpp-$1-$2.jsonl 2> $L/res/lcpp-$1-$2.err ||
    { echo "llama-bench $1 failed"; tail -5 $L/res/lcpp-$1-$2.err; rm -f $L/res/lcpp-$1-$2.jsonl; }
}
for pass in $(seq $PASSES); do
  for m in $MODELS; do
    [ $(el) -lt $DEADLINE ] || { echo "deadline: $m pass $pass not run"; continue; }
    [ -s $L/res/nmlx-$m-$pass.json ] && [ -s $L/res/lcpp-$m-$pass.jsonl ] && continue
    if [ $((pass % 2)) = 1 ]; then nmlx_bench $m $pass; lcpp_bench $m $pass
    else lcpp_bench $m $pass; nmlx_bench $m $pass; fi
  done
done
for f in $L/res/nmlx-*.json; do [ -s "$f" ] && sed "s/^{/{\"cell\":\"$(basename $f .json)\",/" "$f"; done > "$OUT/gpu_peer.jsonl"
for f in $L/res/lcpp-*.jsonl; do [ -s "$f" ] && sed "s/^{/{\"cell\":\"$(basename $f .jsonl)\",/" "$f"; done >> "$OUT/gpu_peer.jsonl"

# 6. the table (medians over passes)
python3 - "$OUT/gpu_peer.jsonl" "$(head -1 "$OUT/gpu.txt")" <<'PY' | tee "$OUT/gpu_peer.txt"
import json, statistics, sys
names = {"l8b-q4": ("Llama-3.1-8B", "4-bit g64 vs Q4_0"), "l1b-q4": ("Llama-3.2-1B", "4-bit g64 vs Q4_0"),
         "l8b-q8": ("Llama-3.1-8B", "8-bit g64 vs Q8_0"), "l1b-q8": ("Llama-3.2-1B", "8-bit g64 vs Q8_0"),
         "l1b-bf16": ("Llama-3.2-1B", "bf16 vs F16"), "l8b-bf16": ("Llama-3.1-8B", "bf16 vs F16"),
         "gptoss20b": ("GPT-OSS-20B", "MXFP4 vs MXFP4_MOE"), "qwen3-30b-a3b": ("Qwen3-30B-A3B", "4-bit g64 vs Q4_0")}
nm, lc = {}, {}
for line in open(sys.argv[1]):
    if not line.strip().startswith("{"):
        continue
    r = json.loads(line)
    eng, rest = r["cell"].split("-", 1)
    model = rest.rsplit("-", 1)[0]
    if eng == "nmlx":
        nm.setdefault(model, {"pp": [], "tg": []})
        nm[model]["pp"].append(r["prefill_tok_s"]); nm[model]["tg"].append(r["decode_tok_s"])
    elif "avg_ts" in r:
        lc.setdefault(model, {"pp": [], "tg": []})["pp" if r["n_prompt"] else "tg"].append(r["avg_ts"])
med = lambda xs: statistics.median(xs) if xs else None
print(f"GPU: {sys.argv[2]}; nmlx `bench -p 512 -n 128 -r 3`, llama-bench `-ngl 99 -p 512 -n 128 -r 3`, medians over passes")
print("| shape | format | llama.cpp pp512 / tg128 tok/s | nmlx pp512 / tg128 tok/s | nmlx / llama.cpp |")
print("| --- | --- | --- | --- | --- |")
for k, (shape, fmt) in names.items():
    if k not in nm and k not in lc:
        continue
    n, l = nm.get(k, {}), lc.get(k, {})
    npp, ntg, lpp, ltg = (med(n.get("pp", [])), med(n.get("tg", [])), med(l.get("pp", [])), med(l.get("tg", [])))
    f = lambda a, b: f"{a:,.0f} / {b:,.1f}" if a and b else "-"
    ratio = f"prefill {npp / lpp:.2f}x, decode {ntg / ltg:.2f}x" if npp and lpp and ntg and ltg else "-"
    print(f"| {shape} | {fmt} | {f(lpp, ltg)} | {f(npp, ntg)} | {ratio} |")
PY
# 7. NMLX_AB="SETTING[+SETTING] ...": nmlx bench again on each model under each setting (an
# A/B against the table's defaults on the same machine; -p AB_P, -n AB_N, no run starts after AB_DEADLINE)
for v in ${NMLX_AB:-}; do
  for m in ${AB_MODELS:-$MODELS}; do
    [ $(el) -lt ${AB_DEADLINE:-$DEADLINE} ] || { echo "deadline: $m $v not run"; continue; }
    [ -f $W/$m/config.json ] || continue
    echo "$m ${v//+/ }: $(env ${v//+/ } timeout 120 ./$B/nmlx bench -m $W/$m --device ${NMLX_DEVICE:-cuda} \
      -p ${AB_P:-${P:-512}} -n ${AB_N:-${N:-128}} -r 3 2>/dev/null | tail -1)"
  done
done
# 8. NCU_TOKEN=1: one decode token's kernels under ncu (warm caches, running clock; SpeedOfLight,
# Occupancy, WarpStateStats, LaunchStats), a 2-layer Llama-3.1-8B 4-bit, 20 launches past the
# prompts (attention, rope_kv, add_rmsnorm and the mat-vecs only): time, occupancy and the top
# stalls of each (ncu_stalls.py), after every timed run
if [ "${NCU_TOKEN:-0}" = 1 ]; then
  D=/tmp/gpu-peer-l8b-2l
  [ -f $D/config.json ] || python3 bench/cuda/make_synth_llama.py $D 8b 4 64 2 | tail -1
  echo "$(el)s ncu: one decode token's kernels, 2-layer 8B 4-bit"
  timeout 150 ncu --cache-control none --clock-control none --section SpeedOfLight --section Occupancy \
    --section WarpStateStats --section LaunchStats --page raw --csv \
    -k regex:'attn_decode_kernel|attn_phased|attn_short|qgemv16|rope_kv|add_rmsnorm' --launch-skip 40 --launch-count 20 \
    ./$B/nmlx bench -m $D --device cuda -p 16 -n 8 -r 1 > "$OUT/ncu_token.csv" 2> "$OUT/ncu.err"
  python3 bench/cuda/ncu_stalls.py "$OUT/ncu_token.csv" 6 | cut -c1-200 | head -60
fi
# 9. NCU_DECODE=1: each model's kernels over a 16-token prompt and 32 generated (ncu, warm
# caches, running clock), summed by kernel_sum.py: mostly decode steps' kernels (graph nodes
# one by one), for the count and time of each a step
if [ "${NCU_DECODE:-0}" = 1 ]; then
  for m in $MODELS; do
    echo "$(el)s ncu decode: nmlx $m"
    timeout 150 ncu --cache-control none --clock-control none --metrics gpu__time_duration.sum --csv \
      ./$B/nmlx bench -m $W/$m --device cuda -p 16 -n 32 -r 1 > "$OUT/ncu-tg-nmlx-$m.csv" 2> "$OUT/ncu.err"
    python3 bench/cuda/kernel_sum.py "$OUT/ncu-tg-nmlx-$m.csv" 2>/dev/null | head -30
  done
fi
echo "== device_gpu_peer done at $(el)s"
