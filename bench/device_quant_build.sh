# Sourced by device_quant_dec16.sh and device_quant_int8.sh: the machine
# (processor, SIMD flags, compiler) into $LOG, jansson / pcre2 / utf8proc
# from .deps/ where the host lacks them (device_deps.sh), then nmlx and the
# given test targets built into $B, and bench_quant beside them. A failed
# build is written to $LOG and ends the caller.
#   HERE=repo OUT=dir LOG=file B=build-dir; . "$HERE/bench/device_quant_build.sh" TARGET...
{ lscpu | grep -E "Model name|^CPU\(s\)|Thread|Socket"; grep -o -w -E \
    "avx2|avx512f|avx512bw|avx512_vnni|avx_vnni|avx512_bf16|amx_int8|amx_bf16" /proc/cpuinfo |
    sort -u | tr '\n' ' '; echo; gcc --version | head -1; } > "$LOG"
. "$HERE/bench/device_deps.sh" "$HERE"
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S "$HERE" -B "$B" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DNODE_EXECUTABLE="$(command -v node || echo /bin/true)" > "$OUT/build.log" 2>&1 &&
  cmake --build "$B" -j "$(nproc)" --target nmlx "$@" >> "$OUT/build.log" 2>&1 ||
  { echo "build failed" >> "$LOG"; tail -30 "$OUT/build.log" >> "$LOG"; exit 1; }
gcc -std=c11 -O2 -I"$HERE/include" -I"$HERE/src" "$HERE/bench/bench_quant.c" "$B/libnmlx.a" \
  $(pkg-config --libs jansson libpcre2-8 libutf8proc) -lpthread -lm -o "$B/bench_quant" >> "$OUT/build.log" 2>&1
