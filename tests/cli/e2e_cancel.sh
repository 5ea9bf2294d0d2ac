#!/usr/bin/env bash
# Cancelling an UpdateSmartAccessGatewayVersion job, end to end (issue 15):
# sag-cloud and a simulated appliance running the real sag-agent on loopback.
#   1. a Device upgrade whose download is slow (60 kB/s, 20 s) is cancelled with
#      `sag-cloud job cancel` while the image is written: the job ends
#      Cancelled (failed, error Cancelled) with the device's cancel.ack
#      recorded as accepted; the appliance never rebooted (same boot id),
#      runs 1.0.0 from slot A, and its bootloader environment is what it was;
#   2. a second job is cancelled right after its trial boot was set: the
#      device refuses (past the point of no return), the job commits, and a
#      cancel of the committed job is refused by the cloud.
# Usage: e2e_cancel.sh SAG_CLOUD SAG_AGENT SAG_SIM SAG_IMAGE FAKE_DPI_ENGINE
set -uo pipefail
cloud="$1"; agent="$2"; sim="$3"; image="$4"; engine="$5"
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); lab="$tmp/lab"; dev="$tmp/dev"; cloudpid=
# shellcheck source=tests/cli/e2e_lib.sh
source "$here/e2e_lib.sh"
cleanup() {
  devices_stop
  [[ -n "$cloudpid" ]] && kill -KILL "$cloudpid" 2>/dev/null
  wait 2>/dev/null
  if [[ -n "${SAG_KEEP:-}" ]]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }
die() {
  echo "FAIL: $*"; echo "--- cloud log"; tail -30 "$tmp/cloud.log"
  echo "--- device log"; tail -40 "$dev.log"; exit 1
}
serial=sag000e2ec0001; id=sag-e2ec000000000001

lab_init
# 1.2 MB: about 4 s of download at 300 kB/s, two chunks of 1 MiB.
for v in 1.0.0 1.0.1; do head -c 1200000 /dev/urandom >"$tmp/rootfs-$v.img"; done
for v in 1.0.0 1.0.1; do sign Device "$v" "$tmp/rootfs-$v.img"; done
: >"$tmp/cloud.log"
cloud_start
device_init "$dev" "$serial"
printf 'download:\n  bandwidth_limit: 60000\n' >>"$dev/agent.yaml"
device_on "$dev"
wait_attr "a['Status'] == 'Active' and dev['$serial']['SoftwareVersion'] == '1.0.0'" 60 \
  || die "the appliance did not come online with 1.0.0"

# job_field JOB_ID FIELD: a field of the job as the store has it.
job_field() {
  dump_store || return 1
  python3 -c "
import json, sys
for j in json.load(open(sys.argv[1])).get('jobs', []):
    if j['job_id'] == sys.argv[2]:
        v = j.get(sys.argv[3]); print(v if not isinstance(v, dict) else json.dumps(v))" \
    "$lab/store.json" "$1" "$2" 2>/dev/null
}
cancel() { "$cloud" job cancel --config "$lab/cloud.yaml" "$1"; }

# ---- 1: cancelled while the image is written
env_before=$("$sim" env "$dev" | grep '^BOOT_')
boot_before=$(cat "$dev/boot_id")
slot_before=$(cat "$dev/cmdline")
into=$(grep -c 'into slot' "$dev.log")
job=$(update VersionCode=1.0.1) || die "the update call failed"
[[ $(wc -w <<<"$job") -eq 1 ]] || die "one job expected: $job"
wait_log 'into slot' "$into" 30 || die "job $job never started writing"
out=$(cancel "$job") || bad "job cancel $job: rc=$? $out"
echo "job cancel $job: $out"
wait_job "$job" Cancelled 30 || die "job $job: $(job_state "$job"), not Cancelled"
[[ $(cloud_jobs | awk -v j="$job" '$1 == j { print $6 }') == Cancelled ]] \
  || bad "job $job: error $(job_field "$job" error), not Cancelled"
[[ $(job_field "$job" outcome) == failed ]] || bad "job $job: outcome $(job_field "$job" outcome)"
[[ $(job_field "$job" cancel_answer) == accepted ]] \
  || bad "job $job: cancel.ack $(job_field "$job" cancel_answer)"
