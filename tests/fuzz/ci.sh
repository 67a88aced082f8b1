#!/bin/sh
# CI run of the libFuzzer harnesses: builds them (build.sh, clang with
# ASan + UBSan), then runs each for a bounded time from a scratch copy of its
# committed corpus and regressions, with its dictionary. Any crash, sanitizer
# report, leak, timeout or out-of-memory is a failure: the input is kept in
# <out>/findings/ and the script exits non-zero after trying every harness.
# New inputs the fuzzers find are thrown away (the committed corpus stays
# small); copy a finding into regressions/<harness>/ once it is fixed.
#
# Usage: tests/fuzz/ci.sh [out folder, default build-fuzz]
# Environment: NMLX_FUZZ_SECONDS (per harness, default 20),
#              NMLX_FUZZ_HARNESSES (space-separated subset).
# Without clang or its fuzzer runtime the script says so and exits 0, so a
# machine without them still runs the rest of scripts/test.sh; .ci/run
# installs both.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/build-fuzz}
secs=${NMLX_FUZZ_SECONDS:-20}
harnesses=${NMLX_FUZZ_HARNESSES:-"safetensors config model_config aux_config tokenizer_load tokenize detokenize"}
CC=${CC:-clang}
cd "$root"

if ! command -v "$CC" >/dev/null 2>&1; then
    echo "fuzz ci: $CC not found: skipped (apt-get install clang libclang-rt-14-dev)"
    exit 0
fi
probe=$(mktemp -d)
echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; return 0; }' \
    >"$probe/p.c"
if ! "$CC" -fsanitize=fuzzer "$probe/p.c" -o "$probe/p" 2>/dev/null; then
    rm -rf "$probe"
    echo "fuzz ci: $CC cannot link -fsanitize=fuzzer: skipped (apt-get install libclang-rt-14-dev)"
    exit 0
fi
rm -rf "$probe"

nice -n 10 sh tests/fuzz/build.sh "$out" >/dev/null
mkdir -p "$out/findings"
# the slim tokenizers of the seed corpus: fast to load, every component kept
slim=tests/fuzz/corpus/tokenizer_load
export NMLX_FUZZ_TOKENIZERS="$slim/llama2.json:$slim/qwen3.json:$slim/gemma3.json:$slim/gptoss.json"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fail=0
for h in $harnesses; do
    work=$(mktemp -d)
    mkdir -p "$work/corpus" "$work/art"
    cp tests/fuzz/corpus/"$h"/* "$work/corpus/" 2>/dev/null || true
    cp tests/fuzz/regressions/"$h"/* "$work/corpus/" 2>/dev/null || true
    dict=""
    case $h in
    safetensors) dict=-dict=tests/fuzz/safetensors.dict ;;
    config | model_config | aux_config) dict=-dict=tests/fuzz/config.dict ;;
    tokenizer_load) dict="-dict=tests/fuzz/tokenizer.dict -max_len=16384" ;;
    esac
    # -timeout: one input taking 10 s is a hang; memory must stay bounded by
    # the input (issue 13): no single allocation over 256 MB from an input of
    # at most 16 KB, at most 2 GB in all
    # shellcheck disable=SC2086
    if "$out/fuzz_$h" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
        -print_final_stats=1 -artifact_prefix="$work/art/" $dict "$work/corpus" \
        >"$work/log" 2>&1; then
        echo "fuzz ci: fuzz_$h: $(grep -E 'stat::number_of_executed_units' "$work/log" |
            awk '{print $2}') runs in ${secs} s, no finding"
    else
        fail=1
        echo "FAIL fuzz ci: fuzz_$h found a crash; its log:"
        tail -n 60 "$work/log"
        for f in "$work"/art/*; do
            [ -e "$f" ] || continue
            cp "$f" "$out/findings/$h-$(basename "$f")"
            echo "  input kept: $out/findings/$h-$(basename "$f")"
        done
    fi
    rm -rf "$work"
done
exit $fail
