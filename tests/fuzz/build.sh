#!/bin/sh
# Builds the libFuzzer harnesses with clang (ASan + UBSan) into $1
# (default build-fuzz/ at the repository root). Only the library parts the
# harnesses reach are compiled: common, io, tokenizer, compute/tensor.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/build-fuzz}
mkdir -p "$out/obj"
CC=${CC:-clang}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="-std=c11 -g -O1 $SAN -I$root/include -I$root/src $(pkg-config --cflags jansson libpcre2-8 libutf8proc)"
LIBS="$(pkg-config --libs jansson libpcre2-8 libutf8proc) -lpthread -lm"
objs=""
for src in "$root"/src/common.c "$root"/src/compute/tensor.c "$root"/src/io/config.c \
           "$root"/src/io/file_util.c "$root"/src/io/name_map.c "$root"/src/io/safetensors.c \
           "$root"/src/tokenizer/*.c; do
    o="$out/obj/$(basename "$src" .c).o"
    $CC $CFLAGS -fsanitize=fuzzer-no-link -c "$src" -o "$o" &
    objs="$objs $o"
    # two at a time: the machine has 2 cores
    [ "$(jobs -p | wc -l)" -ge 2 ] && wait -n 2>/dev/null || true
done
wait
for h in tokenizer_load tokenize detokenize safetensors config; do
    $CC $CFLAGS -fsanitize=fuzzer "$root/tests/fuzz/fuzz_$h.c" $objs $LIBS -o "$out/fuzz_$h"
done
# fuzz_model_config loads whole models: it needs every library source.
mkdir -p "$out/objfull"
full=""
for src in $(find "$root/src" -name '*.c' ! -path '*/cuda/*' | sort); do
    o="$out/objfull/$(echo "${src#$root/src/}" | tr / _ | sed 's/\.c$/.o/')"
    isa=""
    case "$src" in
    *_avx2.c) isa="-mavx2 -mfma -mf16c" ;;
    *_avx512.c) isa="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c -mavx2" ;;
    esac
    [ "$o" -nt "$src" ] || $CC $CFLAGS $isa -fsanitize=fuzzer-no-link -c "$src" -o "$o"
    full="$full $o"
done
$CC $CFLAGS -fsanitize=fuzzer "$root/tests/fuzz/fuzz_model_config.c" $full $LIBS \
    -o "$out/fuzz_model_config"
echo "built in $out"
