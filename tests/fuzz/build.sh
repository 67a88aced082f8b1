#!/bin/sh
# Builds the libFuzzer harnesses with clang (ASan + UBSan) into $1 (default
# build-fuzz/ at the repository root): the library through CMake (so every
# source and its per-file ISA flags come from CMakeLists.txt, never from a
# list here that can go stale) with -fsanitize=fuzzer-no-link, then each
# harness linked against it with -fsanitize=fuzzer.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/build-fuzz}
CC=${CC:-clang}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
mkdir -p "$out"
# build type "Fuzz" has no flags of its own: -O1 (quick to compile, fast
# enough to fuzz), asserts kept, line tables for the reports
cmake -S "$root" -B "$out/lib" -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=Fuzz \
    -DNMLX_TESTS=OFF -DNMLX_SANITIZE=ON \
    -DCMAKE_C_FLAGS="-O1 -gline-tables-only -fsanitize=fuzzer-no-link" >/dev/null
cmake --build "$out/lib" --target nmlx -j"$(nproc)" >/dev/null
CFLAGS="-std=c11 -g -O1 $SAN -I$root/include -I$root/src"
LIBS="$(pkg-config --libs jansson libpcre2-8 libutf8proc) -lpthread -lm"
for h in tokenizer_load tokenize detokenize safetensors config model_config aux_config; do
    $CC $CFLAGS -fsanitize=fuzzer "$root/tests/fuzz/fuzz_$h.c" "$out/lib/libnmlx.a" $LIBS \
        -o "$out/fuzz_$h"
done
echo "built in $out"
