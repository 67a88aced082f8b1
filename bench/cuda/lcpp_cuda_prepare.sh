#!/usr/bin/env bash
# Builds llama.cpp with CUDA (sm_90 only) HERE, from the release node-llama-cpp
# 3.22.1 bundles, and packs what the GPU machine needs into .device/lcpp-cuda/
# (git-ignored; carry `.device/lcpp-cuda`), so a device call spends no time
# building the peer (~9 minutes on its 16 cores; here ~1 hour on 2, but it
# costs no device time):
#   bin.tar.xz   llama-bench, llama-quantize, llama-server and the ggml /
#                llama shared libraries (RPATH $ORIGIN), stripped
#   aux.tar.xz   gguf-py and the Llama 3.1 tokenizer (for the GGUF writers)
#   make_gguf.py ../shared/bench/gpu-peer's random-weight F16 GGUF writer
# Sources: .device/serve/lcpp-server-src.tar.xz (bench/cuda/device_serve_prepare.sh)
# plus tools/llama-bench from .device/cpu-peer/lcpp-src.tar.xz
# (bench/device_cpu_peer_prepare.sh). The binaries link libcublas / libcudart
# of CUDA 13 dynamically, as the GPU image provides them; the CPU code is
# built for AVX2 (GGML_NATIVE=OFF), which every GPU host has. sm_90 machine
# code only (90-real): with the PTX as well (arch 90, session 14's build)
# bin.tar.xz was 41 MB, too much beside the working tree (27 MB) for one
# call's 64 MiB, so that call moved tests/fixtures and models/demo aside.
#
#   bash bench/cuda/lcpp_cuda_prepare.sh [WORK_DIR=/work/lcpp-local] [JOBS=2]
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
W="${1:-/work/lcpp-local}"
JOBS="${2:-2}"
S="$here/.device/serve/lcpp-server-src.tar.xz" C="$here/.device/cpu-peer/lcpp-src.tar.xz"
for f in "$S" "$C"; do [ -f "$f" ] || { echo "missing $f" >&2; exit 1; }; done
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
if [ ! -x "$W/build/bin/llama-server" ] || [ ! -x "$W/build/bin/llama-bench" ]; then
  rm -rf "$W/src" && mkdir -p "$W/src" "$W/stub"
  # no driver here: the executables link against libggml-cuda, which needs
  # libcuda.so.1; the toolkit's stub stands in for it at link time only
  stub=$(dirname "$(command -v nvcc)")/../lib64/stubs/libcuda.so
  [ -f "$stub" ] || stub=$(find / -path '*stubs/libcuda.so' 2>/dev/null | head -1)
  ln -sf "$stub" "$W/stub/libcuda.so.1"
  tar -xJf "$S" -C "$W/src"
  tar -xJf "$C" -C "$W/src" llama.cpp/tools/llama-bench
  grep -q llama-bench "$W/src/llama.cpp/tools/CMakeLists.txt" ||
    echo 'add_subdirectory(llama-bench)' >> "$W/src/llama.cpp/tools/CMakeLists.txt"
  cmake -S "$W/src/llama.cpp" -B "$W/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_APP=OFF \
    -DGGML_CUDA_NCCL=OFF -DLLAMA_BUILD_COMMIT=de3ff81 -DLLAMA_BUILD_NUMBER=0 \
    -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_RPATH='$ORIGIN' \
    -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$W/stub" -DCMAKE_SHARED_LINKER_FLAGS="-Wl,-rpath-link,$W/stub" \
    > "$W/cmake.log"
  nice -n 19 ninja -C "$W/build" -j"$JOBS" llama-bench llama-quantize llama-server > "$W/build.log"
fi
out="$here/.device/lcpp-cuda"
rm -rf "$out" && mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
cp "$W"/build/bin/llama-bench "$W"/build/bin/llama-quantize "$W"/build/bin/llama-server "$tmp/bin/"
cp -P "$W"/build/bin/lib*.so* "$tmp/bin/"
strip --strip-unneeded "$tmp"/bin/* 2>/dev/null || true
tar -cJf "$out/bin.tar.xz" -C "$tmp" bin
tar -xJf "$S" -C "$tmp" llama.cpp/gguf-py llama3_1
tar -cJf "$out/aux.tar.xz" -C "$tmp" llama.cpp/gguf-py llama3_1
cp "$here/.device/serve/make_gguf.py" "$out/"
du -sh "$out"/*
