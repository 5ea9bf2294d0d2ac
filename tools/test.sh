#!/usr/bin/env bash
# Builds the test configuration (warnings as errors, ASan+UBSan) and runs the
# whole test suite, style checks included; ends with CTest's summary.
#   tools/test.sh                 everything
#   tools/test.sh -R Sha256       only matching tests (extra args go to ctest)
#   SAG_LONG_TESTS=1 tools/test.sh   also the long campaigns
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
build=build/test
# A unity build: each module's sources compiled a few at a time in one
# translation unit, so the headers they share (Boost.Asio/Beast, nlohmann
# json, GoogleTest) are compiled, and checked by clang-tidy, once per batch.
# Line tables only (-g1): what the sanitizers' reports and a backtrace need,
# for less to compile and link than -g's full debug information.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSAG_SANITIZE=ON -DSAG_WERROR=ON \
  -DCMAKE_UNITY_BUILD=ON -DCMAKE_CXX_FLAGS_DEBUG=-g1 -DCMAKE_C_FLAGS_DEBUG=-g1 \
  -DSAG_LONG_TESTS="${SAG_LONG_TESTS:-OFF}" >/dev/null
echo "==> building ($build)"
ninja -C "$build"
echo "==> running tests"
cd "$build"
exec ctest --output-on-failure -j"$(nproc)" "$@"
