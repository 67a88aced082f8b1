#!/usr/bin/env bash
# The CUDA build, on any machine with nvcc and cuBLAS (a GPU is optional):
#   1. the engine with -DNMLX_CUDA=ON -DNMLX_WERROR=ON into build-cuda/ (library,
#      CLI, CUDA tests and benchmarks): CUDA code that only a GPU session
#      runs still has to compile cleanly;
#   2. `ctest -L cuda` there (each test exits 77, skipped, without a GPU);
#   3. the Node addon built as `npm install` builds it with NMLX_CUDA=1, then
#      loadModel(demo, { device: "cuda" }): with a GPU its greedy text equals
#      the CPU's; without one, a clean NMLX_ERR_UNSUPPORTED naming the device
#      (the backend is in the addon, not "built without CUDA").
# Prints "N passed, N failed". Usage: bash tests/cuda/check_build.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
n_pass=0
n_fail=0
check() {
  local what="$1"; shift
  if "$@"; then n_pass=$((n_pass + 1)); else n_fail=$((n_fail + 1)); echo "FAIL: $what" >&2; fi
}
jobs="$(nproc)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

build() {
  cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DNMLX_CUDA=ON -DNMLX_WERROR=ON >"$log" 2>&1 &&
    cmake --build build-cuda -j"$jobs" >>"$log" 2>&1 || { tail -40 "$log" >&2; return 1; }
}
check "the CUDA build (build-cuda/, -Werror)" build
check "ctest -L cuda (skipped without a GPU)" ctest --test-dir build-cuda -L cuda --output-on-failure

addon() {
  (cd node && NMLX_CUDA=1 node scripts/build.mjs) >"$log" 2>&1 || { tail -20 "$log" >&2; return 1; }
  grep -q "CUDA backend on" "$log" || { echo "build.mjs did not say the CUDA backend is on" >&2; return 1; }
}
check "the Node addon with NMLX_CUDA=1" addon

load_on_cuda() {
  (cd node && node --input-type=module -e '
    import { loadModel } from "./lib/index.js";
    const opts = { maxTokens: 12, temperature: 0 };
    const cpu = await loadModel("../models/demo", { device: "cpu" });
    const want = await cpu.generate("In the beginning", opts);
    let gpu;
    try {
      gpu = await loadModel("../models/demo", { device: "cuda" });
    } catch (e) {
      if (e.code === "NMLX_ERR_UNSUPPORTED" && /cuda:0.*no CUDA GPU is usable/.test(e.message)) {
        console.log(`no GPU here: ${e.message}`);
        process.exit(0);
      }
      console.error(`unexpected error: ${e.code} ${e.message}`);
      process.exit(1);
    }
    const got = await gpu.generate("In the beginning", opts);
    if (got !== want) { console.error(`cuda ${JSON.stringify(got)} != cpu ${JSON.stringify(want)}`); process.exit(1); }
    console.log(`cuda and cpu agree: ${JSON.stringify(got)}`);
  ')
}
check "loadModel with device cuda (runs, or refuses cleanly without a GPU)" load_on_cuda
echo "$n_pass passed, $n_fail failed"
[ "$n_fail" = 0 ]
