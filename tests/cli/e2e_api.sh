#!/usr/bin/env bash
# End to end through the Smartag RPC API: sag-cloud (lab init, serve) and a
# simulated appliance running the real sag-agent connected over the device
# channel (mutual TLS, loopback). UpdateSmartAccessGatewayVersion for a
# Device OS upgrade (download from the repository, write, trial boot, health
# check, commit), a DPI upgrade, a Device upgrade whose trial boot fails its
# health check (automatic rollback, the cause recorded by the cloud), a
# downgrade refused with VersionTooOld, and the appliance powered off:
# SmartAccessGatewayNotOnline; powered on: online again. Each as the API shows it.
# Usage: e2e_api.sh SAG_CLOUD SAG_AGENT SAG_SIM SAG_IMAGE FAKE_DPI_ENGINE
set -uo pipefail
cloud="$1"; agent="$2"; sim="$3"; image="$4"; engine="$5"
tmp=$(mktemp -d); lab="$tmp/lab"; dev="$tmp/dev"; cloudpid=; simpid=
stop_all() {
  [[ -n "$simpid" ]] && { kill -TERM "$(cat "$dev/run/agent.pid" 2>/dev/null)" 2>/dev/null; sleep 0.5; kill -KILL "$simpid" 2>/dev/null; pkill -KILL -f "$dev/agent.yaml" 2>/dev/null; }
  [[ -n "$cloudpid" ]] && kill -KILL "$cloudpid" 2>/dev/null
}
trap 'stop_all; [[ -n "${SAG_KEEP:-}" ]] && echo "kept $tmp" || rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }
die() { echo "FAIL: $*"; echo "--- cloud log"; tail -30 "$tmp/cloud.log"; echo "--- device log"; tail -40 "$tmp/dev.log"; exit 1; }
serial=sag000e2e0001; id=sag-e2e0000000000001

# shellcheck source=tests/cli/e2e_lib.sh
source "$(dirname "$0")/e2e_lib.sh"
lab_init
for v in 1.0.0 1.0.1 1.0.2; do head -c 1500000 /dev/urandom >"$tmp/rootfs-$v.img"; done
for v in 1.0.0 1.0.1 1.0.2; do sign Device "$v" "$tmp/rootfs-$v.img"; done
dpi_v=20201201_1_0-0.0.2
mkdir -p "$tmp/dpi"; echo "$dpi_v" >"$tmp/dpi/version"
for i in $(seq 50); do echo "rule $i" >"$tmp/dpi/r$i"; done
tar --zstd -C "$tmp/dpi" -cf "$tmp/dpi.tar.zst" . && sign Dpi "$dpi_v" "$tmp/dpi.tar.zst"

"$cloud" serve --config "$lab/cloud.yaml" >"$tmp/cloud.log" 2>&1 &
cloudpid=$!
for _ in $(seq 200); do grep -q 'API on http' "$tmp/cloud.log" && break; sleep 0.05; done
grep -q 'API on http' "$tmp/cloud.log" || die "sag-cloud serve did not start"
gw=$(sed -n 's#.*device gateway on \(wss://[^;]*\);.*#\1#p' "$tmp/cloud.log")
# shellcheck disable=SC1091
source "$lab/credentials.env"

"$sim" init "$dev" --slot-size $((4 << 20)) --slot-a "$tmp/rootfs-1.0.0.img" --version 1.0.0 \
  --serial "$serial" --smartag-id "$id" --endpoint "$gw" --root-ca "$lab/pki/root-ca.pem" \
  --dpi-engine "$engine" >/dev/null || die "sag-sim init"
cp "$lab/pki/device-$serial-chain.pem" "$dev/pki/device.pem"
cp "$lab/pki/device-$serial.key" "$dev/pki/device.key"
sed -i 's/level: debug/level: info/; s/heartbeat_s: 5/heartbeat_s: 2/; s/max_backoff_s: 10/max_backoff_s: 2/' "$dev/agent.yaml"
power_on() {
  "$sim" boot "$dev" --agent "$agent" --max-boots 30 >>"$tmp/dev.log" 2>&1 &
  simpid=$!
}
power_on

