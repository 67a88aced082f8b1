#!/usr/bin/env bash
# `nmlx logits` on every fixture: the file is [T, vocab] float32 and matches
# the transformers reference logits.bin (float32: max |diff| <= 1e-4 x
# max |ref|; quantized: the precision contract, <= 2e-2 x max |ref|, as the
# default may round activations to bf16 inside quantized matmuls; all: same
# argmax in every row). Failures leave no file behind
# and never touch an existing output file.
source "$(dirname "$0")/lib.sh"
need_tools || { finish; exit; }
need_fixtures || { finish; exit; }

# compare OUT REF DTYPE: prints nothing if OUT matches REF, else the reason.
compare() {
    node -e '
const fs = require("fs");
const f32 = (p) => { const b = fs.readFileSync(p); return new Float32Array(b.buffer, b.byteOffset, b.length / 4); };
const [out, ref, dtype, V] = [f32(process.argv[1]), f32(process.argv[2]), process.argv[3], +process.argv[4]];
if (out.length !== ref.length) { console.log(`length ${out.length} != ${ref.length}`); process.exit(); }
let maxRef = 0, maxDiff = 0;
for (let i = 0; i < ref.length; i++) {
  if (!Number.isFinite(out[i])) { console.log(`non-finite logit at ${i}`); process.exit(); }
  maxRef = Math.max(maxRef, Math.abs(ref[i]));
  maxDiff = Math.max(maxDiff, Math.abs(out[i] - ref[i]));
}
const argmax = (a, r) => { let k = 0; for (let v = 1; v < V; v++) if (a[r * V + v] > a[r * V + k]) k = v; return k; };
for (let r = 0; r < ref.length / V; r++)
  if (argmax(out, r) !== argmax(ref, r)) { console.log(`row ${r}: argmax ${argmax(out, r)} != ${argmax(ref, r)}`); process.exit(); }
const tol = dtype === "quantized" ? 2e-2 : 1e-4;
if (dtype !== "bfloat16" && maxDiff > tol * maxRef) console.log(`max |diff| ${maxDiff} > ${tol} x ${maxRef}`);
' "$1" "$2" "$3" "$4"
}

first=""
for dir in $(fixture_dirs); do
    name="${dir#"$FIXTURES"/}"
    [ -n "$first" ] || first="$dir"
    ids="$(json "$dir/expected.json" j.prompt_ids)"
    T="$(json "$dir/expected.json" j.prompt_ids.length)"
    V="$(json "$dir/expected.json" j.vocab_size)"
    dtype="$(json "$dir/expected.json" j.dtype)"
    [ "$(json "$dir/expected.json" '!!j.quantization')" = true ] && dtype=quantized
    mkdir -p "$TMP/$name"
    out="$TMP/$name/logits.bin"
    expect_ok logits -m "$dir" --ids "$ids" -o "$out" || continue
    check "$name: logits file is T*V*4 = $((T * V * 4)) bytes" \
        [ "$(stat -c %s "$out" 2>/dev/null)" = $((T * V * 4)) ]
    check "$name: nothing printed on stdout" [ ! -s "$TMP/out" ]
    check "$name: no temporary file left" [ "$(ls -A "$TMP/$name")" = logits.bin ]
    why="$(compare "$out" "$dir/logits.bin" "$dtype" "$V")"
    check "$name: logits match the reference ($dtype): $why" [ -z "$why" ]
    # Two threads give the same answer within the same tolerance.
    expect_ok logits -m "$dir" --ids "$ids" -o "$TMP/$name/t2.bin" -t 2 &&
        why="$(compare "$TMP/$name/t2.bin" "$dir/logits.bin" "$dtype" "$V")" &&
        check "$name: -t 2 logits match the reference: $why" [ -z "$why" ]
    rm -f "$TMP/$name/t2.bin"
done

