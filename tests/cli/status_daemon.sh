#!/usr/bin/env bash
# `sag-agent status` on what the real daemon writes (a simulated appliance,
# sag-cloud on loopback): offline before the cloud runs (the channel's state,
# since when, its last error), online once it does, a Device job followed
# with --watch (the stage and its progress bar, until the daemon stops for
# the reboot), the job's result after it, and the daemon down (exit 3, since
# when the file is stale). Human and --json (schema 1) at each step.
# Usage: status_daemon.sh SAG_CLOUD SAG_AGENT SAG_SIM SAG_IMAGE
set -uo pipefail
cloud="$1"; agent="$2"; sim="$3"; image="$4"
tmp=$(mktemp -d); lab="$tmp/lab"; dev="$tmp/dev"; cloudpid=; simpid=
stop_all() {
  [[ -n "$simpid" ]] && { kill -TERM "$(cat "$dev/run/agent.pid" 2>/dev/null)" 2>/dev/null; sleep 0.5; kill -KILL "$simpid" 2>/dev/null; }
  [[ -n "$cloudpid" ]] && { kill -TERM "$cloudpid"; wait "$cloudpid"; } 2>/dev/null
}
trap 'stop_all; [[ -n "${SAG_KEEP:-}" ]] && echo "kept $tmp" || rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }
die() { echo "FAIL $*"; echo "--- device log"; tail -30 "$tmp/dev.log"; exit 1; }
serial=sag000st00001; id=sag-st00000000000001

# shellcheck source=tests/cli/e2e_lib.sh
source "$(dirname "$0")/e2e_lib.sh"
lab_init
for v in 1.0.0 1.0.1; do head -c 600000 /dev/urandom >"$tmp/rootfs-$v.img"; sign Device "$v" "$tmp/rootfs-$v.img"; done
gw="wss://$(sed -n '/^gateway:/,/^[a-z]/s/^  listen: //p' "$lab/cloud.yaml")/device/v1"
"$sim" init "$dev" --slot-size $((2 << 20)) --slot-a "$tmp/rootfs-1.0.0.img" --version 1.0.0 \
  --serial "$serial" --smartag-id "$id" --endpoint "$gw" --root-ca "$lab/pki/root-ca.pem" >/dev/null || die "sag-sim init"
cp "$lab/pki/device-$serial-chain.pem" "$dev/pki/device.pem"
cp "$lab/pki/device-$serial.key" "$dev/pki/device.key"
sed -i 's/level: debug/level: info/; s/heartbeat_s: 5/heartbeat_s: 2/; s/max_backoff_s: 10/max_backoff_s: 1/' "$dev/agent.yaml"
st() { "$agent" status --file "$dev/run/status.json" "$@"; }
# jq-less: a Python expression on the --json document `d` holds.
json_has() { st --json | python3 -c "import json, sys; d = json.load(sys.stdin); sys.exit(0 if ($1) else 1)" 2>/dev/null; }
wait_json() { for _ in $(seq $(($2 * 10))); do json_has "$1" && return 0; sleep 0.1; done; return 1; }
schema1='d["schema"] == 1 and all(k in d for k in ("agent", "identity", "channel", "device", "dpi", "job", "outbox"))'

"$sim" boot "$dev" --agent "$agent" --max-boots 10 >>"$tmp/dev.log" 2>&1 &
simpid=$!

# 1. Offline: no cloud yet.
# The channel is "connecting" until its first attempt fails, then "offline"
# with the error (once the daemon posts its retries).
wait_json 'd["channel"]["state"] in ("connecting", "offline") and d["agent"]["state"] == "idle"' 60 \
  || die "the daemon never reported its channel down: $(st --json)"
out=$(st); rc=$?
state=$(sed -nE 's/^channel     ([a-z]+) since .*/\1/p' <<<"$out")
[[ $rc -eq 0 && "$out" == *"channel     $state since "*" ago)"* && "$out" == *"$gw"* &&
   ( $state == connecting || "$out" == *"last error: E5"* ) &&
   "$out" == *"appliance   $id  serial $serial"* && "$out" == *"Device OS   1.0.0"* &&
   "$out" == *"slot A      1.0.0        good     booted"* && "$out" == *"slot B      "* ]] \
  && ok "offline: running, channel $state since, identity, Device OS, both slots" || { bad "offline (rc=$rc):"; echo "$out"; }
json_has "$schema1 and d['identity']['serial_number'] == '$serial' and d['device']['booted_slot'] == 'A' and d['device']['slots']['A'] == {'version': '1.0.0', 'state': 'good'} and d['device']['slots']['B']['state'] in ('good', 'bad')" && ok "offline --json: schema 1, both slots" \
  || bad "offline --json: $(st --json)"
# Offline with a reconnect scheduled: when, and the backoff drawn (max_backoff_s: 1).
if wait_json 'd["channel"]["state"] == "offline" and d["channel"]["next_attempt_at"] and 0 <= d["channel"]["backoff_ms"] <= 1000 and d["channel"]["last_error"] and d["channel"]["attempts"] >= 1' 30; then
  ok "offline --json: next_attempt_at and backoff_ms"
else
  bad "offline --json without the next attempt: $(st --json)"
fi
out=$(st)
grep -qE '^channel     offline since .*, [0-9]+ attempts?, (next attempt in [0-9]+s \(|retrying since )' <<<"$out" &&
  grep -q '^            last error: E' <<<"$out" && ok "offline: the next attempt and the last error" \
  || { bad "offline without the next attempt:"; echo "$out"; }