api() { "$cloud" call "$@" RegionId=cn-shanghai SmartAGId="$id"; }
# Waits until the attribute document satisfies a Python expression on `d`
# (the first device) and `a` (the whole answer).
wait_api() {
  local expr="$1" limit="${2:-60}"
  for _ in $(seq $((limit * 5))); do
    if api DescribeSmartAccessGatewayAttribute 2>/dev/null | python3 -c "
import json, sys
a = json.load(sys.stdin); d = a['Devices']['Device'][0]
sys.exit(0 if ($expr) else 1)" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}
wait_api 'a["Status"] == "Active" and d["SoftwareVersion"] == "1.0.0"' 60 \
  || die "the appliance did not come online with 1.0.0"
job_of() {  # the cloud's record of the newest job: state outcome error-name
  dump_store
  python3 -c "
import json, sys
jobs = json.load(open(sys.argv[1])).get('jobs', [])
j = jobs[-1] if jobs else {}
e = j.get('error') or {}
print(j.get('state', ''), j.get('outcome', ''), e.get('name', ''))" "$lab/store.json"
}

# 1. Device OS 1.0.0 -> 1.0.1
out=$(api UpdateSmartAccessGatewayVersion VersionCode=1.0.1); rc=$?
[[ $rc -eq 0 ]] || die "update to 1.0.1: rc=$rc $out"
wait_api 'd["SoftwareVersion"] == "1.0.1"' 120 || die "1.0.1 never reported"
[[ $(job_of) == "Committed committed "* ]] || bad "the cloud's job after 1.0.1: $(job_of)"

# 2. DPI database
out=$(api UpdateSmartAccessGatewayVersion VersionCode="$dpi_v" VersionType=Dpi); rc=$?
[[ $rc -eq 0 ]] || die "DPI update: rc=$rc $out"
wait_api "d['DpiSignatureDbVersion'] == '$dpi_v'" 60 || die "DPI $dpi_v never reported"

# 3. 1.0.2 whose trial boot fails its health check: rolled back to 1.0.1
"$sim" fault "$dev" --slot A unhealthy >/dev/null
out=$(api UpdateSmartAccessGatewayVersion VersionCode=1.0.2); rc=$?
[[ $rc -eq 0 ]] || die "update to 1.0.2: rc=$rc $out"
for _ in $(seq 600); do [[ $(job_of) == RolledBack* ]] && break; sleep 0.2; done
[[ $(job_of) == "RolledBack rolled_back HealthCheckFailed" ]] || bad "rollback as the cloud sees it: $(job_of)"
wait_api 'd["SoftwareVersion"] == "1.0.1"' 30 || bad "after the rollback the API does not show 1.0.1"
"$sim" fault "$dev" --slot A none >/dev/null

# 4. A downgrade is refused by the API; an offline appliance too.
out=$(api UpdateSmartAccessGatewayVersion VersionCode=1.0.0); rc=$?
[[ $rc -eq 1 && "$out" == *'"Code":"VersionTooOld"'* ]] || bad "downgrade: rc=$rc $out"
kill -TERM "$(cat "$dev/run/agent.pid")"; wait "$simpid"; simpid=
wait_api 'a["Status"] == "Offline"' 20 || bad "powered off, the instance is not Offline"
out=$(api UpdateSmartAccessGatewayVersion VersionCode=1.0.2); rc=$?
[[ $rc -eq 1 && "$out" == *'"Code":"SmartAccessGatewayNotOnline"'* ]] || bad "offline update: rc=$rc $out"
power_on
wait_api 'a["Status"] == "Active" and d["SoftwareVersion"] == "1.0.1"' 60 || bad "not online again"

# Every report the device made reached the cloud once (the gateway's
# duplicates are re-acks, not records), and the device's outbox is drained.
dump_store || bad "sag-cloud store dump failed"
python3 - "$dev/state/outbox.log" "$lab/store.json" <<'PY' || fail=1
import json, sys
pending = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
store = json.load(open(sys.argv[2]))
seqs = [r["seq"] for r in store.get("reports", [])]
if len(seqs) != len(set(seqs)):
    print("FAIL: a report was recorded twice:", seqs); sys.exit(1)
print(f"cloud recorded {len(seqs)} reports; jobs: " +
      ", ".join(f"{j.get('job_type')} {j.get('version')} {j.get('state')}" for j in store.get("jobs", [])))
PY
((fail == 0)) && echo "ok: Device upgrade, DPI upgrade, rollback, VersionTooOld, offline and back, through the API"
exit $fail
