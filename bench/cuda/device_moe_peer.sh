#!/bin/bash
# On the GPU machine (repo root): GPT-OSS-20B MXFP4 and Qwen3-30B-A3B 4-bit,
# nmlx against llama.cpp on the same shapes, engines alternating per model:
#   nmlx      `nmlx bench --device cuda -p 512 -n 128 -r 3` on make_synth_moe.py's
#             checkpoints (mlx-community layouts: MXFP4 experts + 8-bit g64 rest;
#             4-bit g64, router 8-bit);
#   llama.cpp `llama-bench -ngl 99 -p 512 -n 128 -r 3` (flash attention at its
#             default, as ../shared/bench/gpu-peer measured the dense shapes) on
#             make_moe_gguf.py's files (MOSTLY_MXFP4_MOE: experts MXFP4, rest
#             Q8_0; Q4_0 with output Q6_K), built with CUDA (sm_90) from the
#             release node-llama-cpp 3.22.1 bundles.
#
#   OUT=dir [MODELS="gptoss20b qwen3-30b-a3b"] [DEADLINE=480] bash bench/cuda/device_moe_peer.sh
#
# Carry: .device/serve (device_serve_prepare.sh: the CUDA-pruned llama.cpp
# source, gguf-py, the Llama 3.1 tokenizer, make_gguf.py), .device/cpu-peer
# (bench/device_cpu_peer_prepare.sh: the same release pruned to llama-bench,
# whose tools/llama-bench is added to the former) and .deps.
# Idempotent, made for two calls on one warm machine: the llama.cpp build
# ($HOME/lcpp-bench, ~minutes on 16 cores) runs in a process session of its
# own (setsid), so it goes on after a call ends; checkpoints and GGUFs stay
# (/tmp/moe-synth, /dev/shm/gg-moe or $HOME/gg-moe) and results are kept
# ($HOME/lcpp-bench/res): a second call benches what the first could not.
# No benchmark starts after DEADLINE seconds. $OUT: moe_peer.jsonl (one line
# per engine and model), moe_peer.txt (the table), logs.
set -u
DEADLINE=${DEADLINE:-480}
MODELS=${MODELS:-"gptoss20b qwen3-30b-a3b"}
OUT=${OUT:-/tmp/nmlx-moe-peer-out}
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
mkdir -p "$OUT"
HERE=$PWD
S=$HERE/.device/serve C=$HERE/.device/cpu-peer
for f in "$S/lcpp-server-src.tar.xz" "$S/make_gguf.py" "$C/lcpp-src.tar.xz"; do
  [ -f "$f" ] || { echo "missing $f: run bench/cuda/device_serve_prepare.sh and bench/device_cpu_peer_prepare.sh here, carry .device/serve and .device/cpu-peer"; exit 1; }
done
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$OUT/gpu.txt"
. bench/device_deps.sh .

# 1. llama-bench with CUDA, in a session of its own (survives the call)
L=$HOME/lcpp-bench
mkdir -p $L/res
if [ ! -x $L/build/bin/llama-bench ] && ! { [ -f $L/build.pid ] && kill -0 "$(cat $L/build.pid)" 2>/dev/null; }; then
  rm -rf $L/src $L/build $L/build.rc && mkdir -p $L/src
  tar -xJf "$S/lcpp-server-src.tar.xz" -C $L/src
  tar -xJf "$C/lcpp-src.tar.xz" -C $L/src llama.cpp/tools/llama-bench llama.cpp/NLC_COMMIT.txt
  printf '%s\n' "# pruned: llama-bench only (device_moe_peer.sh)" "find_package(Threads REQUIRED)" \
    "llama_add_compile_flags()" "add_subdirectory(llama-bench)" > $L/src/llama.cpp/tools/CMakeLists.txt
  cat $L/src/llama.cpp/NLC_COMMIT.txt
  setsid bash -c "cd $L && cmake -S src/llama.cpp -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DGGML_CUDA=${GGML_CUDA:-ON} -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
      -DLLAMA_BUILD_APP=OFF -DGGML_CUDA_NCCL=OFF -DLLAMA_BUILD_COMMIT=de3ff81 -DLLAMA_BUILD_NUMBER=0 \
      > cmake.log 2>&1 && ninja -C build -j12 llama-bench > build.log 2>&1; echo \$? > build.rc" \
    < /dev/null > /dev/null 2>&1 &
  echo $! > $L/build.pid
  echo "llama.cpp build started (setsid, pid $(cat $L/build.pid)) at $(el)s"
fi

# 2. nmlx (nmlx-cli only, if device_run.sh has not built it on this machine)
B=build-cuda-dev
if [ ! -x $B/nmlx ]; then
  ( cmake -B $B -G Ninja -DNMLX_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
      -DNODE_EXECUTABLE=$(command -v node || echo /bin/true) > "$OUT/nmlx_build.log" 2>&1 &&
    cmake --build $B -j4 --target nmlx-cli >> "$OUT/nmlx_build.log" 2>&1 ) &
  NPID=$!
fi

# 3. the checkpoints (nmlx's on disk, the GGUFs in /dev/shm where there is room)
W=/tmp/moe-synth
G=/dev/shm/gg-moe
mkdir -p $W $G 2>/dev/null || G=$HOME/gg-moe
[ "$(df --output=avail -B1 /dev/shm 2>/dev/null | tail -1)" -gt 40000000000 ] 2>/dev/null || G=$HOME/gg-moe
mkdir -p $G
# A check of the script without a GPU: SYNTH_ARGS="--tiny --layers 2" (small
# checkpoints) NMLX_DEVICE=cpu NGL=0 GGML_CUDA=OFF P=16 N=4
( for m in $MODELS; do
    [ -f $W/$m/model.safetensors ] || python3 bench/cuda/make_synth_moe.py $W/$m $m ${SYNTH_ARGS:-} | tail -1
  done ) &
