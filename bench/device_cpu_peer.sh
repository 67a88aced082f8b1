#!/bin/bash
# Issue 9 on a second x86-64 microarchitecture: the GPU machine's host CPU,
# no network. nmlx against llama.cpp's llama-bench (CPU-only build of the
# release node-llama-cpp 3.22.1 bundles), both pinned to 2 cores with
# `taskset -c 0,1`, on the same synthetic real-shape checkpoints as the
# development machine (../shared/bench/cpu-peer make_models.py: same seeds,
# same weights in every format).
#
#   OUT=dir [CELLS="0 1 2 3 4 5"] [SCAN="1 2 8"] [EXTRA=cmd] bash bench/device_cpu_peer.sh [deadline_s=430]
#   CELLS: which of the six cells (indices into `cells` below); SCAN: thread
#   counts of the 4-bit decode scaling ("" skips it); EXTRA: a command run
#   after the kernel tests with $B (nmlx build dir) and $M (models) set.
#
# Needs, carried beside the working tree (both git-ignored):
#   .device/cpu-peer/  made here by `bash bench/device_cpu_peer_prepare.sh PEER_DIR`
#                      (~22 MB: pruned llama.cpp source + gguf-py, make_models.py,
#                      membw.c, the Qwen3 and Llama 3.1 tokenizer files)
#   .deps/             Debian packages of jansson, pcre2, utf8proc (see
#                      bench/cuda/device_run.sh), unless the host has them
# and on the host: gcc, cmake (ninja if present), python3 with numpy and yaml.
#
# Steps (about 8 minutes on 16 cores): builds llama-bench and nmlx in the
# background while make_models.py writes the checkpoints (both models in
# parallel) under /dev/shm; runs nmlx's kernel tests (every fast path against
# the portable kernels); the read-bandwidth ceiling (membw, 2 pinned
# threads); the six cells (p512 / n128, 2 threads, engines alternating);
# then 4-bit decode at 1, 2 and 8 threads for both engines; then, if time
# is left, bench_kernels' bf16 mat-vec variants (into log.txt). No benchmark
# starts after `deadline` seconds. $OUT gets: cpu_peer.jsonl (the lines
# bench/cpu_peer_summary.py reads), summary.md, env.txt, log.txt.
set -u
DEADLINE=${1:-430}
T0=$(date +%s)
el() { echo $(($(date +%s) - T0)); }
HERE=$(cd "$(dirname "$0")/.." && pwd)
C=$HERE/.device/cpu-peer
OUT=${OUT:-/tmp/nmlx-cpu-peer-out}
mkdir -p "$OUT"
W=/dev/shm/nmlx-cpu-peer
[ -w /dev/shm ] || W=$HOME/nmlx-cpu-peer
mkdir -p "$W"
RES=$OUT/cpu_peer.jsonl
LOG=$OUT/log.txt
: > "$RES"
log() { echo "[$(el)s] $*" | tee -a "$LOG"; }
[ -f "$C/lcpp-src.tar.xz" ] || { echo "missing $C (run bench/device_cpu_peer_prepare.sh and carry .device)" >&2; exit 1; }

{
  date -u +%FT%TZ; lscpu; echo; lscpu -e 2>/dev/null | head -20; echo
  nproc; free -g | head -2; df -h "$W" | tail -1; uname -r
  gcc --version | head -1; cmake --version | head -1; python3 --version
  python3 -c "import numpy; print('numpy', numpy.__version__)"
} > "$OUT/env.txt" 2>&1
CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
FLAGS=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
  grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|avx_vnni|amx_bf16|amx_int8)$' | tr '\n' ' ')
printf '{"cpu":"%s","flags":"%s","nproc":%s,"pinned":"taskset -c 0,1","nmlx_commit":"%s"}\n' \
  "$CPU" "${FLAGS% }" "$(nproc)" "$(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo unknown)" >> "$RES"
log "cpu: $CPU / ${FLAGS% }"

# jansson, pcre2, utf8proc from .deps/ where the image lacks them
. "$HERE/bench/device_deps.sh" "$HERE"
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)

# 1. llama.cpp source (gguf-py is needed by make_models.py right away)
rm -rf "$W/lcpp" && mkdir -p "$W/lcpp" && tar -xJf "$C/lcpp-src.tar.xz" -C "$W/lcpp"
cat "$W/lcpp/llama.cpp/NLC_COMMIT.txt" >> "$LOG"
rm -rf "$W/peer" && cp -r "$C/peer" "$W/peer" && mkdir -p "$W/peer/work/llama.cpp-src"
ln -s "$W/lcpp/llama.cpp/gguf-py" "$W/peer/work/llama.cpp-src/gguf-py"

