#!/usr/bin/env bash
# One quantized cell of issue #9's table: nmlx builds (and precisions) and the
# CPU peer (llama.cpp via node-llama-cpp) alternating on the same synthetic
# real-shape checkpoint, p512 / n128, 2 threads. One JSON line per run, then
# the load average; run it under `flock /tmp/nmlx-bench.lock`.
#
#   bash bench/compare_quant_cells.sh PEER_DIR MODEL CELL PASSES NMLX [NMLX...]
#
# MODEL: qwen3-0.6b | llama-3.2-1b. CELL: q4 (nmlx: the mlx-4bit folder;
# peer Q4_0) | q8 (nmlx: hf + --bits 8, quantize-on-load; peer Q8_0) | q4bits
# (nmlx: hf + --bits 4). Each NMLX is a path to an nmlx binary, optionally
# prefixed with environment settings, e.g. "NMLX_QUANT_BF16=both:build/nmlx".
set -euo pipefail
peer="${1:?PEER_DIR}"; model="${2:?MODEL}"; cell="${3:?CELL}"; passes="${4:?PASSES}"; shift 4
mdir="$peer/work/models/$model"
case "$cell" in
  q4) folder="$mdir/mlx-4bit"; extra=(); quant=Q4_0 ;;
  q4bits) folder="$mdir/hf"; extra=(--bits 4); quant=Q4_0 ;;
  q8) folder="$mdir/hf"; extra=(--bits 8); quant=Q8_0 ;;
  *) echo "unknown cell $cell" >&2; exit 1 ;;
esac
gguf="$mdir/gguf/$model-$quant.gguf"
echo "{\"cpu\":\"$(lscpu | sed -n 's/^Model name: *//p')\",\"model\":\"$model\",\"cell\":\"$cell\",\"load\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
for i in $(seq "$passes"); do
  for spec in "$@"; do
    envs=""; bin="$spec"
    if [[ "$spec" == *:* ]]; then envs="${spec%%:*}"; bin="${spec#*:}"; fi
    r="$(env $envs "$bin" bench -m "$folder" "${extra[@]}" -p 512 -n 128 -t 2 -r 1)"
    echo "{\"engine\":\"$spec\",\"pass\":$i,\"result\":$r}"
  done
  r="$(cd "$peer" && node bench_peer.mjs "$gguf" --threads 2 --pp 512 --tg 128 --reps 1 --wait-idle 0 2>/dev/null | tail -1)"
  echo "{\"engine\":\"llama.cpp $quant\",\"pass\":$i,\"result\":$r}"
done
echo "{\"load_after\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