SPID=$!
for m in $MODELS; do
  [ -f $G/$m.gguf ] || python3 bench/cuda/make_moe_gguf.py --gguf-py $L/src/llama.cpp/gguf-py \
    --tok $L/src/llama3_1 --make-gguf "$S" --out $G/$m.gguf $m ${SYNTH_ARGS:-} 2>&1 | grep -v "Unknown separator"
done
wait $SPID
python3 "$S/make_gguf.py" --gguf-py $L/src/llama.cpp/gguf-py --info $G/*.gguf > "$OUT/gguf_info.jsonl"
echo "checkpoints written at $(el)s"
if [ -n "${NPID:-}" ]; then wait $NPID || { tail -30 "$OUT/nmlx_build.log"; exit 1; }; fi
echo "nmlx built at $(el)s"

# 4. per model: nmlx, then llama.cpp where its build is done; then, waiting
#    for the build until DEADLINE, both again on the models still without
#    llama.cpp (a model's two figures always come from one call)
RES=$OUT/moe_peer.jsonl
: > "$RES"
nmlx_bench() { # kept from an earlier call unless llama.cpp is to run on it now
  if [ -s $L/res/nmlx-$1.json ] && { [ -s $L/res/lcpp-$1.jsonl ] || [ ! -x $L/build/bin/llama-bench ]; }; then
    echo "nmlx $1: kept from an earlier call"
  elif [ $(el) -lt $DEADLINE ]; then
    echo "== nmlx $1 at $(el)s"
    timeout 300 ./$B/nmlx bench -m $W/$1 --device ${NMLX_DEVICE:-cuda} -p ${P:-512} -n ${N:-128} -r 3 \
      2> $L/res/nmlx-$1.err | tail -1 > $L/res/nmlx-$1.json
    grep -q prefill_tok_s $L/res/nmlx-$1.json ||
      { echo "nmlx bench $1 failed"; tail -5 $L/res/nmlx-$1.err; rm -f $L/res/nmlx-$1.json; }
  else
    echo "deadline: nmlx $1 not benched"
  fi
}
lcpp_bench() {
  if [ -s $L/res/lcpp-$1.jsonl ]; then
    echo "llama.cpp $1: kept from an earlier call"
  elif [ -x $L/build/bin/llama-bench ] && [ $(el) -lt $DEADLINE ]; then
    echo "== llama-bench $1 at $(el)s"
    timeout $(( DEADLINE + 100 - $(el) )) $L/build/bin/llama-bench -m $G/$1.gguf -ngl ${NGL:-99} \
      -p ${P:-512} -n ${N:-128} -r 3 -o jsonl > $L/res/lcpp-$1.jsonl.tmp 2> $L/res/lcpp-$1.err &&
      mv $L/res/lcpp-$1.jsonl.tmp $L/res/lcpp-$1.jsonl || { echo "llama-bench $1 failed"; tail -20 $L/res/lcpp-$1.err; }
  fi
}
for m in $MODELS; do
  nmlx_bench $m
  lcpp_bench $m
done
if [ ! -x $L/build/bin/llama-bench ]; then
  echo "waiting for the llama.cpp build at $(el)s"
  while [ ! -f $L/build.rc ] && [ $(el) -lt $DEADLINE ]; do sleep 5; done
  echo "llama.cpp build: rc=$(cat $L/build.rc 2>/dev/null || echo "still running (setsid: it goes on; call again)") at $(el)s"
  [ -f $L/build.rc ] && [ "$(cat $L/build.rc)" != 0 ] && tail -20 $L/build.log $L/cmake.log
  for m in $MODELS; do [ -s $L/res/lcpp-$m.jsonl ] || { nmlx_bench $m; lcpp_bench $m; }; done
fi
cat $L/res/nmlx-*.json $L/res/lcpp-*.jsonl 2>/dev/null > "$RES"
cp $L/cmake.log $L/build.log "$OUT/" 2>/dev/null

# 5. the table
python3 - "$RES" <<'PY' | tee "$OUT/moe_peer.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
nm = {r["model_type"]: r for r in rows if "prefill_tok_s" in r}
lc = {}
for r in rows:
    if "avg_ts" in r:
        k = "gpt_oss" if "gpt-oss" in r.get("model_type", "") or "gpt" in r.get("model_filename", "") else "qwen3_moe"
        lc.setdefault(k, {})["pp" if r["n_prompt"] else "tg"] = r["avg_ts"]
print("| shape | nmlx pp512 / tg128 tok/s | llama.cpp pp512 / tg128 tok/s | nmlx / llama.cpp |")
print("|---|---:|---:|---|")
for k, name in (("gpt_oss", "GPT-OSS-20B MXFP4 (llama.cpp MXFP4_MOE)"), ("qwen3_moe", "Qwen3-30B-A3B 4-bit g64 (llama.cpp Q4_0)")):
    n, l = nm.get(k), lc.get(k, {})
    ns = f"{n['prefill_tok_s']:,.0f} / {n['decode_tok_s']:,.1f}" if n else "-"
    ls = f"{l.get('pp', 0):,.0f} / {l.get('tg', 0):,.1f}" if l else "-"
    rs = (f"pp {n['prefill_tok_s'] / l['pp']:.2f}x, tg {n['decode_tok_s'] / l['tg']:.2f}x"
          if n and l.get("pp") and l.get("tg") else "-")
    print(f"| {name} | {ns} | {ls} | {rs} |")
PY
echo "== device_moe_peer done at $(el)s"
