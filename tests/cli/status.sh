#!/usr/bin/env bash
# sag-agent status, the real binary on status.json documents (schema 1,
# docs/status.md): human and JSON output for every job stage, online and
# offline, with the daemon up (a process named sag-agent) and down, with no
# file; exit codes 0/3/1; --watch following a job to its end.
set -uo pipefail
agent="$1"
tmp=$(mktemp -d)
daemon_pid=
cleanup() { [[ -n "$daemon_pid" ]] && kill "$daemon_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
later=$(date -u -d '+10 minutes' +%Y-%m-%dT%H:%M:%SZ)  # a next attempt still to come
now() { echo "$started"; }

# A stand-in daemon: /proc/PID/comm must say sag-agent.
cp /bin/sleep "$tmp/sag-agent"
"$tmp/sag-agent" 600 & daemon_pid=$!

# doc PID CHANNEL_STATE [JOB_JSON] [LAST_RESULT_JSON]: a schema-1 document.
doc() {
  local job=${3:-null} last=${4:-null} err=null next=null
  if [[ "$2" != online ]]; then err='"E500 NetConnect: connect 127.0.0.1:8444: Connection refused"'; next="\"$(now)\""; fi
  cat <<JSON
{"schema": 1, "updated_at": "$(now)",
 "agent": {"version": "0.1.0", "pid": $1, "state": "$([[ $job == null ]] && echo idle || echo running)", "started_at": "$started"},
 "identity": {"smartag_id": "sag-0ovhf732a9j1234567", "serial_number": "sag233abcd", "model": "sag-1000"},
 "channel": {"state": "$2", "endpoint": "wss://127.0.0.1:8444/device/v1", "since": "$started",
             "last_error": $err, "next_attempt_at": $next, "attempts": 3},
 "device": {"version": "1.0.0", "booted_slot": "A", "boot": {"order": "A B", "a_left": 3, "b_left": 3},
            "slots": {"A": {"version": "1.0.0", "state": "good"}, "B": {"version": "0.9.0", "state": "good"}}},
 "dpi": {"version": "20201117_1_0-0.0.1"},
 "job": $job, "last_result": $last,
 "outbox": {"pending": 2, "oldest_pending_seq": 117, "last_acked_seq": 116}}
JSON
}
job() {  # TYPE STAGE PERCENT
  local slot=''; [[ $1 == Device ]] && slot='"target_slot": "B",'
  echo "{\"id\": \"job-42\", \"type\": \"$1\", \"version\": \"1.0.1\", \"stage\": \"$2\", \"percent\": $3,
         \"bytes_done\": 9961472, \"bytes_total\": 26214400, \"from_version\": \"1.0.0\", $slot
         \"source\": \"https://127.0.0.1:8443/images/sag-1000-1.0.1.sagimg\", \"started_at\": \"$(now)\"}"
}
result() {  # OUTCOME STATE [ERROR_JSON]
  echo "{\"id\": \"job-42\", \"type\": \"Device\", \"version\": \"1.0.1\", \"outcome\": \"$1\", \"state\": \"$2\",
         \"error\": ${3:-null}, \"from_version\": \"1.0.0\", \"to_version\": \"1.0.1\", \"finished_at\": \"$(now)\"}"
}
put() { printf '%s\n' "$1" >"$tmp/run/.status.tmp" && mv "$tmp/run/.status.tmp" "$tmp/run/status.json"; }
mkdir -p "$tmp/run"
st() { "$agent" status --file "$tmp/run/status.json" "$@"; }

# No file, through the configuration's runtime_dir.
sed "s#runtime_dir: /run/sag-agent#runtime_dir: $tmp/run#" "$(dirname "$0")/../../agent/examples/agent.yaml" >"$tmp/agent.yaml"
out=$("$agent" status --config "$tmp/agent.yaml"); rc=$?
[[ $rc -eq 3 && "$out" == *"NOT RUNNING: $tmp/run/status.json does not exist"* ]] \
  && ok "no status.json: exit 3, says so" || bad "no file (rc=$rc): $out"
out=$("$agent" status --config "$tmp/agent.yaml" --json); rc=$?
[[ $rc -eq 3 && $(python3 -c 'import json,sys; print(json.load(sys.stdin)["running"])' <<<"$out") == False ]] \
  && ok "no status.json --json: running false" || bad "no file --json (rc=$rc): $out"

# Every stage of both job types, online and offline by turns, daemon up
# (unit_agent checks every stage both ways in-process, and the JSON of each).
channel=offline
for type_stages in "Device Downloading Writing Verifying Activating Rebooting HealthChecking Committing RollingBack" \
                   "Dpi Checking Staging Validating Swapping Reloading Confirming RollingBack"; do
  read -r type stages <<<"$type_stages"
  for stage in $stages; do
    [[ $channel == online ]] && channel=offline || channel=online
    put "$(doc "$daemon_pid" "$channel" "$(job "$type" "$stage" 37)")"
    out=$(st); rc=$?
    want_bar="$stage  [###########-------------------]  37%  9.5 MiB of 25.0 MiB"
    if [[ $rc -ne 0 || "$out" != *"running (pid $daemon_pid)"* || "$out" != *"$want_bar"* ||
          "$out" != *"channel     $channel since $started"* || "$out" != *"job         job-42  $type 1.0.0 -> 1.0.1"* ]]; then
      bad "$type $stage $channel (rc=$rc):"; echo "$out"
    fi
    if [[ $channel == offline && "$out" != *"last error: E500 NetConnect"* ]]; then bad "$type $stage offline: no last error"; fi
  done
  # --json: the document itself, nothing added while the daemon runs.
  json=$(st --json); rc=$?
  if [[ $rc -ne 0 ]] || ! python3 -c '
import json, sys
d = json.loads(sys.stdin.read()); f = json.load(open(sys.argv[1]))
sys.exit(0 if d == f and "running" not in d and d["job"]["stage"] == sys.argv[2] else 1)' \
      "$tmp/run/status.json" "$stage" <<<"$json"; then
    bad "$type $stage $channel --json (rc=$rc): $json"
  fi
done
((fail)) || ok "human for every Device and DPI stage, online and offline; JSON"

# The flat layout the daemon itself writes (agent.cpp RefreshStatus, plus the
# channel and outbox it posts): every stage, online and offline by turns, the
# same summary; --json maps it onto schema 1.
flat() {  # PID CHANNEL_STATE TYPE STAGE
  local err=null next=null backoff=null
  if [[ "$2" != online ]]; then
    err='"E500 NetConnect: connect 127.0.0.1:8444: Connection refused"'; next="\"$later\""; backoff=60000
  fi
  cat <<JSON
{"agent_version": "0.1.0", "smartag_id": "sag-0ovhf732a9j1234567", "serial_number": "sag233abcd",
 "model": "sag-1000", "state": "running", "pid": $1, "device_version": "1.0.0", "dpi_version": null,
 "booted_slot": "A", "boot": {"order": "A B", "a_left": 3, "b_left": 0},
 "slots": {"A": {"version": "1.0.0", "state": "good"}, "B": {"version": "1.0.1", "state": "writing"}},
 "job": {"id": "job-43", "type": "$3", "version": "1.0.1", "state": "$4", "percent": 37,
         "from_version": "1.0.0", "error": null},
 "outbox": {"pending": 2, "oldest_pending_seq": 117, "last_acked_seq": 116},
 "channel": {"state": "$2", "endpoint": "wss://127.0.0.1:8444/device/v1", "since": "$started",
             "last_error": $err, "attempts": 3, "next_attempt_at": $next, "backoff_ms": $backoff},
 "updated_at": "$(now)"}
JSON
}
section_fail=$fail
for type_stages in "Device Downloading Writing Verifying Activating Rebooting HealthChecking Committing RollingBack" \
                   "Dpi Checking Staging Validating Swapping Reloading Confirming RollingBack"; do
  read -r type stages <<<"$type_stages"
  for stage in $stages; do
    [[ $channel == online ]] && channel=offline || channel=online
    put "$(flat "$daemon_pid" "$channel" "$type" "$stage")"
    out=$(st); rc=$?
    if [[ $rc -ne 0 || "$out" != *"running (pid $daemon_pid)"* || "$out" != *"channel     $channel since $started"* ||
          "$out" != *"$stage  [###########-------------------]  37%"* || "$out" != *"job         job-43  $type 1.0.0 -> 1.0.1"* ||
          "$out" != *"outbox      2 reports waiting, oldest #117"* ]]; then
      bad "the daemon's flat document, $type $stage $channel (rc=$rc):"; echo "$out"
    fi
    if [[ $channel == offline && ( "$out" != *"last error: E500 NetConnect"* || "$out" != *", 3 attempts, next attempt in "[0-9]*"s ($later)"* ) ]]; then
      bad "flat $type $stage offline: no last error or next attempt"; echo "$out"
    fi
    if [[ "$out" != *"slot A      1.0.0        good     booted"* || "$out" != *"slot B      1.0.1        writing"* ]]; then
      bad "flat $type $stage: both slots' versions and states"; echo "$out"
    fi
  done
done
json=$(st --json); rc=$?
if [[ $rc -ne 0 ]] || ! python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
sys.exit(0 if d["schema"] == 1 and d["channel"]["state"] == sys.argv[1] and d["job"]["stage"] == "RollingBack"
         and d["identity"]["serial_number"] == "sag233abcd" and d["outbox"]["pending"] == 2
         and "device_version" not in d and d["device"]["booted_slot"] == "A"
         and d["device"]["slots"] == {"A": {"version": "1.0.0", "state": "good"},
                                      "B": {"version": "1.0.1", "state": "writing"}}
         and "slots" not in d
         and (d["channel"]["state"] == "online" or
              (d["channel"]["backoff_ms"] == 60000 and d["channel"]["next_attempt_at"] == sys.argv[2]))
         else 1)' "$channel" "$later" <<<"$json"; then
  bad "--json of the daemon's flat document is not schema 1 (rc=$rc): $json"
fi
((fail > section_fail)) || ok "the daemon's own (flat) document: every stage, online and offline; --json in schema 1"

# Idle, with the last result and its error.
put "$(doc "$daemon_pid" online null "$(result rolled_back RolledBack '{"code": 405, "name": "HealthCheckFailed", "message": "check dataplane exited 1"}')")"
out=$(st); rc=$?
[[ $rc -eq 0 && "$out" == *"job         none"* && "$out" == *"last result job-42  Device 1.0.1: rolled back at "* &&
   "$out" == *"E405 HealthCheckFailed: check dataplane exited 1"* && "$out" == *"outbox      2 reports waiting"* ]] \
  && ok "idle: no job, the last result with its error, the outbox" || { bad "idle (rc=$rc)"; echo "$out"; }

# The daemon is gone: exit 3, says so and since when the file is stale.
"$tmp/sag-agent" 0 & dead=$!; wait "$dead"  # a pid that was a sag-agent and is no more
put "$(doc "$dead" online "$(job Device Writing 50)")"
out=$(st); rc=$?
[[ $rc -eq 3 && "$out" == *"NOT RUNNING (no process $dead); last state running"* &&
   "$out" == *"status.json is stale since "*" ago); below is what the daemon last reported"* &&
   "$out" == *"journalctl -u sag-agent"* && "$out" == *"Writing  [###############---------------]  50%"* ]] \
  && ok "daemon down: exit 3, NOT RUNNING, stale since" || { bad "daemon down (rc=$rc)"; echo "$out"; }
json=$(st --json); rc=$?
[[ $rc -eq 3 && $(python3 -c 'import json,sys; print(json.load(sys.stdin)["running"])' <<<"$json") == False ]] \
  && ok "daemon down --json: running false" || bad "daemon down --json (rc=$rc): $json"

# Not JSON: exit 1 with the reason on stderr.
echo '{"schema": 1, "upd' >"$tmp/run/status.json"
err=$(st 2>&1 >/dev/null); rc=$?
[[ $rc -eq 1 && "$err" == *"is not a JSON object"* ]] && ok "corrupt file: exit 1" || bad "corrupt file (rc=$rc): $err"

# --watch follows a job: a frame per change, the end with its outcome.
# Each watcher writes to a file of its own, created empty here: the `>` of a
# background command truncates in the child, after the polls below may have
# started, so a reused file could show them the previous watcher's frames
# (and the documents would change before this watcher has read one).
watch_job() {  # OUTCOME STATE WANT_RC
  local out="$tmp/watch-$1.out"
  : >"$out"
  put "$(doc "$daemon_pid" online "$(job Device Downloading 10)")"
  st --watch --timeout 60 >"$out" 2>&1 &
  local w=$! i
  for i in $(seq 600); do grep -q ' 10%' "$out" && break; sleep 0.05; done
  put "$(doc "$daemon_pid" online "$(job Device Writing 60)")"
  for i in $(seq 600); do grep -q ' 60%' "$out" && break; sleep 0.05; done
  put "$(doc "$daemon_pid" online null "$(result "$1" "$2")")"
  wait "$w"; local rc=$?
  local frames; frames=$(grep -c '^sag-agent   ' "$out")
  if [[ $rc -ne $3 || $frames -ne 3 ]] || ! grep -q "job job-42 ended: $1" "$out" ||
     [[ $(awk '/Downloading  \[/ {printf "D"} /Writing  \[/ {printf "W"} /ended: / {printf "E"}' "$out") != DWE ]]; then
    bad "--watch to $1 (rc=$rc, $frames frames):"; cat "$out"
  else
    ok "--watch: Downloading 10%, Writing 60%, $1 (exit $rc)"
  fi
}
watch_job committed Committed 0
watch_job rolled_back RolledBack 1

# --watch when the daemon stops mid-job (a Device job's reboot): exit 3.
"$tmp/sag-agent" 600 & short=$!
put "$(doc "$short" online "$(job Device Rebooting 100)")"
: >"$tmp/watch-stop.out"
st --watch --timeout 60 >"$tmp/watch-stop.out" 2>&1 &
w=$!
for i in $(seq 600); do grep -q 'Rebooting' "$tmp/watch-stop.out" && break; sleep 0.05; done
kill "$short"; wait "$short" 2>/dev/null
# The document does not change: the watcher notices the pid within a second.
wait "$w"; rc=$?
[[ $rc -eq 3 ]] && grep -q "the agent is not running; job job-42 goes on" "$tmp/watch-stop.out" \
  && ok "--watch: the daemon stopped mid-job, exit 3" || { bad "--watch daemon stop (rc=$rc)"; cat "$tmp/watch-stop.out"; }

# --count bounds a watch that has no job to follow.
put "$(doc "$daemon_pid" online)"
out=$(st --watch --count 1 --timeout 60); rc=$?
[[ $rc -eq 0 && "$out" == *"waiting for a job"* ]] && ok "--watch --count 1 without a job" || bad "--count (rc=$rc): $out"
"$agent" status --count 2 >/dev/null 2>&1; [[ $? -eq 2 ]] || bad "--count without --watch is not a usage error"
"$agent" status --watch --timeout x >/dev/null 2>&1; [[ $? -eq 2 ]] || bad "--timeout x is not a usage error"
exit $fail
