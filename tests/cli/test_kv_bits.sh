#!/usr/bin/env bash
# --kv-bits (quantized KV cache) on generate, run, logits and bench: 8-bit
# keeps the greedy ids of the qwen3 fixture; logits stay close to the f32
# cache's; bad values are usage or library errors with one clear line.
source "$(dirname "$0")/lib.sh"
need_tools || { finish; exit; }
need_fixtures || { finish; exit; }

dir="$FIXTURES/qwen3" # head_dim 16: group 16
ids="$(json "$dir/expected.json" j.prompt_ids)"
greedy="$(json "$dir/expected.json" j.greedy_ids)"
n="$(json "$dir/expected.json" j.greedy_ids.length)"
V="$(json "$dir/expected.json" j.vocab_size)"
kv=(--kv-bits 8 --kv-group-size 16)

expect_ok generate -m "$dir" --ids "$ids" -n "$n" --ignore-eos "${kv[@]}"
check "generate --kv-bits 8 keeps the greedy ids" [ "$(cat "$TMP/out")" = "$greedy" ]
expect_ok run -m "$dir" --ids "$ids" -n "$n" --ignore-eos --temp 0 "${kv[@]}"
check "run --kv-bits 8 keeps the greedy ids" [ "$(tr ' ' , <"$TMP/out")" = "$greedy" ]
expect_ok generate -m "$dir" --ids "$ids" -n 4 --kv-bits 4 --kv-group-size 16 --quantized-kv-start 8

expect_ok logits -m "$dir" --ids "$ids" -o "$TMP/f32.bin"
expect_ok logits -m "$dir" --ids "$ids" -o "$TMP/q8.bin" "${kv[@]}"
check "logits --kv-bits 8: within 5% of max |logit| of the f32 cache, not identical" node -e '
const fs = require("fs");
const f = (p) => { const b = fs.readFileSync(p); return new Float32Array(b.buffer, b.byteOffset, b.length / 4); };
const a = f(process.argv[1]), b = f(process.argv[2]);
let md = 0, mr = 0;
for (let i = 0; i < a.length; i++) { md = Math.max(md, Math.abs(a[i] - b[i])); mr = Math.max(mr, Math.abs(a[i])); }
process.exit(a.length === b.length && a.length % +process.argv[3] === 0 && md > 0 && md <= 0.05 * mr ? 0 : 1);
' "$TMP/f32.bin" "$TMP/q8.bin" "$V"

expect_ok bench -m "$dir" -p 8 -n 4 --kv-bits 4 --kv-group-size 16
check "bench --kv-bits prints kv_bits" grep -q '"kv_bits":4' "$TMP/out"

expect_fail 2 generate -m "$dir" --ids "$ids" --kv-bits 9
expect_fail 2 bench -m "$dir" --kv-bits -1
expect_fail 1 generate -m "$dir" --ids "$ids" --kv-bits 7
check "kv_bits 7: names kv_bits" grep -q "kv_bits" "$TMP/err"
expect_fail 1 logits -m "$dir" --ids "$ids" -o "$TMP/x.bin" --kv-bits 8
check "group 64 vs head_dim 16: names head_dim" grep -q "head_dim 16" "$TMP/err"
check "failed logits writes no file" [ ! -e "$TMP/x.bin" ]
finish
