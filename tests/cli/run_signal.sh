#!/usr/bin/env bash
# sag-agent run on a simulated appliance starts, logs its configuration
# summary, writes status.json and stops cleanly (exit 0) on SIGTERM and SIGINT.
set -uo pipefail
agent="$1"; sim="$2"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$sim" init "$tmp/dev" --slot-size 1048576 >/dev/null || exit 1
fail=0
for sig in TERM INT; do
  "$sim" boot "$tmp/dev" --agent "$agent" --max-boots 1 >"$tmp/log" 2>&1 &
  simpid=$!
  pid=
  for _ in $(seq 200); do
    pid=$(cat "$tmp/dev/run/agent.pid" 2>/dev/null) && [[ -n "$pid" ]] && grep -q '"state": "idle"' "$tmp/dev/run/status.json" 2>/dev/null && break
    sleep 0.05
  done
  # sag-agent status: exit 0 while the daemon runs, 3 once it stopped.
  up=$("$agent" status --config "$tmp/dev/agent.yaml"); up_rc=$?
  kill -s "$sig" "$pid" 2>/dev/null
  wait "$simpid"; rc=$?
  down=$("$agent" status --config "$tmp/dev/agent.yaml"); down_rc=$?
  if [[ $rc -ne 0 ]] || ! grep -q "received SIG$sig, stopping" "$tmp/log" || ! grep -q 'identity: sag-' "$tmp/log" \
     || [[ $up_rc -ne 0 || "$up" != *"running (pid $pid)"* || $down_rc -ne 3 || "$down" != *"NOT RUNNING"*"stopped"* ]]; then
    echo "status while up (exit $up_rc):"; echo "$up"; echo "status after the stop (exit $down_rc):"; echo "$down"
    echo "FAIL SIG$sig rc=$rc"; cat "$tmp/log"; fail=1
  else
    echo "ok SIG$sig"
  fi
done
exit $fail
