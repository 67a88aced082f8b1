#!/usr/bin/env bash
# On the GPU machine (repo root, carrying .device/serve and .deps, made by
# bench/cuda/device_serve_prepare.sh): `nmlx serve --device cuda` against
# llama.cpp's llama-server (the release node-llama-cpp 3.22.1 bundles, CUDA,
# `--parallel N`), Llama-3.1-8B shape, 4-bit (MLX affine g64 vs Q4_0), the same
# client (bench/serve_throughput.mjs --url: N concurrent streamed
# /v1/completions, greedy, ignore_eos, TOKENS each) driving both, N in STREAMS.
#   OUT=dir bash bench/cuda/device_serve.sh
#   env: STREAMS="1 8 32"  TOKENS=128  ROUNDS=2  DEADLINE=540 (s; no run starts after it)
#        NMLX_VARIANTS="- NMLX_CUDA_QMM=gemm1": nmlx serve once per entry, with
#        that environment setting ("-": the defaults)
#        SERIAL=1: the llama.cpp build finishes before nmlx serve starts
#        PEER=0: nmlx serve only (no llama.cpp build, GGUF or llama-server)
# With .device/lcpp-cuda carried (bench/cuda/lcpp_cuda_prepare.sh: llama-server and
# llama-quantize built on the development machine) nothing is built here; then
# .device/serve's source tarball need not travel: carry node.xz,
# node_modules.tar.xz and node-include by name.
# Results: $OUT/serve.jsonl (one line per engine and N), $OUT/serve.txt (the table).
set -uo pipefail
OUT=${OUT:-/tmp/nmlx-serve-out}
STREAMS=${STREAMS:-"1 8 32"}
TOKENS=${TOKENS:-128}
ROUNDS=${ROUNDS:-2}
DEADLINE=${DEADLINE:-540}
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
mkdir -p "$OUT"
S=$PWD/.device/serve
[ -f "$S/node.xz" ] || { echo "$S missing: run bench/cuda/device_serve_prepare.sh here first, carry .device/serve"; exit 1; }
# prebuilt llama.cpp (bench/cuda/lcpp_cuda_prepare.sh, carried as .device/lcpp-cuda): no build
# here, and .device/serve's source tarball may stay behind (carry its other entries by name)
P=$PWD/.device/lcpp-cuda
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$OUT/gpu.txt"
# jansson, pcre2, utf8proc from .deps/ where the image lacks them
. bench/device_deps.sh .
. bench/device_node.sh "$S" # node (carried: the image has none)
echo "node $(node --version) at $(el)s"

# 1. llama-server + llama-quantize with CUDA, in the background
L=$HOME/lcpp-serve
if [ "${PEER:-1}" = 1 ] && [ -f "$P/bin.tar.xz" ] && [ ! -x $L/build/bin/llama-server ]; then
  mkdir -p $L/build $L/src && tar -xJf "$P/bin.tar.xz" -C $L/build && tar -xJf "$P/aux.tar.xz" -C $L/src
  export LD_LIBRARY_PATH=$L/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "llama.cpp: prebuilt (.device/lcpp-cuda)"
fi
# left by device_serve_peer_prep.sh in a call before on this machine
[ -x $L/build/bin/llama-server ] && export LD_LIBRARY_PATH=$L/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ -f "$S/make_gguf.py" ] || S_GGUF=$P
if [ "${PEER:-1}" = 1 ] && [ ! -x $L/build/bin/llama-server ]; then
  rm -rf $L && mkdir -p $L/src && tar -xJf "$S/lcpp-server-src.tar.xz" -C $L/src
  ( cd $L && cmake -S src/llama.cpp -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_APP=OFF -DGGML_CUDA_NCCL=OFF -DLLAMA_BUILD_COMMIT=de3ff81 \
      -DLLAMA_BUILD_NUMBER=0 > cmake.log 2>&1 && ninja -C build -j12 llama-server llama-quantize > build.log 2>&1
    echo $? > build.rc ) &
  BPID=$!
