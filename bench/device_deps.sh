# Sourced by the device scripts (bench/device_*.sh, bench/cuda/device_*.sh):
# the GPU image lacks jansson, pcre2 and utf8proc, so their Debian packages
# travel in .deps/ (apt-get download libjansson-dev libjansson4 libpcre2-dev
# libpcre2-8-0 libutf8proc-dev libutf8proc2; carry ".deps") and are unpacked
# beside the tree, with pkg-config and the loader pointed at them.
#   . bench/device_deps.sh [REPO_ROOT]   (default: the current folder)
nmlx_deps_root=${1:-.}
if ! pkg-config --exists jansson 2>/dev/null && ls "$nmlx_deps_root"/.deps/*.deb >/dev/null 2>&1; then
  R=/tmp/nmlx-deps
  for f in "$nmlx_deps_root"/.deps/*.deb; do dpkg -x "$f" $R; done
  export PKG_CONFIG_SYSROOT_DIR=$R PKG_CONFIG_PATH=$R/usr/lib/x86_64-linux-gnu/pkgconfig:$R/usr/share/pkgconfig
  export LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
fi
unset nmlx_deps_root
