#!/usr/bin/env bash
# The main job: builds the release binaries and runs the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
build=build/release
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSAG_BUILD_TESTS=OFF >/dev/null
echo "==> building ($build)"
ninja -C "$build" | grep -v '^\[' || true
exec tools/demo/run.sh "$build"