# 2. builds in the background: llama-bench (CPU only, native flags) and nmlx
(
  cmake -S "$W/lcpp/llama.cpp" -B "$W/lcpp/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_COMMIT=nlc-3.22.1 -DLLAMA_BUILD_NUMBER=0 > "$W/lcpp-cmake.log" 2>&1 &&
    cmake --build "$W/lcpp/build" -j 8 --target llama-bench > "$W/lcpp-build.log" 2>&1
  echo $? > "$W/lcpp.rc"
) &
LPID=$!
B=$HERE/build-cpu-peer
(
  cmake -S "$HERE" -B "$B" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DNODE_EXECUTABLE="$(command -v node || echo /bin/true)" > "$W/nmlx-build.log" 2>&1 &&
    cmake --build "$B" -j 6 --target nmlx-cli test_kernels test_quant_kernels test_quant_int8 \
      test_amx_int8_real test_amx_quant_real \
      >> "$W/nmlx-build.log" 2>&1
  echo $? > "$W/nmlx.rc"
) &
NPID=$!

# 3. the checkpoints, both models in parallel (hf bf16, mlx 4-bit, GGUF F16/Q8_0/Q4_0)
M=$W/models
log "make_models start"
MPIDS=()
for m in qwen3-0.6b llama-3.2-1b; do
  if [ ! -f "$M/$m/gguf/$m-Q4_0.gguf" ]; then
    python3 "$W/peer/make_models.py" --models $m --out "$M" > "$W/make-$m.log" 2>&1 &
    MPIDS+=($!)
  fi
