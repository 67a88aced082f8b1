#!/usr/bin/env bash
# `nmlx run` without -m uses the built-in demo model: $NMLX_DEMO_MODEL, else
# the folder compiled in (<source>/models/demo for a repository build). It
# says so in one line on stderr; a missing demo model is a clear one-line
# error (exit 1), never a crash.
source "$(dirname "$0")/lib.sh"
need_tools || { finish; exit; }

line="^nmlx: no model given; using the built-in demo model at"
if ! node "$SOURCE_DIR/scripts/make_demo_model.mjs" "$TMP/demo" >/dev/null 2>"$TMP/demo.err"; then
    fail "make_demo_model.mjs failed: $(head -c 300 "$TMP/demo.err")"
else
    export NMLX_DEMO_MODEL="$TMP/demo"
    expect_ok run -p "Once upon a time" -n 6 --ignore-eos --seed 1
    check "run without -m: text on stdout" [ -s "$TMP/out" ]
    check "run without -m: one line naming \$NMLX_DEMO_MODEL" \
        grep -q "$line $TMP/demo " "$TMP/err"
    check "run without -m: then the stats line" grep -q "| 6 generated," "$TMP/err"
    cp "$TMP/out" "$TMP/default"
    expect_ok run -m "$TMP/demo" -p "Once upon a time" -n 6 --ignore-eos --seed 1
    check "run without -m = run -m <demo>" cmp -s "$TMP/default" "$TMP/out"
    check "run -m says nothing about the demo model" bash -c '! grep -q "built-in demo" "$0"' "$TMP/err"
fi

NMLX_DEMO_MODEL="$TMP/no-such-model" expect_fail 1 run -p "Once upon a time"
check "missing demo model: the message says so and names the folder" \
    grep -q "built-in demo model is missing.*$TMP/no-such-model" "$TMP/err"
expect_fail 2 run -n 4
check "no prompt: usage error, not the demo model" bash -c '! grep -q "using the built-in" "$0"' "$TMP/err"

# The compiled-in folder: the repository's models/demo (if it is there).
unset NMLX_DEMO_MODEL
if [ -f "$SOURCE_DIR/models/demo/config.json" ]; then
    expect_ok run -p "Once upon a time" -n 4
    check "run without -m in a repository build: models/demo" \
        grep -q "$line $SOURCE_DIR/models/demo " "$TMP/err"
else
    expect_fail 1 run -p "Once upon a time" -n 4
    check "no models/demo in the source tree: a clear message" grep -q "built-in demo model is missing" "$TMP/err"
fi
finish
