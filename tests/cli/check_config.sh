#!/usr/bin/env bash
# sag-agent check-config on each bad example prints exactly one line naming
# FILE:LINE:COLUMN and exits 2; on the shipped example it exits 0.
set -uo pipefail
agent="$1"; src="$2"
fail=0
"$agent" check-config "$src/agent/examples/agent.yaml" >/dev/null || { echo "example refused"; fail=1; }
for f in "$src"/tests/data/config/*.yaml; do
  out=$("$agent" check-config "$f" 2>&1 >/dev/null); rc=$?
  lines=$(printf '%s\n' "$out" | wc -l)
  if [[ $rc -ne 2 || $lines -ne 1 || ! "$out" =~ ^sag-agent:\ $f:[0-9]+:[0-9]+:\ .+\ \[E1[0-9][0-9]\ Config[A-Za-z]+\]$ ]]; then
    echo "FAIL $f (rc=$rc, $lines lines): $out"; fail=1
  else
    echo "ok   $out"
  fi
done
out=$("$agent" check-config /nonexistent.yaml 2>&1); rc=$?
[[ $rc -eq 2 && "$out" == *"/nonexistent.yaml"* ]] || { echo "FAIL missing file: $out"; fail=1; }
"$agent" --version | grep -q '^sag-agent ' || { echo "FAIL --version"; fail=1; }
"$agent" --help | grep -q 'check-config' || { echo "FAIL --help"; fail=1; }
"$agent" frobnicate 2>/dev/null; [[ $? -eq 2 ]] || { echo "FAIL unknown command exit"; fail=1; }
exit $fail
