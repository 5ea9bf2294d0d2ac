#!/usr/bin/env bash
# Style gate: clang-format (no changes needed) and clang-tidy (no findings) on
# the project's own sources. Run by the test suite as the test 'style.check'.
#   tools/check.sh BUILD_DIR      (BUILD_DIR holds compile_commands.json)
#   tools/check.sh --fix BUILD_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
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
mapfile -t sources < <(printf '%s\n' "${files[@]}" | grep '\.cpp$')
if [[ ! -f "$build/compile_commands.json" ]]; then
  echo "clang-tidy: $build/compile_commands.json missing; configure the build first"
  exit 1
fi
# clang-tidy runs the project's .clang-tidy over every translation unit, two
# at a time; -quiet keeps only findings.
out=$(printf '%s\n' "${sources[@]}" | xargs -P "$(nproc)" -n 4 \
  clang-tidy -p "$build" -quiet --extra-arg=-Wno-unknown-warning-option 2>/dev/null \
  | grep -E '(warning|error):' | sort -u)
if [[ -n "$out" ]]; then
  echo "$out" | head -60
  echo "clang-tidy: $(echo "$out" | wc -l) finding(s)"
  status=1
fi
if ((status == 0)); then echo "style: clang-format and clang-tidy clean (${#files[@]} files)"; fi
exit $status
