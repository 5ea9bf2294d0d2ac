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
# A unity build: each target's sources compiled in one translation unit
# (batch size 0: the whole target), so the headers they share (Boost.Asio/
# Beast, nlohmann json, GoogleTest) are compiled, and checked by clang-tidy,
# once per target. On a 2-core VM, from scratch (no ccache hits): 8 files per
# unit built in 579 s, one unit per target in about 490 s; clang-tidy 247 s
# and 239 s. The longest unit (sag_cloud's) is the same in both.
# Line tables only (-g1): what the sanitizers' reports and a backtrace need,
# for less to compile and link than -g's full debug information.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSAG_SANITIZE=ON -DSAG_WERROR=ON \
  -DCMAKE_UNITY_BUILD=ON -DCMAKE_UNITY_BUILD_BATCH_SIZE=0 \
  -DCMAKE_CXX_FLAGS_DEBUG=-g1 -DCMAKE_C_FLAGS_DEBUG=-g1 \
  -DSAG_LONG_TESTS="${SAG_LONG_TESTS:-OFF}" >/dev/null
echo "==> building ($build)"
ninja -C "$build"
echo "==> running tests"
cd "$build"
# One test more than cores: many tests wait (on a daemon, a timeout, a
# simulated reboot), and with one per core two such tests left a core idle.
# On a 2-core VM the suite took 616 s at -j2 (the tests without style.check
# left 158 of 646 core-seconds idle) and 508 s at -j3 (1 s idle; style.check,
# started first, was then the last to end). With clang-tidy 22 style.check
# takes about 224 s at -j3 and ends among the first; the suite took 380 s.
exec ctest --output-on-failure -j"$(($(nproc) + 1))" "$@"
