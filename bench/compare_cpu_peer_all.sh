#!/usr/bin/env bash
# The six cells of issue 9 in one command: nmlx against the CPU peer
# (llama.cpp via node-llama-cpp) on the same synthetic real-shape
# checkpoints, engines alternating cell by cell, PASSES passes; then the
# table of medians, ratios (nmlx / peer) and peak RSS, with the processor's
# model name and the read-bandwidth ceiling (the peer's membw).
#
#   bash bench/compare_cpu_peer_all.sh PEER_DIR [PASSES=1] [REPS=1] [CELLS=all] [THREADS=2]
#
# PEER_DIR: a writable copy of ../shared/bench/cpu-peer after its setup.sh
# and make_models.py (hf, mlx-4bit and the F16/Q8_0/Q4_0 GGUFs of both
# models). CELLS: comma-separated subset of q-bf16,q-8,q-4,l-bf16,l-8,l-4.
# p512 / n128 (decode after a 16-token prompt) for both engines. Raw JSON
# lines go to $RESULTS (default /tmp/nmlx-cpu-peer-<time>.jsonl). Run it
# under `flock /tmp/nmlx-bench.lock` where other benchmarks may run.
set -euo pipefail
peer="${1:?usage: compare_cpu_peer_all.sh PEER_DIR [PASSES] [REPS] [CELLS] [THREADS]}"
passes="${2:-1}"; reps="${3:-1}"; cells="${4:-all}"; threads="${5:-2}"
here="$(cd "$(dirname "$0")/.." && pwd)"
nmlx="$here/build/nmlx"
[ -x "$nmlx" ] || { echo "build nmlx first (bash scripts/setup.sh)" >&2; exit 1; }
peer="$(cd "$peer" && pwd)"
models="$peer/work/models"
results="${RESULTS:-/tmp/nmlx-cpu-peer-$(date +%Y%m%d-%H%M%S).jsonl}"
: > "$results"

# cell id | label | model | nmlx folder | nmlx extra args | GGUF quant
all_cells=(
  "q-bf16|Qwen3-0.6B bf16 vs F16|qwen3-0.6b|hf||F16"
  "q-8|Qwen3-0.6B 8-bit g64 (--bits 8) vs Q8_0|qwen3-0.6b|hf|--bits 8|Q8_0"
  "q-4|Qwen3-0.6B MLX 4-bit g64 vs Q4_0|qwen3-0.6b|mlx-4bit||Q4_0"
  "l-bf16|Llama-3.2-1B bf16 vs F16|llama-3.2-1b|hf||F16"
  "l-8|Llama-3.2-1B 8-bit g64 (--bits 8) vs Q8_0|llama-3.2-1b|hf|--bits 8|Q8_0"
  "l-4|Llama-3.2-1B 4-bit g64 (--bits 4) vs Q4_0|llama-3.2-1b|hf|--bits 4|Q4_0"
)

model_name="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
flags="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
  grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|avx_vnni|amx_bf16|amx_int8)$' |
  tr '\n' ' ')"
printf '{"cpu":"%s","flags":"%s","nproc":%s,"nmlx_commit":"%s"}\n' "$model_name" "${flags% }" \
  "$(nproc)" "$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)" | tee -a "$results"
if [ -x "$peer/work/membw" ]; then
  printf '{"membw":%s}\n' "$("$peer/work/membw" "$threads" 1024 10 | tail -1)" | tee -a "$results"
fi

for pass in $(seq "$passes"); do
  for c in "${all_cells[@]}"; do
    IFS='|' read -r id label model fmt extra quant <<<"$c"
    [ "$cells" = all ] || [[ ",$cells," == *",$id,"* ]] || continue
    dir="$models/$model/$fmt"; gguf="$models/$model/gguf/$model-$quant.gguf"
    if [ ! -d "$dir" ] || [ ! -f "$gguf" ]; then
      echo "skip $id: missing $dir or $gguf" >&2; continue
    fi
    # shellcheck disable=SC2086
    r="$("$nmlx" bench -m "$dir" $extra -p 512 -n 128 -t "$threads" -r "$reps" 2>/dev/null | tail -1)" || true
    [ -n "$r" ] || r='{}'
    printf '{"cell":"%s","engine":"nmlx","threads":%s,"pass":%d,"result":%s}\n' \
      "$label" "$threads" "$pass" "$r" | tee -a "$results"
    r="$(cd "$peer" && node bench_peer.mjs "$gguf" --threads "$threads" --pp 512 --tg 128 \
      --reps "$reps" --wait-idle 0 2>/dev/null | tail -1)" || true
    [ -n "$r" ] || r='{}'
    printf '{"cell":"%s","engine":"peer","threads":%s,"pass":%d,"result":%s}\n' \
      "$label" "$threads" "$pass" "$r" | tee -a "$results"
  done
done
echo "raw results: $results"
python3 "$here/bench/cpu_peer_summary.py" "$results"
