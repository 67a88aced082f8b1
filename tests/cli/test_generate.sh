#!/usr/bin/env bash
# `nmlx generate` on every fixture: --ignore-eos prints exactly n ids equal
# to the transformers greedy continuation; without it the output stops at an
# end-of-sequence id; sampling with a seed is reproducible.
source "$(dirname "$0")/lib.sh"
need_tools || { finish; exit; }
need_fixtures || { finish; exit; }

is_ids_line() { # is_ids_line FILE COUNT VOCAB: one line of COUNT ids in [0, VOCAB)
    node -e '
const s = require("fs").readFileSync(process.argv[1], "utf8");
const [n, V] = [+process.argv[2], +process.argv[3]];
if (!s.endsWith("\n") || s.indexOf("\n") !== s.length - 1) process.exit(1);
const line = s.slice(0, -1);
const ids = line === "" ? [] : line.split(",");
process.exit(ids.length === n && ids.every((x) => /^\d+$/.test(x) && +x < V) ? 0 : 1);
' "$1" "$2" "$3"
}

for dir in $(fixture_dirs); do
    name="${dir#"$FIXTURES"/}"
    ids="$(json "$dir/expected.json" j.prompt_ids)"
    greedy="$(json "$dir/expected.json" j.greedy_ids)"
    n="$(json "$dir/expected.json" j.greedy_ids.length)"
    V="$(json "$dir/expected.json" j.vocab_size)"

    expect_ok generate -m "$dir" --ids "$ids" -n "$n" --ignore-eos || continue
    check "$name: --ignore-eos prints exactly $n ids" is_ids_line "$TMP/out" "$n" "$V"
    got="$(cat "$TMP/out")"
    check "$name: greedy ids $got == reference $greedy" [ "$got" = "$greedy" ]

    # Explicit --temp 0 with any seed is the same greedy continuation.
    expect_ok generate -m "$dir" --ids "$ids" -n "$n" --ignore-eos --temp 0 --seed 99 -t 2 &&
        check "$name: --temp 0 --seed 99 -t 2 is greedy" [ "$(cat "$TMP/out")" = "$greedy" ]

    # Without --ignore-eos: a prefix of the greedy ids, cut after an eos id.
    expect_ok generate -m "$dir" --ids "$ids" -n "$n" &&
        check "$name: without --ignore-eos, a prefix of greedy ending at eos or after n" \
            node -e '
const [got, greedy, n] = [process.argv[1], process.argv[2].split(","), +process.argv[3]];
const eos = [JSON.parse(require("fs").readFileSync(process.argv[4], "utf8")).eos_token_id].flat()
    .filter((x) => x !== null && x !== undefined).map(String);
const g = got.trim() === "" ? [] : got.trim().split(",");
const prefix = g.every((x, i) => x === greedy[i]);
const stop = g.length === n || (g.length > 0 && eos.includes(g[g.length - 1]));
const firstEos = greedy.findIndex((x) => eos.includes(x));
const right = firstEos < 0 ? g.length === n : g.length === Math.min(n, firstEos + 1);
process.exit(prefix && stop && right ? 0 : 1);
' "$(cat "$TMP/out")" "$greedy" "$n" "$dir/expected.json"
done

dir="$(fixture_dirs | head -n 1)"
ids="$(json "$dir/expected.json" j.prompt_ids)"
V="$(json "$dir/expected.json" j.vocab_size)"

expect_ok generate -m "$dir" --ids "$ids" -n 0
check "-n 0 prints an empty line" [ "$(cat "$TMP/out")" = "" ] && check "-n 0: one newline" \
    [ "$(wc -c <"$TMP/out")" = 1 ]

# Sampling: same seed, same ids; all flags accepted; ids within the vocab.
sample=(--temp 0.8 --seed 7 --ignore-eos -n 24)
expect_ok generate -m "$dir" --ids "$ids" "${sample[@]}" && cp "$TMP/out" "$TMP/s1"
expect_ok generate -m "$dir" --ids "$ids" "${sample[@]}" -t 2 && cp "$TMP/out" "$TMP/s2"
check "--temp 0.8 --seed 7 prints 24 ids" is_ids_line "$TMP/s1" 24 "$V"
check "same seed, same ids (also with -t 2)" cmp -s "$TMP/s1" "$TMP/s2"
expect_ok generate -m "$dir" --ids "$ids" --temp=0.8 --seed=7 --ignore-eos --max-tokens=24
check "--opt=value spelling gives the same ids" cmp -s "$TMP/s1" "$TMP/out"
full=(--temp 1.2 --top-p 0.9 --top-k 20 --min-p 0.02 --repeat-penalty 1.3 --repeat-last-n 8
    --seed 12345 --ignore-eos -n 20)
expect_ok generate -m "$dir" --ids "$ids" "${full[@]}" && cp "$TMP/out" "$TMP/f1"
check "every sampling flag together prints 20 ids in range" is_ids_line "$TMP/f1" 20 "$V"
expect_ok generate -m "$dir" --ids "$ids" "${full[@]}"
check "every sampling flag together is reproducible" cmp -s "$TMP/f1" "$TMP/out"

# Bad ids against the model's vocabulary.
expect_fail 2 generate -m "$dir" --ids "0,$V" -n 2
check "out-of-range id names the vocab" grep -q "out of range \[0, $V)" "$TMP/err"
ctx="$(json "$dir/config.json" "j.max_position_embeddings ?? j.text_config.max_position_embeddings")"
long="$(node -e 'console.log(Array.from({length: Math.min(Math.max(+process.argv[1], 4096), 8192) + 1}, (_, i) => i % 7).join(","))' "$ctx")"
expect_fail 1 generate -m "$dir" --ids "$long" -n 2
finish
