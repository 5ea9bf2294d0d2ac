#!/usr/bin/env bash
# Style gate: clang-format (no changes needed) and clang-tidy (no findings) on
# the project's own sources. Run by the test suite as the test 'style.check'.
#   tools/check.sh BUILD_DIR      (BUILD_DIR holds compile_commands.json)
#   tools/check.sh --fix BUILD_DIR
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
fix=0
if [[ "${1:-}" == "--fix" ]]; then fix=1; shift; fi
build="${1:-build/test}"
mapfile -t files < <(git ls-files -co --exclude-standard -- '*.cpp' '*.h' | grep -v '^build/')
status=0
if ((fix)); then
  clang-format -i "${files[@]}"
else
  if ! clang-format --dry-run --Werror "${files[@]}" 2>/tmp/sag-format.$$; then
    head -40 /tmp/sag-format.$$
    echo "clang-format: files need formatting; run tools/check.sh --fix"
    status=1
  fi
  rm -f /tmp/sag-format.$$
fi
if [[ ! -f "$build/compile_commands.json" ]]; then
  echo "clang-tidy: $build/compile_commands.json missing; configure the build first"
  exit 1
fi
# clang-tidy runs the project's .clang-tidy over every translation unit the
# build compiles. The test build is a unity build (tools/test.sh): one unit
# holds a batch of a module's .cpp files, so the headers they share are parsed
# and matched once per batch, not once per file (.clang-tidy's header filter
# takes in the .cpp files a unit includes). The project's .cpp files that no
# unit holds (the fuzz targets, built with clang only) are checked on their
# own, with flags clang-tidy infers from their neighbours.
build_abs=$(cd "$build" && pwd -P)
root=$(pwd -P)
mapfile -t units < <(sed -nE 's/^ *"file": "(.*)",?$/\1/p' "$build/compile_commands.json" | sort -u)
mapfile -t held < <(printf '%s\n' "${units[@]}"
  printf '%s\n' "${units[@]}" | grep '/Unity/unity_[^/]*$' | xargs -r sed -nE 's/^#include "(.*)"$/\1/p')
for f in "${files[@]}"; do
  if [[ "$f" == *.cpp ]] && ! printf '%s\n' "${held[@]}" | grep -qxF "$root/$f"; then units+=("$root/$f"); fi
done
# clang-tidy 22 where tools/deps.sh could install it (under half of clang-tidy
# 14's time: it does not match inside system headers); its clang calls
# __COUNTER__ (GoogleTest's and our macros use it) a C2y extension.
tidy=$(command -v clang-tidy-22 || command -v clang-tidy)
# Findings in CMake's unity sources (nothing but #include "x.cpp", which
# bugprone-suspicious-include names) are not the project's.
out=$(printf '%s\n' "${units[@]}" | xargs -P "$(nproc)" -n 1 \
  "$tidy" -p "$build" -quiet --extra-arg=-Wno-unknown-warning-option \
  --extra-arg=-Wno-c2y-extensions 2>/dev/null \
  | grep -E '(warning|error):' | grep -vF "$build_abs/" | sort -u)
if [[ -n "$out" ]]; then
  echo "$out" | head -60
  echo "clang-tidy: $(echo "$out" | wc -l) finding(s)"
  status=1
fi
if ((status == 0)); then
  echo "style: clang-format and $("$tidy" --version | sed -n 's/.*LLVM version \([0-9.]*\).*/clang-tidy \1/p') clean (${#files[@]} files)"
fi
exit $status