# 2. Online once the cloud serves.
"$cloud" serve --config "$lab/cloud.yaml" >"$tmp/cloud.log" 2>&1 &
cloudpid=$!
wait_json 'd["channel"]["state"] == "online"' 60 || die "the channel never came online: $(st --json)"
out=$(st); rc=$?
[[ $rc -eq 0 && "$out" == *"channel     online since "* && "$out" == *"$gw"* && "$out" != *"last error"* ]] \
  && ok "online: channel online since" || { bad "online (rc=$rc):"; echo "$out"; }
json_has "$schema1 and d['channel']['endpoint'] == '$gw' and d['channel']['next_attempt_at'] is None and d['channel']['backoff_ms'] is None and d['channel']['last_error'] is None" \
  && ok "online --json: schema 1, no next attempt" || bad "online --json: $(st --json)"
[[ "$out" != *"next attempt"* && "$out" != *"retrying"* ]] && ok "online: no next attempt" || { bad "online shows an attempt:"; echo "$out"; }

# 3. A Device job through the API, followed live until the daemon stops for
# its reboot (exit 3): frames with the job, its stage and its progress bar.
# shellcheck disable=SC1091
source "$lab/credentials.env"
: >"$tmp/watch.out"
st --watch --timeout 120 >"$tmp/watch.out" 2>&1 &
watcher=$!
out=$("$cloud" call UpdateSmartAccessGatewayVersion RegionId=cn-shanghai SmartAGId="$id" VersionCode=1.0.1); rc=$?
[[ $rc -eq 0 ]] || die "UpdateSmartAccessGatewayVersion: rc=$rc $out"
wait "$watcher"; rc=$?
job=$(sed -nE 's/^job         (upg-[^ ]+)  Device 1\.0\.0 -> 1\.0\.1.*/\1/p' "$tmp/watch.out" | head -1)
stages=$(sed -nE 's/^            ([A-Za-z]+)  \[[#-]{30}\] +[0-9]+%.*/\1/p' "$tmp/watch.out" | uniq | tr '\n' ' ')
if [[ -n "$job" && -n "$stages" ]] && { [[ $rc -eq 3 ]] && grep -q "goes on when it runs again" "$tmp/watch.out" || [[ $rc -eq 0 ]]; }; then
  ok "--watch followed $job: $stages(exit $rc)"
else
  bad "--watch (rc=$rc, job '$job', stages '$stages'):"; cat "$tmp/watch.out"
fi

# 4. After the reboot: committed, the last result says so.
wait_json "d['device']['version'] == '1.0.1' and (d.get('last_result') or {}).get('outcome') == 'committed' and d['job'] is None and d['channel']['state'] == 'online'" 120 \
  || die "1.0.1 never committed: $(st --json)"
out=$(st); rc=$?
[[ $rc -eq 0 && "$out" == *"Device OS   1.0.1 (booted from slot B)"* && "$out" == *"job         none"* &&
   "$out" == *"last result $job  Device 1.0.1: committed"* &&
   "$out" == *"slot A      1.0.0        good"* && "$out" == *"slot B      1.0.1        good     booted"* ]] \
  && ok "after the reboot: 1.0.1 from slot B, both slots, the last result committed" || { bad "after the job (rc=$rc):"; echo "$out"; }
json_has "d['device']['booted_slot'] == 'B' and d['device']['slots'] == {'A': {'version': '1.0.0', 'state': 'good'}, 'B': {'version': '1.0.1', 'state': 'good'}}" \
  && ok "after the reboot --json: both slots' versions and states" || bad "after the reboot --json: $(st --json)"

# The job in the logs (what journalctl -u sag-agent shows): every daemon line
# carries its syslog priority, each stage change and health check names the
# job, and no secret or signed query string is there.
section_fail=$fail
agent_lines=$(grep -v '^\[sim\]' "$tmp/dev.log")
grep -vE '^<[0-7]>' <<<"$agent_lines" | grep . && bad "daemon log lines without a <N> priority (above)"
for change in "Pending -> Writing" "Rebooting -> HealthChecking" "Committing -> Committed"; do
  grep -qF "<6>job $job: $change" <<<"$agent_lines" || bad "the log lacks 'job $job: $change'"
done
grep -F "health check '" <<<"$agent_lines" | grep -vF "job $job: HealthChecking: " | grep . \
  && bad "a health check line without the job and its stage (above)"
grep -vE '^<[0-7]>' "$tmp/cloud.log" | grep . && bad "sag-cloud log lines without a <N> priority (above)"
if grep -F -e "$ALIBABA_CLOUD_ACCESS_KEY_SECRET" -e "PRIVATE KEY" "$tmp/dev.log" "$tmp/cloud.log" ||
   grep -E '://[^ ]*\?[^<]' "$tmp/dev.log" "$tmp/cloud.log"; then
  bad "a secret or a URL query string in the logs (above)"
fi
((fail > section_fail)) || ok "logs: priorities, the job id and stage on its lines, no secrets ($(grep -c "job $job" <<<"$agent_lines") lines of $job)"

# 5. The daemon down: exit 3, since when the file is stale.
pid=$(cat "$dev/run/agent.pid")
kill -TERM "$pid"; wait "$simpid"; simpid=
out=$(st); rc=$?
[[ $rc -eq 3 && "$out" == *"NOT RUNNING"* && "$out" == *"status.json is stale since "* &&
   "$out" == *"journalctl -u sag-agent"* ]] && ok "daemon down: exit 3, NOT RUNNING, stale since" \
  || { bad "daemon down (rc=$rc):"; echo "$out"; }
json=$(st --json); rc=$?
[[ $rc -eq 3 ]] && python3 -c "import json, sys; d = json.load(sys.stdin); sys.exit(0 if d['running'] is False and ($schema1) else 1)" <<<"$json" \
  && ok "daemon down --json: running false, schema 1" || bad "daemon down --json (rc=$rc): $json"
exit $fail