# Error cases on the first fixture.
dir="$first"
V="$(json "$dir/expected.json" j.vocab_size)"
mkdir -p "$TMP/err-cases"
cd "$TMP/err-cases" || exit 1

expect_fail 2 logits -m "$dir" --ids "1,$V" -o "$TMP/err-cases/a.bin"
check "out-of-range id is reported with the vocab size" grep -q "out of range \[0, $V)" "$TMP/err"
check "out-of-range id leaves no file" [ -z "$(ls -A .)" ]

expect_fail 1 logits -m "$dir" --ids 1,2 -o "$TMP/err-cases/missing/dir/a.bin"
check "missing output folder: message names the path" grep -q "missing/dir/a.bin" "$TMP/err"
check "missing output folder leaves nothing" [ -z "$(ls -A .)" ]

# An output path that is an existing folder: the temporary file is created
# beside it, the rename fails, and the temporary file must be removed.
mkdir "$TMP/err-cases/isdir"
expect_fail 1 logits -m "$dir" --ids 1,2 -o "$TMP/err-cases/isdir"
check "folder as output leaves no temporary file" [ "$(ls -A .)" = isdir ]
check "folder as output is left untouched" [ -z "$(ls -A isdir)" ]
rmdir isdir

# A prompt longer than the context fails while evaluating (after the
# arguments were accepted): no file, and an existing file is kept as is.
ctx="$(json "$dir/config.json" "j.max_position_embeddings ?? j.text_config.max_position_embeddings")"
long="$(node -e 'console.log(Array.from({length: Math.min(Math.max(+process.argv[1], 4096), 8192) + 1}, (_, i) => i % 7).join(","))' "$ctx")"
printf 'keep me' >"$TMP/err-cases/existing.bin"
expect_fail 1 logits -m "$dir" --ids "$long" -o "$TMP/err-cases/existing.bin"
check "failed logits keeps an existing output file" [ "$(cat existing.bin)" = "keep me" ]
check "failed logits leaves no temporary file" [ "$(ls -A .)" = existing.bin ]
expect_fail 2 logits -m "$dir" --ids "$V" -o "$TMP/err-cases/existing.bin"
check "usage error keeps an existing output file" [ "$(cat existing.bin)" = "keep me" ]

# Success replaces an existing file.
expect_ok logits -m "$dir" --ids 3,1,2 -o "$TMP/err-cases/existing.bin"
check "success replaces an existing file (3 rows)" \
    [ "$(stat -c %s existing.bin)" = $((3 * V * 4)) ]
check "the output gets the usual permissions" \
    [ "$(stat -c %a existing.bin)" = "$(printf '%o' $((0666 & ~$(umask))))" ]
check "no temporary file after success" [ "$(ls -A .)" = existing.bin ]

# A file-size limit part-way through the file (SIGXFSZ at its default, which
# killed the process and left FILE.tmp.XXXXXX): exit 1 with one line naming
# the file and the cause, the existing file kept, no temporary file.
RC=0
(ulimit -f 1; exec "$NMLX" logits -m "$dir" --ids "$(seq -s, 1 8)" -o "$TMP/err-cases/existing.bin") \
    >"$TMP/out" 2>"$TMP/err" || RC=$?
check "logits under a 1 KiB file-size limit: exit 1 (got $RC: $(head -c 300 "$TMP/err"))" [ "$RC" = 1 ]
check "logits under a file-size limit: one line naming the file and the cause: $(head -c 300 "$TMP/err")" \
    bash -c '[ "$(wc -l <"$0")" = 1 ] && grep -q "^nmlx logits: .*existing\.bin.*File too large" "$0"' "$TMP/err"
check "logits under a file-size limit keeps the existing file" [ "$(stat -c %s existing.bin)" = $((3 * V * 4)) ]
check "logits under a file-size limit leaves no temporary file: $(ls -A .)" [ "$(ls -A .)" = existing.bin ]
cd / || exit 1
finish
