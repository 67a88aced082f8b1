#!/usr/bin/env bash
# `nmlx bench` prints one JSON line with the documented keys, and refuses
# shapes that do not fit the context.
source "$(dirname "$0")/lib.sh"
need_tools || { finish; exit; }
need_fixtures || { finish; exit; }

dir="$(fixture_dirs | head -n 1)"
V="$(json "$dir/expected.json" j.vocab_size)"

expect_ok bench -m "$dir" -p 32 -n 8 -t 1 -r 3
check "bench prints exactly one line" [ "$(wc -l <"$TMP/out")" = 1 ]
check "bench line is JSON with the required keys and values" node -e '
const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const pos = (k) => typeof j[k] === "number" && Number.isFinite(j[k]) && j[k] > 0;
const ok = ["prefill_tok_s", "decode_tok_s", "load_s", "peak_rss_mb"].every(pos) &&
  j.threads === 1 && j.p === 32 && j.n === 8 && j.reps === 3 && j.vocab === +process.argv[2] &&
  typeof j.model_type === "string" && j.model_type.length > 0;
if (!ok) { console.error(JSON.stringify(j)); process.exit(1); }
' "$TMP/out" "$V"

expect_ok bench -m "$dir" -p 4 -n 1 -t 0
check "-n 1: decode_tok_s is null, threads resolved from -t 0" node -e '
const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
process.exit(j.decode_tok_s === null && j.threads === +process.argv[2] ? 0 : 1);
' "$TMP/out" "$(nproc)"

ctx="$(json "$dir/config.json" "j.max_position_embeddings ?? j.text_config.max_position_embeddings")"
# the default context: max_position_embeddings clamped to [4096, 8192]
ctx=$((ctx < 4096 ? 4096 : ctx > 8192 ? 8192 : ctx))
expect_fail 2 bench -m "$dir" -p $((ctx - 16 - 8 + 1)) -n 8
check "too long for the context: message says so" grep -q "context" "$TMP/err"
expect_ok bench -m "$dir" -p $((ctx - 16 - 8)) -n 8 -t 1
finish