fi

# 2. nmlx: the Node addon with CUDA, the 8B 4-bit checkpoint (+ the real Llama 3.1 tokenizer)
( cd node && NMLX_CUDA=1 NMLX_CUDA_ARCH=90 NMLX_JOBS=4 NMLX_NODE_INCLUDE="$S/node-include" \
    node scripts/build.mjs ) > "$OUT/nmlx_build.log" 2>&1 || { tail -30 "$OUT/nmlx_build.log"; exit 1; }
grep "CUDA backend" "$OUT/nmlx_build.log"
echo "nmlx built at $(el)s"
M=/dev/shm/l8b-q4
if [ ! -f $M/config.json ]; then
  python3 bench/cuda/make_synth_llama.py $M 8b 4 64 > "$OUT/synth.log" 2>&1 || { tail "$OUT/synth.log"; exit 1; }
fi
G=/dev/shm/gg
mkdir -p $G
# device_serve_peer_prep.sh started in the background by a call before: let it finish
while pgrep -f device_serve_peer_prep.sh >/dev/null; do sleep 2; done
if [ "${PEER:-1}" = 1 ] && [ ! -f $G/llama-3.1-8b-F16.gguf ] && [ ! -f $G/llama-3.1-8b-Q4_0.gguf ]; then
  # the tokenizer sits in the llama.cpp carry; wait for its unpacking (done before cmake starts)
  while [ ! -d $L/src/llama3_1 ]; do sleep 1; done
  python3 "${S_GGUF:-$S}/make_gguf.py" --gguf-py $L/src/llama.cpp/gguf-py --tok $L/src/llama3_1 --out $G \
    --models llama-3.1-8b > "$OUT/gguf.log" 2>&1 || { tail "$OUT/gguf.log"; exit 1; }
fi
if [ ! -d $L/src/llama3_1 ]; then # PEER=0: the tokenizer alone, from whichever llama.cpp carry came
  mkdir -p $L/src
  for t in "$P/aux.tar.xz" "$S/lcpp-server-src.tar.xz"; do
    [ -f "$t" ] && tar -xJf "$t" -C $L/src llama3_1 2>/dev/null && break
  done
fi
[ -d $L/src/llama3_1 ] || { echo "no tokenizer: carry .device/serve/lcpp-server-src.tar.xz or .device/lcpp-cuda"; exit 1; }
cp $L/src/llama3_1/tokenizer*.json $M/
echo "models written at $(el)s"

