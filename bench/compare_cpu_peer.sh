#!/usr/bin/env bash
# A/B of nmlx against the CPU peer (llama.cpp via node-llama-cpp) on the same
# synthetic real-shape checkpoint, alternating engines for PASSES passes so
# both see the same machine noise. Prints one JSON line per run.
#
#   bash bench/compare_cpu_peer.sh PEER_DIR [MODEL] [NMLX_FORMAT] [GGUF_QUANT] [PASSES]
#
# PEER_DIR: a writable copy of ../shared/bench/cpu-peer after its setup.sh and
# `make_models.py --models MODEL --formats hf,gguf --quants GGUF_QUANT` (see its
# README). Defaults: qwen3-0.6b, hf (bf16), F16, 3 passes. Same prompt length
# (512), decode length (128) and threads (2) for both engines.
set -euo pipefail
peer="${1:?usage: compare_cpu_peer.sh PEER_DIR [MODEL] [NMLX_FORMAT] [GGUF_QUANT] [PASSES]}"
model="${2:-qwen3-0.6b}"; fmt="${3:-hf}"; quant="${4:-F16}"; passes="${5:-3}"
here="$(cd "$(dirname "$0")/.." && pwd)"
nmlx="$here/build/nmlx"
[ -x "$nmlx" ] || { echo "build nmlx first (bash scripts/setup.sh)" >&2; exit 1; }
mdir="$peer/work/models/$model"
gguf="$mdir/gguf/$model-$quant.gguf"
[ -d "$mdir/$fmt" ] && [ -f "$gguf" ] || { echo "missing $mdir/$fmt or $gguf (run the peer's make_models.py)" >&2; exit 1; }
for i in $(seq "$passes"); do
  printf '{"engine":"nmlx","format":"%s","pass":%d,"result":%s}\n' "$fmt" "$i" \
    "$("$nmlx" bench -m "$mdir/$fmt" -p 512 -n 128 -t 2 -r 3)"
  printf '{"engine":"llama.cpp","format":"%s","pass":%d,"result":%s}\n' "$quant" "$i" \
    "$(cd "$peer" && node bench_peer.mjs "$gguf" --threads 2 --pp 512 --tg 128 --reps 3 --wait-idle 0 2>/dev/null | tail -1)"
done