done
[ ${#MPIDS[@]} -gt 0 ] && wait "${MPIDS[@]}"
for m in qwen3-0.6b llama-3.2-1b; do tail -3 "$W/make-$m.log" >> "$LOG" 2>/dev/null; done
log "make_models done: $(ls "$M"/*/gguf/ 2>/dev/null | tr '\n' ' ')"
wait $NPID; log "nmlx build rc=$(cat "$W/nmlx.rc")"; tail -5 "$W/nmlx-build.log" >> "$LOG"
NMLX=$B/nmlx
# every fast kernel against the portable one on random data, on this CPU
for t in test_kernels test_quant_kernels test_quant_int8 test_amx_int8_real test_amx_quant_real; do
  [ -x "$B/tests/$t" ] && { log "$t: $(NMLX_SOURCE_DIR=$HERE "$B/tests/$t" 2>&1 | grep -E 'FAIL|default kernel|passed' | tr '\n' ' ')"; }
done
# the kernels this CPU picks for the default precision (timed at first use)
log "$(NMLX_QUANT_PICK_LOG=1 "$NMLX" bench -m "$M/qwen3-0.6b/mlx-4bit" -p 32 -n 1 -t 2 -r 1 2>&1 | grep pick)"
if [ -n "${EXTRA:-}" ]; then log "EXTRA: $EXTRA"; (cd "$HERE" && B=$B M=$M eval "$EXTRA") >> "$LOG" 2>&1; fi
wait $LPID; log "llama-bench build rc=$(cat "$W/lcpp.rc")"; tail -3 "$W/lcpp-build.log" >> "$LOG"
LB=$(find "$W/lcpp/build" -name llama-bench -type f -perm -u+x | head -1)

# 4. read-bandwidth ceiling, 2 pinned threads
if gcc -O3 -march=native -fopenmp -o "$W/membw" "$W/peer/membw.c" 2>> "$LOG"; then
  printf '{"membw":%s}\n' "$(OMP_PROC_BIND=true taskset -c 0,1 "$W/membw" 2 1024 10 | tail -1)" >> "$RES"
  printf '{"membw_all_cores":%s}\n' "$("$W/membw" "$(nproc)" 1024 10 | tail -1)" >> "$RES"
fi

# peak RSS of a child: llama-bench reports none
cat > "$W/peak.py" <<'EOF'
import json, resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
recs = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
print(json.dumps({"llama_bench": recs, "rc": r.returncode,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
if r.returncode:
    sys.stderr.write(r.stderr[-2000:])
EOF
left() { echo $((DEADLINE + 60 - $(el))); }

cells=(
  "Qwen3-0.6B bf16 vs F16|qwen3-0.6b|hf||F16"
  "Qwen3-0.6B 8-bit g64 (--bits 8) vs Q8_0|qwen3-0.6b|hf|--bits 8|Q8_0"
  "Qwen3-0.6B MLX 4-bit g64 vs Q4_0|qwen3-0.6b|mlx-4bit||Q4_0"
  "Llama-3.2-1B bf16 vs F16|llama-3.2-1b|hf||F16"
  "Llama-3.2-1B 8-bit g64 (--bits 8) vs Q8_0|llama-3.2-1b|hf|--bits 8|Q8_0"
  "Llama-3.2-1B 4-bit g64 (--bits 4) vs Q4_0|llama-3.2-1b|hf|--bits 4|Q4_0"
)
run_pair() { # label model fmt extra quant threads cpus p n peer_p
  local label=$1 model=$2 fmt=$3 extra=$4 quant=$5 t=$6 cpus=$7 p=$8 n=$9 pp=${10} r
  local dir=$M/$model/$fmt gguf=$M/$model/gguf/$model-$quant.gguf
  if [ "$(el)" -gt "$DEADLINE" ]; then log "DEADLINE: skipped $label t=$t"; return; fi
  if [ -x "$NMLX" ] && [ -d "$dir" ]; then
    # shellcheck disable=SC2086
    r=$(timeout "$(left)" taskset -c "$cpus" "$NMLX" bench -m "$dir" $extra -p "$p" -n "$n" -t "$t" -r 1 2>> "$LOG" | tail -1)
    printf '{"cell":"%s","engine":"nmlx","threads":%s,"pass":1,"result":%s}\n' "$label" "$t" "${r:-null}" >> "$RES"
  fi
  if [ -n "$LB" ] && [ -f "$gguf" ]; then
    r=$(timeout "$(left)" taskset -c "$cpus" python3 "$W/peak.py" "$LB" -m "$gguf" -p "$pp" -n "$n" \
      -t "$t" -r 1 -fa auto -o jsonl 2>> "$LOG")
    printf '{"cell":"%s","engine":"peer","threads":%s,"pass":1,"result":%s}\n' "$label" "$t" "${r:-null}" >> "$RES"
  fi
  log "done $label t=$t"
}

# 5. the six cells (CELLS="0 2 5": a subset, by index), 2 pinned threads
for i in ${CELLS:-0 1 2 3 4 5}; do
  IFS='|' read -r label model fmt extra quant <<< "${cells[$i]}"
  run_pair "$label" "$model" "$fmt" "$extra" "$quant" 2 0,1 512 128 512
done
# 6. 4-bit decode thread scaling (16-token prompt for nmlx; tg only for
# llama-bench); SCAN="" skips it
for c in "${cells[2]}" "${cells[5]}"; do
  IFS='|' read -r label model fmt extra quant <<< "$c"
  for t in ${SCAN-1 2 8}; do
    cpus=0; [ $t -eq 2 ] && cpus=0,1; [ $t -eq 8 ] && cpus=0-7
    run_pair "decode-only $label" "$model" "$fmt" "$extra" "$quant" $t $cpus 16 64 0
  done
done

# 6b. where a 4-bit decode's time goes at 2 and 8 threads (NMLX_PROFILE:
# per-op table; the GPU image has no perf), and which vCPUs share a core
# (pinning 0-7 may put two threads on one core)
lscpu -e=CPU,CORE,SOCKET,NODE 2>/dev/null | head -17 > "$OUT/topology.txt"
if [ "$(el)" -lt "$DEADLINE" ]; then
  IFS='|' read -r label model fmt extra quant <<< "${cells[2]}"
  for t in 2 8; do
    cpus=0,1; [ $t -eq 8 ] && cpus=0-7
    { echo "== $label, $t threads (taskset -c $cpus)"
      NMLX_PROFILE=1 timeout 60 taskset -c $cpus "$NMLX" bench -m "$M/$model/$fmt" $extra -p 16 -n 64 \
        -t $t -r 1 2>&1 | head -24; } >> "$OUT/topology.txt"
  done
fi

# 7. if time is left: the bf16 mat-vec variants on this CPU (does the row
# grouping / prefetch choice matter here? bench/cpu_decode.md), 1 pinned thread
if [ "$(el)" -lt "$DEADLINE" ] && [ -f "$B/libnmlx.a" ]; then
  gcc -std=c11 -O2 -I"$HERE/include" -I"$HERE/src" "$HERE/bench/bench_kernels.c" "$B/libnmlx.a" \
    $(pkg-config --libs jansson libpcre2-8 libutf8proc) -lpthread -lm -o "$W/bench_kernels" 2>> "$LOG" &&
    BENCH_MMAP=1 timeout "$(left)" taskset -c 0 "$W/bench_kernels" 0.1 variants 1 >> "$LOG" 2>&1
fi

python3 "$HERE/bench/cpu_peer_summary.py" "$RES" > "$OUT/summary.md" 2>> "$LOG"
cat "$OUT/summary.md"
{ echo "== lcpp cmake"; grep -iE "native|avx|x86|BUILD_VARIANT" "$W/lcpp-cmake.log" | head -20; } >> "$LOG"
log "device_cpu_peer done"
