#!/usr/bin/env bash
# `nmlx convert` progress: with --progress one line "[i/N] tensor" per tensor
# on stderr, N lines ending at [N/N]; without it and with stderr not a
# terminal, stderr stays empty; stdout is the one JSON line either way.
source "$(dirname "$0")/lib.sh"
need_tools || { finish; exit; }

if ! node "$SOURCE_DIR/scripts/make_demo_model.mjs" "$TMP/demo" >/dev/null 2>"$TMP/demo.err"; then
    fail "make_demo_model.mjs failed: $(head -c 300 "$TMP/demo.err")"
else
    expect_ok convert -m "$TMP/demo" -o "$TMP/q1" --group-size 32 --progress
    check "convert --progress: stdout is one JSON line" \
        bash -c '[ "$(wc -l <"$0")" = 1 ] && grep -q "^{\"output\":" "$0"' "$TMP/out"
    n="$(wc -l <"$TMP/err")"
    check "convert --progress: one line per tensor" [ "$n" -gt 2 ]
    check "convert --progress: lines count 1..N" \
        bash -c 'awk -v n="$1" '"'"'{ if ($0 !~ "^nmlx convert: \\[ *" NR "/" n "\\] [a-z]") bad = 1 } END { exit bad }'"'"' "$0"' \
        "$TMP/err" "$n"
    expect_ok convert -m "$TMP/demo" -o "$TMP/q2" --group-size 32
    check "convert without --progress, stderr not a terminal: quiet" [ ! -s "$TMP/err" ]
    check "convert: the same output with and without progress" \
        cmp -s "$TMP/q1/model.safetensors" "$TMP/q2/model.safetensors"
fi
finish
