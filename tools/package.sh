#!/usr/bin/env bash
# Builds release binaries with Debian's hardening flags and the two Debian
# packages, sag-agent and sag-cloud, then runs lintian on them.
#   tools/package.sh [OUTDIR]      default build/package/deb
# docs/packaging.md: what goes where, the maintainer scripts, the lintian tags.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
build=build/package
out=$(realpath -m "${1:-$build/deb}")
# Debian's own flags (what debhelper would pass): -O2, stack protector,
# _FORTIFY_SOURCE, format checks, full RELRO and immediate binding.
eval "$(DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --export=sh)"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
  -DSAG_BUILD_TESTS=OFF -DCMAKE_C_FLAGS="$CFLAGS $CPPFLAGS" -DCMAKE_CXX_FLAGS="$CXXFLAGS $CPPFLAGS" \
  -DCMAKE_EXE_LINKER_FLAGS="$LDFLAGS" >/dev/null
echo "==> building ($build)"
ninja -C "$build"
echo "==> packaging into $out"
mkdir -p "$out"
(cd "$build" && cpack -G DEB -B "$out" >/dev/null)
rm -rf "$out/_CPack_Packages"
ls -l "$out"/*.deb
echo "==> lintian"
# Errors and warnings fail; info and pedantic tags are listed (each explained
# in docs/packaging.md), as are the packages' overrides.
rc=0
lintian --fail-on error,warning --info --pedantic --display-info --show-overrides "$out"/*.deb \
  2> >(grep -v '^running with root privileges' >&2) || rc=$?
if ((rc != 0)); then
  echo "==> lintian found errors or warnings" >&2
  exit 1
fi
echo "==> lintian: no errors or warnings"
