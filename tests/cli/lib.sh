# Helpers for the CLI script tests (sourced by tests/cli/test_*.sh).
# Each test script is run as: bash test_X.sh NMLX_BINARY FIXTURES_DIR
# and ends with `finish`, which prints "N passed, N failed" and sets the exit
# status. A missing binary, fixture or tool is a failure, never a skip.
set -u

NMLX="${1:?usage: $0 NMLX_BINARY FIXTURES_DIR}"
FIXTURES="${2:?usage: $0 NMLX_BINARY FIXTURES_DIR}"
SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
n_pass=0
n_fail=0
TMP="$(mktemp -d "${TMPDIR:-/tmp}/nmlx-cli-test.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

pass() { n_pass=$((n_pass + 1)); }
fail() {
    n_fail=$((n_fail + 1))
    echo "FAIL: $*" >&2
}
check() { # check DESCRIPTION COND...: passes if the command COND succeeds
    local desc="$1"
    shift
    if "$@"; then pass; else fail "$desc"; fi
}

# run ARGS...: runs nmlx, leaving stdout in $TMP/out, stderr in $TMP/err and
# the exit status in $RC.
run() {
    RC=0
    "$NMLX" "$@" >"$TMP/out" 2>"$TMP/err" || RC=$?
}

# expect_fail RC CMD ARGS...: nmlx CMD ARGS exits with RC and prints exactly
# one line "nmlx CMD: ..." on stderr and nothing on stdout.
expect_fail() {
    local want="$1" cmd="$2"
    shift 2
    run "$cmd" "$@"
    local desc="nmlx $cmd $*"
    if [ "$RC" != "$want" ]; then
        fail "$desc: exit $RC, want $want (stderr: $(head -c 300 "$TMP/err"))"
        return
    fi
    if [ "$(wc -l <"$TMP/err")" != 1 ] || ! grep -q "^nmlx $cmd: ." "$TMP/err"; then
        fail "$desc: stderr is not one 'nmlx $cmd: ...' line: $(head -c 300 "$TMP/err")"
        return
    fi
    if [ -s "$TMP/out" ]; then
        fail "$desc: wrote to stdout on failure"
        return
    fi
    pass
}

# expect_ok ARGS...: nmlx exits 0.
expect_ok() {
    run "$@"
    if [ "$RC" = 0 ]; then pass; else fail "nmlx $*: exit $RC: $(head -c 300 "$TMP/err")"; fi
    [ "$RC" = 0 ]
}

# json FILE EXPR: evaluates EXPR with `j` bound to the parsed JSON file.
json() {
    node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
             const v = eval(process.argv[2]);
             console.log(Array.isArray(v) ? v.join(",") : v);' "$1" "$2"
}

# fixture_dirs: every fixture folder (main and holdout), one per line.
fixture_dirs() {
    find "$FIXTURES" -name expected.json -printf '%h\n' 2>/dev/null | sort
}

# need_fixtures: fails the script (with a clear message) if there are none.
need_fixtures() {
    if [ -z "$(fixture_dirs)" ]; then
        fail "no fixtures (folders with expected.json) under $FIXTURES: generate them with" \
            "tests/fixtures/make_fixtures.py (see its header); this test needs them"
        return 1
    fi
}

need_tools() {
    [ -x "$NMLX" ] || { fail "nmlx binary '$NMLX' is missing or not executable"; return 1; }
    command -v node >/dev/null || { fail "node is needed for the JSON checks"; return 1; }
}

finish() {
    echo "$n_pass passed, $n_fail failed"
    [ "$n_fail" = 0 ] && [ "$n_pass" -gt 0 ]
}
