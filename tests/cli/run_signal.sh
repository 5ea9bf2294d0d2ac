#!/usr/bin/env bash
# sag-agent run starts, logs its configuration summary and stops cleanly
# (exit 0) on SIGTERM and on SIGINT.
set -uo pipefail
agent="$1"; src="$2"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
for sig in TERM INT; do
  "$agent" run --config "$src/agent/examples/agent.yaml" 2>"$tmp/log" &
  pid=$!
  for _ in $(seq 100); do grep -q 'download:' "$tmp/log" && break; sleep 0.05; done
  kill -s "$sig" "$pid"; wait "$pid"; rc=$?
  if [[ $rc -ne 0 ]] || ! grep -q "received SIG$sig, stopping" "$tmp/log" || ! grep -q 'identity: sag-' "$tmp/log"; then
    echo "FAIL SIG$sig rc=$rc"; cat "$tmp/log"; fail=1
  else
    echo "ok SIG$sig"
  fi
done
exit $fail
