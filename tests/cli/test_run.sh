#!/usr/bin/env bash
# `nmlx run`: on a fixture (no tokenizer) with --ids it prints the ids and a
# stats line; -p needs a tokenizer; on the demo model (tokenizer.json made
# by scripts/make_demo_model.mjs) -p streams text.
source "$(dirname "$0")/lib.sh"
need_tools || { finish; exit; }
need_fixtures || { finish; exit; }

dir="$(fixture_dirs | head -n 1)"
ids="$(json "$dir/expected.json" j.prompt_ids)"
greedy="$(json "$dir/expected.json" j.greedy_ids)"
n="$(json "$dir/expected.json" j.greedy_ids.length)"

if [ -f "$dir/tokenizer.json" ]; then
    fail "fixture $dir has a tokenizer; this test needs one without"
fi
expect_ok run -m "$dir" --ids "$ids" -n "$n" --ignore-eos --temp 0
check "run --ids without a tokenizer prints the greedy ids" \
    [ "$(tr ' ' , <"$TMP/out")" = "$greedy" ]
check "run prints a stats line on stderr" \
    grep -q "^\[$(json "$dir/expected.json" j.prompt_ids.length) prompt tokens, .* tok/s prefill | $n generated, .* tok/s decode | stop: length\]$" "$TMP/err"
expect_fail 1 run -m "$dir" -p "hello"
check "-p without a tokenizer: clear message" grep -q "no tokenizer" "$TMP/err"

demo="$SOURCE_DIR/scripts/make_demo_model.mjs"
if [ ! -f "$demo" ]; then
    fail "$demo is missing: it makes the model with a tokenizer that this test needs"
elif ! node "$demo" "$TMP/demo" >/dev/null 2>"$TMP/demo.err"; then
    fail "make_demo_model.mjs failed: $(head -c 300 "$TMP/demo.err")"
else
    expect_ok run -m "$TMP/demo" -p "Hello world, this is nmlx." -n 12 --ignore-eos --seed 3
    check "run -p streams text ending in a newline" \
        bash -c '[ -s "$0" ] && [ "$(tail -c 1 "$0" | od -An -c | tr -d " ")" = "\\n" ]' "$TMP/out"
    check "run -p stats: 12 generated" grep -q "| 12 generated," "$TMP/err"
    cp "$TMP/out" "$TMP/r1"
    expect_ok run -m "$TMP/demo" -p "Hello world, this is nmlx." -n 12 --ignore-eos --seed 3
    check "run: same seed, same text" cmp -s "$TMP/r1" "$TMP/out"
    expect_ok run -m "$TMP/demo" -p "Hi" -n 0
    check "run -n 0 prints nothing" [ ! -s "$TMP/out" ]
fi
finish
