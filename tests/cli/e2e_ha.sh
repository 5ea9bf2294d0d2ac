#!/usr/bin/env bash
# An HA instance end to end (issues 16, 19): one SmartAG instance with two
# simulated appliances (active and standby), each running the real sag-agent
# on its own channel, driven through UpdateSmartAccessGatewayVersion:
#   1. with SerialNumber: only that box is upgraded (its job, its version);
#   2. without SerialNumber while that box is still busy: the whole call is
#      refused (IncorrectStatus) and the other box gets no job either;
#   3. without SerialNumber: both boxes get a job and both commit;
#   4. one box powered off, without SerialNumber: SmartAccessGatewayNotOnline
#      and no job for the box that is online (all or nothing, docs/cloud.md).
# Usage: e2e_ha.sh SAG_CLOUD SAG_AGENT SAG_SIM SAG_IMAGE FAKE_DPI_ENGINE
set -uo pipefail
cloud="$1"; agent="$2"; sim="$3"; image="$4"; engine="$5"
tmp=$(mktemp -d); lab="$tmp/lab"; cloudpid=
# shellcheck source=tests/cli/e2e_lib.sh
source "$(dirname "$0")/e2e_lib.sh"
trap 'devices_stop; [[ -n "$cloudpid" ]] && kill -KILL "$cloudpid" 2>/dev/null; [[ -n "${SAG_KEEP:-}" ]] && echo "kept $tmp" || rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }
die() {
  echo "FAIL: $*"; echo "--- cloud log"; tail -30 "$tmp/cloud.log"
  for d in "$tmp"/dev-*.log; do echo "--- $d"; tail -20 "$d"; done; exit 1
}
id=sag-e2eha00000000001; sa=sag000e2eha0a; sb=sag000e2eha0b

"$cloud" lab init "$lab" --serial "$sa" --serial "$sb" --smartag-id "$id" >/dev/null || die "lab init"
sed -i 's/heartbeat_s: 10/heartbeat_s: 2/' "$lab/cloud.yaml"
for v in 1.0.0 1.0.1 1.0.2 1.0.3; do head -c 1000000 /dev/urandom >"$tmp/rootfs-$v.img"; done
for v in 1.0.0 1.0.1 1.0.2 1.0.3; do sign Device "$v" "$tmp/rootfs-$v.img"; done
: >"$tmp/cloud.log"
cloud_start
A="$tmp/dev-a"; B="$tmp/dev-b"
device_init "$A" "$sa"; device_init "$B" "$sb"
# B's downloads take about 10 s (100 kB/s): step 2 lands while it is busy
# and still online (not in its reboot).
printf 'download:\n  bandwidth_limit: 100000\n' >>"$B/agent.yaml"
device_on "$A"; device_on "$B"
wait_attr "a['Status'] == 'Active' and dev['$sa']['SoftwareVersion'] == '1.0.0' and \
dev['$sb']['SoftwareVersion'] == '1.0.0' and dev['$sa']['HaState'] == 'active'" 60 \
  || die "the HA pair did not come online with 1.0.0"
jobs_of() { cloud_jobs | awk -v s="$1" '$2 == s' | wc -l; }

# 1. SerialNumber picks the standby alone.
jb=$(update VersionCode=1.0.1 SerialNumber="$sb") || die "update of $sb"
[[ $(wc -w <<<"$jb") -eq 1 && "$jb" == *"$sb" ]] || bad "one job for $sb expected, got: $jb"

# 2. Both boxes while the standby is busy: refused as a whole.
out=$(api UpdateSmartAccessGatewayVersion VersionCode=1.0.1); rc=$?
# IncorrectStatus (busy); on a machine loaded enough for the standby's
# channel to drop meanwhile, SmartAccessGatewayNotOnline. Either way the
# whole call is refused.
[[ $rc -eq 1 && "$out" =~ \"Code\":\"(IncorrectStatus|SmartAccessGatewayNotOnline)\" ]] \
  || bad "both, one busy: rc=$rc $out"
echo "both boxes, the standby busy: $(sed 's/.*"Code":"\([^"]*\)".*/\1/' <<<"$out")"
[[ $(jobs_of "$sa") -eq 0 ]] || bad "the refused call left a job for $sa: $(cloud_jobs)"

wait_job "$jb" Committed 90 || die "job $jb: $(job_state "$jb")"
wait_attr "dev['$sb']['SoftwareVersion'] == '1.0.1' and dev['$sa']['SoftwareVersion'] == '1.0.0'" 20 \
  || bad "after SerialNumber=$sb: the API does not show $sb 1.0.1 and $sa 1.0.0"
[[ $(installs_of "$A" "$jb") -eq 0 && $(grep -c 'into slot' "$A.log") -eq 0 ]] \
  || bad "$sa installed something"

# 3. Without SerialNumber: both boxes.
j3=$(update VersionCode=1.0.2) || die "update of both"
[[ $(wc -w <<<"$j3") -eq 2 ]] || bad "two jobs expected, got: $j3"
for j in $j3; do wait_job "$j" Committed 90 || bad "job $j: $(job_state "$j")"; done
wait_attr "dev['$sa']['SoftwareVersion'] == '1.0.2' and dev['$sb']['SoftwareVersion'] == '1.0.2'" 20 \
  || bad "both boxes do not show 1.0.2"

# 4. The standby powered off: the call for both is refused, nothing dispatched.
device_off "$B"
wait_offline "$sb" 20 || bad "the gateway did not see $sb go"
wait_attr "a['Status'] == 'Active'" 5 || bad "one box online: the instance should stay Active"
before=$(cloud_jobs | wc -l)
out=$(api UpdateSmartAccessGatewayVersion VersionCode=1.0.3); rc=$?
[[ $rc -eq 1 && "$out" == *'"Code":"SmartAccessGatewayNotOnline"'* ]] || bad "both, one off: rc=$rc $out"
[[ $(cloud_jobs | wc -l) -eq $before ]] || bad "the refused call left a job: $(cloud_jobs | tail -1)"
out=$(api UpdateSmartAccessGatewayVersion VersionCode=1.0.3 SerialNumber="$sb"); rc=$?
[[ $rc -eq 1 && "$out" == *'"Code":"SmartAccessGatewayNotOnline"'* ]] || bad "$sb off: rc=$rc $out"

reports_once || fail=1
echo "jobs: $(cloud_jobs | awk '{ print $2, $4, $5 }' | paste -sd, -)"
((fail == 0)) && echo "ok: HA pair: SerialNumber picks one box, without it both or none"
exit $fail
