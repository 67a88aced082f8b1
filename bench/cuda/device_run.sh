#!/bin/bash
# On the GPU machine (repo root): build with -DNMLX_CUDA=ON, run the CUDA
# tests (ctest -L cuda), then `nmlx bench --device cuda` on a synthetic
# Qwen3-0.6B bf16 checkpoint (and the CPU backend on the same model for a
# sanity line). Results land in $OUT (build log, test log, bench JSON).
set -o pipefail
OUT=${OUT:-/tmp/nmlx-cuda-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# The GPU image lacks our three C libraries: carry their Debian packages in
# .deps/ (apt-get download libjansson-dev libjansson4 libpcre2-dev
# libpcre2-8-0 libutf8proc-dev libutf8proc2) and unpack them beside the repo.
if ! pkg-config --exists jansson && ls .deps/*.deb >/dev/null 2>&1; then
  R=/tmp/nmlx-deps
  for f in .deps/*.deb; do dpkg -x "$f" $R; done
  export PKG_CONFIG_SYSROOT_DIR=$R PKG_CONFIG_PATH=$R/usr/lib/x86_64-linux-gnu/pkgconfig:$R/usr/share/pkgconfig
  export LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH
fi
B=build-cuda-dev
cmake -B $B -G Ninja -DNMLX_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DNODE_EXECUTABLE=$(command -v node || echo /bin/true) >"$OUT/build.log" 2>&1 &&
  cmake --build $B -j16 --target nmlx-cli test_cuda_ops test_cuda_fixtures >>"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build ok"
(cd $B && ctest -L cuda --output-on-failure 2>&1) | tee "$OUT/tests.log" | grep -v "^$" | tail -60
NMLX_SOURCE_DIR=$PWD ./$B/tests/test_cuda_ops 2>&1 | tail -14
NMLX_SOURCE_DIR=$PWD ./$B/tests/test_cuda_fixtures 2>&1 | tee "$OUT/fixtures.log" | tail -40
M=/tmp/synth-qwen3-0.6b
python3 bench/cuda/make_synth_qwen3.py $M 2>&1 | tail -1
for p in 512; do
  ./$B/nmlx bench -m $M --device cuda -p $p -n 128 -r 3 2>&1 | tee -a "$OUT/bench.jsonl"
done
./$B/nmlx bench -m $M --device cuda -p 16 -n 512 -r 1 2>&1 | tee -a "$OUT/bench.jsonl"
./$B/nmlx bench -m $M -p 64 -n 16 -r 1 -t 16 2>&1 | tee -a "$OUT/bench.jsonl"
