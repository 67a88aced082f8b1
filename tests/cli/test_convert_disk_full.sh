#!/usr/bin/env bash
# `nmlx convert` against a real write failure, no test hook: the process's
# file-size limit (ulimit -f, SIGXFSZ ignored) makes the kernel fail a
# write with EFBIG part-way through model.safetensors or a later file. Each
# cut must exit 1 with one "nmlx convert: ..." line naming the file and the
# cause, and leave neither the output folder nor a temporary folder beside
# it; without the limit the same command succeeds. (The hook-driven walk of
# every operation with ENOSPC/EIO/EINTR/short writes is tests/test_io_faults.c.)
source "$(dirname "$0")/lib.sh"
need_tools || { finish; exit; }
src="$FIXTURES/qwen3"
[ -f "$src/model.safetensors" ] || { fail "fixture $src is missing"; finish; exit; }

# limited KIB ARGS...: runs nmlx with writes limited to KIB KiB per file
limited() {
    local kib="$1"
    shift
    RC=0
    (trap '' XFSZ; ulimit -f "$kib"; exec "$NMLX" "$@") >"$TMP/out" 2>"$TMP/err" || RC=$?
}

mkdir -p "$TMP/dst"
# 1 KiB: the header's first write; 16, 64 KiB: tensor data part-way through
for kib in 1 16 64; do
    limited "$kib" convert -m "$src" -o "$TMP/dst/q"
    desc="convert under a ${kib} KiB file-size limit"
    check "$desc: exit 1 (got $RC)" [ "$RC" = 1 ]
    check "$desc: one 'nmlx convert:' line naming the file and the cause: $(head -c 300 "$TMP/err")" \
        bash -c '[ "$(wc -l <"$0")" = 1 ] && grep -q "^nmlx convert: .*model\.safetensors.*File too large" "$0"' \
        "$TMP/err"
    check "$desc: nothing on stdout" [ ! -s "$TMP/out" ]
    check "$desc: no output folder, no temporary left" [ -z "$(ls -A "$TMP/dst")" ]
done
limited unlimited convert -m "$src" -o "$TMP/dst/q"
check "convert without a limit: exit 0 (got $RC: $(head -c 300 "$TMP/err"))" [ "$RC" = 0 ]
check "convert without a limit: the output is there" [ -s "$TMP/dst/q/model.safetensors" ]
finish
