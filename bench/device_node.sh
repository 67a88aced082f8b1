# Sourced by the device scripts that run Node (bench/cuda/device_serve.sh,
# bench/device_serve_cpu.sh): the GPU image has no node, so the binary and the
# package's runtime dependencies travel in .device/serve (made by
# bench/cuda/device_serve_prepare.sh; carry node.xz and node_modules.tar.xz).
#   . bench/device_node.sh SERVE_DIR   (from the repo root)
nmlx_node_dir=${1:?usage: . bench/device_node.sh SERVE_DIR}
if ! command -v node >/dev/null; then
  mkdir -p /tmp/nmlx-node/bin && xz -dc "$nmlx_node_dir/node.xz" > /tmp/nmlx-node/bin/node &&
    chmod +x /tmp/nmlx-node/bin/node
  export PATH=/tmp/nmlx-node/bin:$PATH
fi
[ -d node/node_modules/@huggingface/jinja ] ||
  { mkdir -p node/node_modules && tar -xJf "$nmlx_node_dir/node_modules.tar.xz" -C node/node_modules; }
unset nmlx_node_dir
