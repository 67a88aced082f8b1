#!/usr/bin/env bash
# Runs every test: the release build's suite, then the same suite under
# AddressSanitizer + UndefinedBehaviorSanitizer, then a valgrind leak check
# of load + generate + free, the CUDA build where nvcc is found
# (tests/cuda/check_build.sh), then each libFuzzer harness for a bounded time
# (tests/fuzz/ci.sh; skipped where clang's fuzzer runtime is missing).
# Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs="$(nproc)"

echo "== release build: ctest"
ctest --test-dir build --output-on-failure -j"$jobs"

echo "== ASan + UBSan build: ctest"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNMLX_WERROR=ON -DNMLX_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs"

echo "== valgrind: load + generate + free leaks nothing"
bash scripts/valgrind_check.sh build/nmlx

echo "== CUDA build: compiles with -Werror, tests skip without a GPU, the Node addon links it"
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  bash tests/cuda/check_build.sh
else
  echo "skipped: no nvcc here (install the CUDA toolkit to check the CUDA backend builds)"
fi

echo "== fuzzers: each libFuzzer harness for ${NMLX_FUZZ_SECONDS:-15} s (a finding fails the run)"
NMLX_FUZZ_SECONDS=${NMLX_FUZZ_SECONDS:-15} sh tests/fuzz/ci.sh build-fuzz
