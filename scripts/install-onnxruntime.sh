#!/usr/bin/env bash
# Installs onnxruntime's shared library for qatc, taken from the npm package
# onnxruntime-node (the only registry-served build of the C library).
#
#   scripts/install-onnxruntime.sh            # installs into $QATC_ORT_DIR
#
# QATC_ORT_DIR defaults to ~/.cache/qatc/onnxruntime-<version>; the qatc
# binary looks there when QATC_ORT_LIB is unset. Running it again is a no-op
# once the library is in place and loads.
set -euo pipefail

version="${ORT_VERSION:-1.30.0}"
dir="${QATC_ORT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qatc/onnxruntime-$version}"
lib="$dir/libonnxruntime.so.1"

case "$(uname -m)" in
  x86_64|amd64) arch=x64 ;;
  aarch64|arm64) arch=arm64 ;;
  *) echo "install-onnxruntime: no onnxruntime build for $(uname -m) in onnxruntime-node; set QATC_ORT_LIB to your own libonnxruntime.so" >&2; exit 1 ;;
esac
[ "$(uname -s)" = Linux ] || { echo "install-onnxruntime: only Linux is supported; set QATC_ORT_LIB to your own onnxruntime library" >&2; exit 1; }

# check_loads succeeds when the dynamic linker can load the library and it
# exports the C API entry point.
check_loads() {
  local probe
  probe=$(mktemp -d)
  cat >"$probe/probe.c" <<'C'
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
  void *h = dlopen(argv[1], RTLD_NOW);
  if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
  if (!dlsym(h, "OrtGetApiBase")) { fprintf(stderr, "no OrtGetApiBase in %s\n", argv[1]); return 1; }
  return 0;
}
C
  if ! cc -o "$probe/probe" "$probe/probe.c" -ldl 2>"$probe/err"; then
    rm -rf "$probe"; return 0 # no compiler: trust the file (qatc checks again at start)
  fi
  "$probe/probe" "$1"; local rc=$?
  rm -rf "$probe"
  return $rc
}

if [ -f "$lib" ] && check_loads "$lib"; then
  echo "onnxruntime $version already installed: $lib"
  exit 0
fi

command -v npm >/dev/null || { echo "install-onnxruntime: npm is needed to fetch onnxruntime-node@$version (apt-get install npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching onnxruntime-node@$version from the npm registry ..."
(cd "$tmp" && npm pack --silent "onnxruntime-node@$version" >/dev/null)
tar -xzf "$tmp"/onnxruntime-node-*.tgz -C "$tmp" "package/bin/napi-v6/linux/$arch/libonnxruntime.so.1"
mkdir -p "$dir"
cp "$tmp/package/bin/napi-v6/linux/$arch/libonnxruntime.so.1" "$lib.tmp"
mv "$lib.tmp" "$lib"
ln -sf libonnxruntime.so.1 "$dir/libonnxruntime.so"
check_loads "$lib" || { echo "install-onnxruntime: $lib does not load (see above)" >&2; exit 1; }
echo "onnxruntime $version installed: $lib"