# 3. nmlx serve (a process of its own, as llama-server is)
RES="$OUT/serve.jsonl"
: > "$RES"
wait_health() { for _ in $(seq 300); do curl -sf "$1/health" >/dev/null && return 0; sleep 1; done; return 1; }
client() { # URL LABEL N
  [ "$(el)" -lt "$DEADLINE" ] || { echo "deadline: $2 N=$3 not run"; return; }
  timeout 240 node bench/serve_throughput.mjs --url "$1" --streams "$3" --tokens $TOKENS --rounds $ROUNDS \
    --label "$2" --json "$RES" 2>&1 | tail -n +2 # the table, and nmlx's scheduler time split
}
maxN=$(echo $STREAMS | tr ' ' '\n' | sort -n | tail -1)
# SERIAL=1: let the llama.cpp build (ninja -j12 of CUDA sources, tens of GB) finish first
if [ "${SERIAL:-0}" = 1 ] && [ -n "${BPID:-}" ]; then wait $BPID; echo "llama.cpp built (serial) at $(el)s"; fi
free -g | head -2
for v in ${NMLX_VARIANTS:--}; do
  [ "$v" = - ] && v=
  env NMLX_CRASH_TRACE=1 $v node node/bin/nmlx.js serve -m $M --device cuda --max-batch $maxN --ctx 1024 --port 18080 \
    > "$OUT/nmlx_serve${v:+_${v#*=}}.log" 2>&1 &
  NPID=$!
  if wait_health http://127.0.0.1:18080; then
    echo "nmlx serve ${v:-(defaults)} up at $(el)s"
    for n in $STREAMS; do client http://127.0.0.1:18080 "nmlx 8B MLX-q4g64 cuda${v:+ $v}" $n; done
  else
    echo "nmlx serve ${v:-(defaults)} did not come up"; tail -20 "$OUT/nmlx_serve${v:+_${v#*=}}.log"
  fi
  # a server that died under load (2026-12-05, H100: both runs at 32 streams, the log silent)
  # says how: its exit status (128 + signal), the kernel's last words, the memory left
  if ! kill -0 $NPID 2>/dev/null; then
    wait $NPID; echo "nmlx serve ${v:-(defaults)} had exited: status $?"
    dmesg 2>/dev/null | tail -5; free -g | head -2
    L_=$OUT/nmlx_serve${v:+_${v#*=}}.log; grep -A12 "fatal signal" "$L_"
    # NMLX_CRASH_TRACE's frames inside the addon, named
    grep -o 'nmlx.node(+0x[0-9a-f]*)' "$L_" | grep -o '0x[0-9a-f]*' | head -12 |
      xargs -r addr2line -f -C -i -e node/build/nmlx.node 2>/dev/null
  fi
  kill -TERM $NPID 2>/dev/null; wait $NPID 2>/dev/null
done

# 4. llama-server --parallel N, one server per N
if [ "${PEER:-1}" = 1 ]; then
if [ -n "${BPID:-}" ]; then wait $BPID; fi
if [ "$(cat $L/build.rc 2>/dev/null || echo 0)" != 0 ] || [ ! -x $L/build/bin/llama-server ]; then
  echo "llama.cpp build failed"; tail -30 $L/build.log $L/cmake.log 2>/dev/null; exit 1
fi
echo "llama.cpp built at $(el)s"
Q=$G/llama-3.1-8b-Q4_0.gguf
if [ ! -f $Q ]; then
  $L/build/bin/llama-quantize $G/llama-3.1-8b-F16.gguf $Q Q4_0 > "$OUT/quantize.log" 2>&1 || { tail "$OUT/quantize.log"; exit 1; }
  rm -f $G/llama-3.1-8b-F16.gguf
fi
for n in $STREAMS; do
  [ "$(el)" -lt "$DEADLINE" ] || { echo "deadline: llama-server N=$n not run"; continue; }
  $L/build/bin/llama-server -m $Q -ngl 99 --parallel $n -c $((n * 1024)) --no-webui --port 18081 \
    > "$OUT/llama_server_$n.log" 2>&1 &
  LPID=$!
  if wait_health http://127.0.0.1:18081; then
    client http://127.0.0.1:18081 "llama-server 8B Q4_0 cuda --parallel $n" $n
  else
    echo "llama-server --parallel $n did not come up"; tail -20 "$OUT/llama_server_$n.log"
  fi
  kill -TERM $LPID 2>/dev/null; wait $LPID 2>/dev/null
done
fi

# 5. the table
python3 - "$RES" <<'PY' | tee "$OUT/serve.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
lcpp, nm = {}, {}
for r in rows:
    if r["label"].startswith("nmlx"):
        nm.setdefault(r["label"], {})[r["streams"]] = r["aggregate_tok_s"]
    else:
        lcpp[r["streams"]] = r["aggregate_tok_s"]
print("| nmlx | streams | nmlx serve tok/s | llama-server tok/s | nmlx / llama-server |\n| --- | --- | --- | --- | --- |")
fmt = lambda x: f"{x:.1f}" if x else "-"
for label, by in nm.items():
    for n in sorted(set(by) | set(lcpp)):
        a, b = by.get(n), lcpp.get(n)
        ratio = f"{a / b:.2f}x" if a and b else "-"
        print(f"| {label} | {n} | {fmt(a)} | {fmt(b)} | {ratio} |")
PY
echo "done at $(el)s"
