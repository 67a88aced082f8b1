# shellcheck shell=bash
# The common start of the GPU-machine scripts (bench/cuda/device_fused.sh, device_gemv.sh,
# device_attn.sh, device_qrows.sh, device_decode_check.sh, device_validate.sh), sourced from
# the repo root with the log's name:
#   OUT=${OUT:-/tmp/nmlx-NAME}   (the caller's default results folder)
#   DEADLINE=${DEADLINE:-540}    (go's limit in seconds, where the caller uses go)
#   . bench/cuda/device_prelude.sh NAME.log
# It sets pipefail, makes $OUT, appends every later line of stdout and stderr to
# $OUT/NAME.log as it comes (tee: a cut call keeps them), prints the GPU's name and unpacks
# .deps (bench/device_deps.sh). Defines:
#   T0, el        the start time; el prints "[Ns]", the seconds since T0
#   go NEED WHAT  true while NEED more seconds fit before DEADLINE, else prints
#                 "[Ns] deadline: skipped WHAT" and fails
#   B             the build folder, build-cuda-dev
#   cuda_build TARGET...  configures $B (ninja, Release, -DNMLX_CUDA=ON) and builds the
#                 targets, log $OUT/build.log (on failure: its last 30 lines, exit 1); prints
#                 "[Ns] build ok" and exports NMLX_SOURCE_DIR
#   synth8b       writes the synthetic Llama-3.1-8B 4-bit g64 checkpoint /tmp/synth-l8b-q4
#                 in the background (pid SYN, log $OUT/synth.log), e.g. while the build runs;
#                 synth8b_wait waits for it and prints the log's last line
#   t SECS CMD... runs CMD under timeout, output in $OUT/t.log (then appended to
#                 $OUT/tests.log); prints "[Ns] rc=N SECS CMD: " and the last 3 lines that
#                 match SUM, then the first MAX lines that match BAD, as set by
#                 t_patterns SUM MAX BAD (default 'passed|FAIL|error' 8 'FAIL|mismatch')
set -o pipefail
mkdir -p "$OUT"
exec > >(tee -a "$OUT/${1:?usage: . bench/cuda/device_prelude.sh NAME.log}") 2>&1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s]"; }
go() { [ $(( $(date +%s) - T0 + $1 )) -le "${DEADLINE:-540}" ] || { echo "$(el) deadline: skipped ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name --format=csv,noheader
. bench/device_deps.sh .
B=build-cuda-dev
cuda_build() {
  cmake -B $B -G Ninja -DNMLX_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DNODE_EXECUTABLE="$(command -v node || echo /bin/true)" >"$OUT/build.log" 2>&1 &&
    cmake --build $B -j16 --target "$@" >>"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; exit 1; }
  echo "$(el) build ok"
  export NMLX_SOURCE_DIR=$PWD
}
synth8b() {
  python3 bench/cuda/make_synth_llama.py /tmp/synth-l8b-q4 8b 4 64 >"$OUT/synth.log" 2>&1 &
  SYN=$!
}
synth8b_wait() { wait "$SYN"; tail -1 "$OUT/synth.log"; }
t_patterns() { t_sum=$1 t_max=$2 t_bad=$3; }
t_patterns 'passed|FAIL|error' 8 'FAIL|mismatch'
t() { timeout "$1" "${@:2}" >"$OUT/t.log" 2>&1; echo "$(el) rc=$? $*: $(grep -E "$t_sum" "$OUT/t.log" | tail -3 | tr '\n' ' ')"; grep -m"$t_max" -E "$t_bad" "$OUT/t.log"; cat "$OUT/t.log" >>"$OUT/tests.log"; }