grep -q "job $job: cancel accepted" "$dev.log" || bad "the device log shows no accepted cancel"
grep -q "job $job was cancelled on request in state Writing" "$dev.log" \
  || bad "the cancel did not come while the image was written"
# The appliance: no reboot, 1.0.0 from slot A, the bootloader as before.
sleep 1
[[ $(cat "$dev/boot_id") == "$boot_before" ]] || bad "the appliance rebooted"
[[ $(cat "$dev/cmdline") == "$slot_before" && "$slot_before" == *sag.slot=A* ]] \
  || bad "booted: $(cat "$dev/cmdline"), before: $slot_before"
env_after=$("$sim" env "$dev" | grep '^BOOT_')
[[ "$env_after" == "$env_before" ]] \
  || bad "the bootloader environment changed: $(paste -sd' ' <<<"$env_before") -> $(paste -sd' ' <<<"$env_after")"
wait_attr "a['Status'] == 'Active' and dev['$serial']['SoftwareVersion'] == '1.0.0'" 20 \
  || bad "the API does not show 1.0.0 after the cancel"
# A second cancel of the ended job: refused by the cloud.
if out=$(cancel "$job" 2>&1); then bad "a cancel of the cancelled job was accepted: $out"; fi
echo "second cancel of $job: $out"

# ---- 2: a cancel after the trial boot was set is refused; the job commits
# The trial boot's health check waits for the cancel to be sent (at most 50 s;
# its timeout raised to 60 s for it, read by the agent at the trial boot):
# otherwise a fast reboot can commit the job before the cancel reaches the
# cloud, which then refuses it itself.
sed -i 's/^      timeout_s: 10$/      timeout_s: 60/' "$dev/agent.yaml"
grep -q '^      timeout_s: 60$' "$dev/agent.yaml" || die "could not raise the health check's timeout"
mv "$dev/health-check" "$dev/health-check.sim"
cat >"$dev/health-check" <<EOF
#!/bin/sh
for i in \$(seq 500); do [ -e '$tmp/cancel-sent' ] && break; sleep 0.1; done
exec '$dev/health-check.sim'
EOF
chmod +x "$dev/health-check"
trial=$(grep -c 'trial boot of slot' "$dev.log")
job2=$(update VersionCode=1.0.1) || die "the second update call failed"
wait_log 'trial boot of slot' "$trial" 90 || die "job $job2 never set its trial boot"
out=$(cancel "$job2") || bad "job cancel $job2: rc=$? $out"
echo "job cancel $job2 after its trial boot was set: $out"
touch "$tmp/cancel-sent"
wait_job "$job2" Committed 60 || die "job $job2: $(job_state "$job2")"
end=$((SECONDS + 20))
while ((SECONDS < end)) && [[ $(job_field "$job2" cancel_answer) != refused ]]; do sleep 0.2; done
[[ $(job_field "$job2" cancel_answer) == refused ]] \
  || bad "job $job2: cancel.ack '$(job_field "$job2" cancel_answer)', not refused"
echo "job $job2: the device refused the cancel: $(job_field "$job2" cancel_reason)"
[[ $(job_field "$job2" cancel_reason) == CancelTooLate:* ]] \
  || bad "job $job2: refused for $(job_field "$job2" cancel_reason)"
if out=$(cancel "$job2" 2>&1); then bad "a cancel of the committed job was accepted: $out"; fi
[[ "$out" == *"already Committed"* ]] || bad "cancel after the commit: $out"
echo "cancel after the commit: $out"
wait_attr "a['Status'] == 'Active' and dev['$serial']['SoftwareVersion'] == '1.0.1'" 30 \
  || bad "the API does not show 1.0.1 at the end"
[[ $(installs_of "$dev" "$job") -eq 1 ]] || bad "job $job: the install started $(installs_of "$dev" "$job") times"
reports_once || fail=1
echo "jobs: $(cloud_jobs | awk '{ print $1, $4, $5, $6 }' | paste -sd, -); reports: $(cloud_reports | wc -l)"
((fail == 0)) && echo "ok: cancel"
exit $fail
