#!/usr/bin/env bash
# Usage handling of every subcommand, no model needed: --help texts, unknown
# options, missing values, malformed --ids and numbers (exit 2), a missing
# model folder (exit 1), always one "nmlx <cmd>: ..." line on stderr.
source "$(dirname "$0")/lib.sh"
need_tools || { finish; exit; }

for cmd in logits generate bench run; do
    run "$cmd" --help
    check "nmlx $cmd --help exits 0" [ "$RC" = 0 ]
    check "nmlx $cmd --help shows a man-style text" grep -q "^SYNOPSIS" "$TMP/out"
    check "nmlx $cmd --help names the command" grep -q "nmlx $cmd" "$TMP/out"
    run "$cmd" -h
    check "nmlx $cmd -h exits 0" [ "$RC" = 0 ]
    expect_fail 2 "$cmd" -m /nonexistent --bogus
    check "unknown option is named" grep -q "unknown option '--bogus'" "$TMP/err"
    expect_fail 2 "$cmd" -m
    check "missing value is reported" grep -q "needs a value" "$TMP/err"
    expect_fail 2 "$cmd" -m /nonexistent stray
    expect_fail 2 "$cmd" -m /nonexistent -t -1
    expect_fail 2 "$cmd" -m /nonexistent -t 100000
    expect_fail 2 "$cmd" -m /nonexistent -t two
    expect_fail 2 "$cmd" -m /nonexistent -n -1
    expect_fail 2 "$cmd" -m /nonexistent -n 12x
    expect_fail 2 "$cmd" -m /nonexistent --threads=99999999999999999999
done
expect_fail 2 generate -m /nonexistent --ignore-eos=1 --ids 1

# Malformed --ids are usage errors before any model is loaded.
for cmd in logits generate run; do
    for bad in "1,,2" "a" "-1" "" "1," ",1" "1 2" "1;2" "+1" "0x10" "1.5" "2147483648" \
        "99999999999999999999"; do
        expect_fail 2 "$cmd" -m /nonexistent --ids "$bad"
        check "nmlx $cmd --ids '$bad': message names --ids" grep -q -- "--ids" "$TMP/err"
    done
    expect_fail 2 "$cmd" -m /nonexistent --ids=1,x
done
run generate -m /nonexistent --ids 2147483647,0 -n 0
check "largest int32 id parses (then the model is missing: exit 1)" [ "$RC" = 1 ]

# Required options.
expect_fail 2 logits -m /nonexistent --ids 1
check "logits without -o names it" grep -q -- "-o FILE" "$TMP/err"
expect_fail 2 logits --ids 1 -o "$TMP/x.bin"
expect_fail 2 generate -m /nonexistent
expect_fail 2 bench
expect_fail 2 run -m /nonexistent
expect_fail 2 run -m /nonexistent -p hi --ids 1

# Sampling values out of range.
for bad in "--temp -1" "--temp nan" "--temp inf" "--temp 101" "--top-p 1.5" "--top-p -0.1" \
    "--top-k -1" "--min-p 2" "--repeat-penalty 0" "--repeat-last-n -2" "--seed -1" \
    "--seed x" "--seed 18446744073709551616"; do
    # shellcheck disable=SC2086
    expect_fail 2 generate -m /nonexistent --ids 1 $bad
    # shellcheck disable=SC2086
    expect_fail 2 run -m /nonexistent --ids 1 $bad
done
expect_fail 2 bench -m /nonexistent -p 0
expect_fail 2 bench -m /nonexistent -r 0
expect_fail 2 bench -m /nonexistent -r 1001

# A missing model folder is a failure (exit 1) naming the folder.
expect_fail 1 generate -m "$TMP/no-such-model" --ids 1,2
check "missing model folder is named" grep -q "no-such-model" "$TMP/err"
expect_fail 1 logits -m "$TMP/no-such-model" --ids 1,2 -o "$TMP/out.bin"
check "failed logits leaves no file" [ -z "$(ls -A "$TMP" | grep -v '^out$\|^err$')" ]
expect_fail 1 bench -m "$TMP/no-such-model" -p 8 -n 2
expect_fail 1 run -m "$TMP/no-such-model" -p hello

# The dispatcher.
RC=0; "$NMLX" >/dev/null 2>&1 || RC=$?
check "nmlx without a command exits 2" [ "$RC" = 2 ]
RC=0; "$NMLX" frobnicate >/dev/null 2>&1 || RC=$?
check "unknown command exits 2" [ "$RC" = 2 ]
RC=0; "$NMLX" --help >"$TMP/out" 2>/dev/null || RC=$?
check "nmlx --help exits 0 and lists the commands" \
    bash -c '[ "$0" = 0 ] && grep -q logits "$1" && grep -q bench "$1"' "$RC" "$TMP/out"
finish
