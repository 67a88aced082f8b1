#!/usr/bin/env bash
# The nmlx command on malformed model folders: every command fails with
# exit 1 and one "nmlx CMD: ..." line (naming the file at fault), nothing on
# stdout, and `logits -o FILE` leaves neither FILE nor a temporary file
# behind (an existing FILE is kept byte for byte). Also odd --ids and
# prompts. Registered by tests/cli.cmake (every tests/cli/test_*.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_tools || { finish; exit 1; }
fx="$FIXTURES/qwen3"
[ -f "$fx/config.json" ] || { fail "fixture $fx missing"; finish; exit 1; }

# mk NAME: a model folder of symlinks to the fixture's files, in $TMP/NAME;
# the caller then replaces one file.
mk() {
    local d="$TMP/$1"
    rm -rf "$d"
    mkdir -p "$d"
    for f in "$fx"/*; do ln -s "$(readlink -f "$f")" "$d/$(basename "$f")"; done
    M="$d"
}
# replace FILE: drops the symlink so the caller writes a fresh file.
replace() { rm -f "$M/$1"; }

# logits_fails DESC: logits -o into an empty folder must fail and leave it
# empty; into an existing file must fail and keep it.
logits_fails() {
    local desc="$1" out="$TMP/out-$RANDOM"
    mkdir -p "$out"
    expect_fail 1 logits -m "$M" --ids 1,2,3 -o "$out/logits.bin"
    check "$desc: logits leaves no file" [ -z "$(ls -A "$out")" ]
    printf 'keep me' >"$out/logits.bin"
    expect_fail 1 logits -m "$M" --ids 1,2,3 -o "$out/logits.bin"
    check "$desc: logits keeps an existing file" [ "$(cat "$out/logits.bin")" = "keep me" ]
    check "$desc: logits leaves no temporary file" [ "$(ls -A "$out")" = logits.bin ]
    rm -rf "$out"
    [ "${2:-}" = quick ] && return
    expect_fail 1 generate -m "$M" --ids 1,2,3 -n 2
    expect_fail 1 bench -m "$M" -p 4 -n 2
}

size=$(stat -L -c %s "$fx/model.safetensors")
hlen=$(od -An -tu8 -N8 "$fx/model.safetensors" | tr -d ' ')

# model.safetensors: truncated in the header, at the data start, in the data
for cut in 0 4 8 $((hlen / 2)) $((8 + hlen)) $((size / 2)) $((size - 1)); do
    mk "st-$cut"; replace model.safetensors
    head -c "$cut" "$fx/model.safetensors" >"$M/model.safetensors"
    logits_fails "safetensors truncated at $cut"
    check "truncated at $cut: the message names model.safetensors" grep -q "model.safetensors" "$TMP/err"
done
# a header length that lies
mk st-hlen; replace model.safetensors
{ printf '\377\377\377\377\377\377\377\177'; tail -c +9 "$fx/model.safetensors"; } >"$M/model.safetensors"
logits_fails "absurd header length"
# not a safetensors file at all / empty / a folder
mk st-text; replace model.safetensors; echo "hello" >"$M/model.safetensors"; logits_fails "text as safetensors"
mk st-empty; replace model.safetensors; : >"$M/model.safetensors"; logits_fails "empty safetensors"
mk st-dir; replace model.safetensors; mkdir "$M/model.safetensors"; logits_fails "safetensors is a folder"
mk st-fifo; replace model.safetensors; mkfifo "$M/model.safetensors"; logits_fails "safetensors is a FIFO"

# config.json: truncated, empty, not JSON, nested, wrong types, missing
cfgsize=$(stat -L -c %s "$fx/config.json")
for cut in 0 1 $((cfgsize / 3)) $((cfgsize - 3)); do
    mk "cfg-$cut"; replace config.json
    head -c "$cut" "$fx/config.json" >"$M/config.json"
    logits_fails "config.json truncated at $cut"
    check "config.json truncated at $cut: the message names config.json" grep -q "config.json" "$TMP/err"
done
mk cfg-nest; replace config.json
node -e 'process.stdout.write("[".repeat(100000) + "]".repeat(100000))' >"$M/config.json"
logits_fails "config.json nested 100k deep"
mk cfg-nan; replace config.json
sed 's/"rope_theta": *[0-9.e+]*/"rope_theta": NaN/' "$fx/config.json" >"$M/config.json"
logits_fails "config.json with NaN"
check "NaN: the message names config.json and the field ($(cat "$TMP/err"))" grep -q "config.json.*'rope_theta'" "$TMP/err"
for field in hidden_size num_hidden_layers num_attention_heads vocab_size head_dim; do
    for v in '"x"' '-1' '0' '1e400' '[]' '2147483648'; do
        mk "cfg-$field"; replace config.json
        node -e 'const fs = require("fs"); const j = JSON.parse(fs.readFileSync(process.argv[1]));
                 const t = j.text_config || j; t[process.argv[2]] = "@@";
                 fs.writeFileSync(process.argv[3], JSON.stringify(j).replace("\"@@\"", process.argv[4]));' \
            "$fx/config.json" "$field" "$M/config.json" "$v"
        logits_fails "config.json $field = $v" quick
    done
done
mk cfg-missing; replace config.json; logits_fails "no config.json"
mk cfg-loop; replace config.json; ln -s config.json "$M/config.json"; logits_fails "config.json symlink loop"
mk cfg-dir; replace config.json; mkdir "$M/config.json"; logits_fails "config.json is a folder"

# generation_config.json that is malformed
mk gen; replace generation_config.json; printf '{"eos_token_id": "x"' >"$M/generation_config.json"
logits_fails "truncated generation_config.json"
# tokenizer.json that is malformed: the commands that read text need it
# (logits/generate/bench take ids and do not load it)
for t in '{"model": {"type": "BPE", "vocab": {"a": -nan}, "merges": []}}' \
         '{"model": {"type": "BPE", "vocab": {"a": 01}, "merges": []}}' \
         '{"added_tokens": [{"id": -1, "content": "x", "special": true}], "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}' \
         '' '{' '[]'; do
    mk tok; printf '%s' "$t" >"$M/tokenizer.json"
    expect_fail 1 run -m "$M" -p "hello" -n 2
    check "bad tokenizer.json '$t': the message names tokenizer.json" grep -q "tokenizer.json" "$TMP/err"
    printf 'hello\n' >"$TMP/stdin"
    RC=0; "$NMLX" tokenize -m "$M" <"$TMP/stdin" >"$TMP/out" 2>"$TMP/err" || RC=$?
    check "tokenize with bad tokenizer.json '$t' exits 1 (got $RC)" [ "$RC" = 1 ]
    check "tokenize with bad tokenizer.json: nothing on stdout" [ ! -s "$TMP/out" ]
done
mk tok2; node -e 'process.stdout.write("{\"x\":" + "[".repeat(100000))' >"$M/tokenizer.json"
expect_fail 1 run -m "$M" -p "hello" -n 2
mk tok3; rm -f "$M/tokenizer.json"; mkfifo "$M/tokenizer.json"
expect_fail 1 run -m "$M" -p "hello" -n 2

# out-of-domain values, typed right: every field class (sizes zero, negative
# or huge; numbers out of range; unknown enum values; fields that disagree
# with each other or with the tensors; quantization and generation config).
# Each fails with exit 1 and one line naming the file and the field.
# set_json SRC DST KEY VALUE: DST = SRC with KEY (in text_config if any;
# "quantization*" at the top; "gen:" prefix = top level) set to the JSON VALUE.
set_json() {
    node -e 'const fs = require("fs"); const j = JSON.parse(fs.readFileSync(process.argv[1]));
             let k = process.argv[3]; let t = j.text_config || j;
             if (k.startsWith("quantization") || k.startsWith("gen:")) { t = j; k = k.replace("gen:", ""); }
             if (k === "rope_parameters") { delete t.rope_scaling; }
             if (k === "quantization_config") { delete j.quantization; }
             t[k] = JSON.parse(process.argv[4]);
             fs.writeFileSync(process.argv[2], JSON.stringify(j));' "$@"
}
# mkfx FIXTURE NAME: like mk, from another fixture.
mkfx() { local keep="$fx"; fx="$FIXTURES/$1"; mk "$2"; fx="$keep"; }
while IFS='|' read -r fixture file key value needle; do
    [ -z "$fixture" ] && continue
    mkfx "$fixture" "dom"; replace "$file"
    set_json "$FIXTURES/$fixture/$file" "$M/$file" "$key" "$value"
    expect_fail 1 logits -m "$M" --ids 1,2,3 -o "$TMP/dom.bin"
    check "$fixture $file $key = $value: the message names $file and '$needle' ($(cat "$TMP/err"))" \
        grep -q "$file.*$needle" "$TMP/err"
done <<'CASES'
qwen3|config.json|hidden_size|0|hidden_size
qwen3|config.json|num_hidden_layers|-2|num_hidden_layers
qwen3|config.json|vocab_size|1e12|vocab_size
qwen3|config.json|num_key_value_heads|3|num_key_value_heads
qwen3|config.json|head_dim|7|head_dim
qwen3|config.json|max_position_embeddings|0|max_position_embeddings
qwen3|config.json|rms_norm_eps|-1|rms_norm_eps
qwen3|config.json|hidden_act|"swiglu"|hidden_act
qwen3|config.json|eos_token_id|[255, -1]|eos_token_id
qwen3|config.json|rope_parameters|{"rope_type":"nonsense","rope_theta":10000}|rope_parameters.rope_type
qwen3|config.json|rope_parameters|{"rope_type":"linear","factor":-2,"rope_theta":10000}|rope_parameters.factor
qwen3|config.json|rope_parameters|{"rope_type":"default","rope_theta":0}|rope_parameters.rope_theta
phi3_longrope|config.json|partial_rotary_factor|0|partial_rotary_factor
gemma3_text|config.json|layer_types|["sliding_attention","bogus","full_attention","sliding_attention"]|layer_types
gemma3_text|config.json|final_logit_softcapping|-1|final_logit_softcapping
qwen3_moe|config.json|num_experts_per_tok|9|num_experts_per_tok
gemma3n|config.json|activation_sparsity_pattern|[0.95,2,0,0]|activation_sparsity_pattern
quant_llama_q4g64_f16|config.json|quantization|{"bits":0,"group_size":64}|quantization.bits
quant_llama_q4g64_f16|config.json|quantization|{"bits":4,"group_size":64,"mode":"nonsense"}|quantization.mode
quant_llama_q4g64_f16|config.json|quantization_config|{"quant_method":"nonsense"}|quant_method
qwen3|generation_config.json|gen:temperature|-1|temperature
qwen3|generation_config.json|gen:top_p|1.5|top_p
qwen3|generation_config.json|gen:top_k|-3|top_k
CASES
# a config that disagrees with the tensors names the tensor
mk dom-shape; replace config.json; set_json "$fx/config.json" "$M/config.json" vocab_size 300
expect_fail 1 logits -m "$M" --ids 1,2,3 -o "$TMP/dom.bin"
check "vocab_size 300 vs the tensors: names embed_tokens" grep -q "embed_tokens.*shape" "$TMP/err"
# a context too large for the machine (one of 100 kB, through the test
# hook): the numbers, no crash
export NMLX_TEST_MEMORY_BYTES=100000
expect_fail 1 logits -m "$fx" --ids 1,2,3 -o "$TMP/dom.bin"
unset NMLX_TEST_MEMORY_BYTES
check "context too large: gives bytes needed and available ($(cat "$TMP/err"))" \
    grep -q "tokens needs [0-9]* bytes.*100000 bytes" "$TMP/err"

# tokenizer memory is bounded by the file: the demo tokenizer.json (266 KB)
# plus one added token with id 100,000,000 is refused, and the refusal costs
# no more memory than loading the plain file
demo="$SOURCE_DIR/models/demo"
mk tokbig; cp "$demo/tokenizer.json" "$M/tokenizer.json"
printf '"hello"\n' >"$TMP/stdin"
peak() { # PEAK = peak KiB of `nmlx tokenize -m $1`; exit status in RC
    RC=0
    /usr/bin/time -f %M -o "$TMP/peak" "$NMLX" tokenize -m "$1" <"$TMP/stdin" >"$TMP/out" 2>"$TMP/err" || RC=$?
    PEAK=$(tail -1 "$TMP/peak")
}
if [ -x /usr/bin/time ]; then
    peak "$M"; base=$PEAK; check "plain demo tokenizer tokenizes (exit $RC)" [ "$RC" = 0 ]
fi
node -e 'const fs = require("fs"); const j = JSON.parse(fs.readFileSync(process.argv[1]));
         j.added_tokens.push({id: 100000000, content: "<|huge|>", single_word: false, lstrip: false,
                              rstrip: false, normalized: false, special: true});
         fs.writeFileSync(process.argv[2], JSON.stringify(j));' "$demo/tokenizer.json" "$M/tokenizer.json"
RC=0; "$NMLX" tokenize -m "$M" <"$TMP/stdin" >"$TMP/out" 2>"$TMP/err" || RC=$?
check "tokenizer with id 100,000,000 exits 1 (got $RC)" [ "$RC" = 1 ]
check "id 100,000,000: one line naming tokenizer.json and the id ($(cat "$TMP/err"))" \
    grep -q "tokenizer.json.*token id 100000000" "$TMP/err"
if [ -x /usr/bin/time ]; then
    peak "$M"; big=$PEAK
    check "id 100,000,000: peak ${big} KiB vs ${base} KiB for the plain file (limit +32 MiB)" \
        [ "$((big - base))" -lt 32768 ]
fi

# convert: a failure leaves neither the output folder nor a temporary one
cv="$TMP/convert"; mkdir -p "$cv"
for cut in 100 $((size / 2)); do
    mk "cv-$cut"; replace model.safetensors
    head -c "$cut" "$fx/model.safetensors" >"$M/model.safetensors"
    expect_fail 1 convert -m "$M" -o "$cv/out"
    check "convert of a truncated checkpoint leaves nothing in $cv" [ -z "$(ls -A "$cv")" ]
done
mk cv-cfg; replace config.json; printf '{"model_type": "qwen3", ' >"$M/config.json"
expect_fail 1 convert -m "$M" -o "$cv/out"
check "convert with a truncated config.json leaves nothing" [ -z "$(ls -A "$cv")" ]
mkdir "$cv/out"; printf 'x' >"$cv/out/keep"
expect_fail 1 convert -m "$fx" -o "$cv/out"
check "convert onto an existing folder keeps it" [ "$(cat "$cv/out/keep")" = x ] && [ "$(ls -A "$cv")" = out ]
rm -rf "$cv"

# the model folder itself
M="$TMP/nonexistent"; logits_fails "missing model folder"
M="$fx/config.json"; logits_fails "model folder is a file"
mkdir -p "$TMP/emptydir"; M="$TMP/emptydir"; logits_fails "empty model folder"

# odd --ids on a good model: usage errors, no file
out="$TMP/ids"; mkdir -p "$out"
for ids in "" "," "1,,2" "-1" "1 2" "99999999999999999999" "0x10" "1,2," "a"; do
    expect_fail 2 logits -m "$fx" --ids "$ids" -o "$out/l.bin"
done
check "bad --ids leave no file" [ -z "$(ls -A "$out")" ]
# an output path that cannot be written
expect_fail 1 logits -m "$fx" --ids 1,2 -o /proc/nmlx-cannot-write/l.bin
expect_fail 2 logits -m "$fx" --ids 1,2 -o ""

# run/tokenize need a tokenizer: the fixture has none
expect_fail 1 run -m "$fx" -p "hello" -n 2
mk tok3; printf '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}' >"$M/tokenizer.json"
run run -m "$M" -p "$(printf 'a\377\376a')" -n 2 --raw
check "run with invalid UTF-8 in the prompt does not crash (exit $RC)" [ "$RC" = 0 ] || [ "$RC" = 1 ]
run run -m "$M" -p "" -n 2 --raw
check "run with an empty prompt does not crash (exit $RC)" [ "$RC" -le 2 ]
if [ "$RC" != 0 ]; then
    check "empty prompt failure has one message line" grep -q "^nmlx run: ." "$TMP/err"
fi
finish
