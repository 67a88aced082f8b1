#!/usr/bin/env bash
# Prefill only (p512), nmlx with an environment A against nmlx as is (B)
# against the CPU peer, the three alternating cell by cell, PASSES passes:
# the quantized cells of compare_cpu_peer_all.sh. One line per cell and pass.
#
#   A_ENV="NMLX_AMX_INT8=0" [PASSES=3] [THREADS=2] bash bench/prefill_ab_peer.sh PEER_DIR
#
# PEER_DIR as for compare_cpu_peer_all.sh (work/models with the hf, mlx-4bit
# and GGUF files). The peer's other_cores_pp > 0 marks a pass run under
# another process's load. Run it under `flock /tmp/nmlx-bench.lock`.
set -euo pipefail
peer="$(cd "${1:?usage: A_ENV=... bash bench/prefill_ab_peer.sh PEER_DIR}" && pwd)"
here="$(cd "$(dirname "$0")/.." && pwd)"
nmlx="$here/build/nmlx"
M="$peer/work/models"
threads="${THREADS:-2}"
read -r -a aenv <<<"${A_ENV:-NMLX_AMX_INT8=0}"
cells=("q-8|qwen3-0.6b|hf|--bits 8|Q8_0" "q-4|qwen3-0.6b|mlx-4bit||Q4_0"
  "l-8|llama-3.2-1b|hf|--bits 8|Q8_0" "l-4|llama-3.2-1b|hf|--bits 4|Q4_0")
tok() { grep -oE "\"$1\":[0-9.]+" | cut -d: -f2; }
for pass in $(seq "${PASSES:-3}"); do
  for c in "${cells[@]}"; do
    IFS='|' read -r id model fmt extra quant <<<"$c"
    # shellcheck disable=SC2086
    a=$(env "${aenv[@]}" "$nmlx" bench -m "$M/$model/$fmt" $extra -p 512 -n 0 -t "$threads" -r 2 \
      2>/dev/null | tail -1 | tok prefill_tok_s)
    # shellcheck disable=SC2086
    b=$("$nmlx" bench -m "$M/$model/$fmt" $extra -p 512 -n 0 -t "$threads" -r 2 2>/dev/null |
      tail -1 | tok prefill_tok_s)
    p=$(cd "$peer" && timeout 300 node bench_peer.mjs "$M/$model/gguf/$model-$quant.gguf" \
      --threads "$threads" --pp 512 --tg 1 --reps 2 --wait-idle 0 2>/dev/null | tail -1)
    echo "$pass $id A(${A_ENV:-NMLX_AMX_INT8=0}) $a B $b peer $(echo "$p" | tok pp512)" \
      "$(echo "$p" | grep -oE '"other_cores_pp":\[[^]]*\]')"
  done
done
