#!/usr/bin/env bash
# The demo, given a build directory: sag-cloud (the reference control plane)
# and a simulated SAG appliance running the real sag-agent, connected over the
# device channel (WebSocket, mutual TLS, loopback). Every upgrade is an
# UpdateSmartAccessGatewayVersion call, signed as the Alibaba Cloud SDKs sign
# it, and everything is shown as the API shows it:
#   1. Device OS 1.0.0 -> 1.0.1: download, write, read-back, reboot, health
#      check, commit; DescribeSmartAccessGatewayAttribute reports 1.0.1
#   2. DPI signature database: staged, validated, swapped, reloaded, confirmed
#   3. 1.0.2 whose trial boot fails its health check: automatic rollback to
#      1.0.1, and the cause as the cloud recorded it
#   4. VersionTooOld for a downgrade; the appliance powered off:
#      SmartAccessGatewayNotOnline; powered on: online again
# Exits non-zero as soon as a step does not behave as shown.
set -euo pipefail
build="$(cd "$1" && pwd)"
agent="$build/agent/sag-agent"
cloud="$build/cloud/sag-cloud"
image="$build/tools/image/sag-image"
sim="$build/tools/sim/sag-sim"
engine="$build/dpi/fake_engine/sag-fake-dpi-engine"
work="${SAG_DEMO_DIR:-$(mktemp -d /tmp/sag-demo.XXXXXX)}"
lab="$work/cloud"
dev="$work/appliance"
serial=sag32a9034958a
id=sag-0ovhf732a9j1234567

bold=$'\033[1m'; dim=$'\033[2m'; green=$'\033[32m'; red=$'\033[31m'; off=$'\033[0m'
if [[ ! -t 1 ]]; then bold=; dim=; green=; red=; off=; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
note() { printf '%s   %s%s\n' "$dim" "$*" "$off"; }
good() { printf '%s   %s%s\n' "$green" "$*" "$off"; }
fail() { printf '%s   FAILED: %s%s\n' "$red" "$*" "$off"; exit 1; }

simpid=; cloudpid=
power_off() {
  if [[ -n "$simpid" ]] && kill -0 "$simpid" 2>/dev/null; then
    kill -TERM "$(cat "$dev/run/agent.pid" 2>/dev/null)" 2>/dev/null || true
    wait "$simpid" 2>/dev/null || true
  fi
  simpid=
}
cleanup() {
  power_off
  if [[ -n "$cloudpid" ]]; then kill -TERM "$cloudpid" 2>/dev/null || true; wait "$cloudpid" 2>/dev/null || true; fi
}
trap cleanup EXIT

step "sag-cloud lab init: a control plane on this machine (development PKI, access key, loopback ports)"
"$cloud" lab init "$lab" --serial "$serial" --smartag-id "$id" | sed 's/^/   /'
sed -i 's/heartbeat_s: 10/heartbeat_s: 3/' "$lab/cloud.yaml"

step "Signed images into the cloud's repository (sag-image create, the lab's code-signing key)"
rootfs() {  # a stand-in root file system: 24 MiB, mostly compressible, different per version
  python3 - "$1" "$2" <<'PY'
import os, sys
path, version = sys.argv[1], sys.argv[2]
with open(path, "wb") as f:
    for i in range(24):
        f.write((f"SAG OS {version} block {i}\n".encode() * 40000)[:1 << 19])
        f.write(os.urandom(1 << 19))
PY
}
sign() {  # TYPE VERSION PAYLOAD FILE
  "$image" create --type "$1" --version "$2" --compatible sag-1000 --payload "$3" \
    --key "$lab/pki/signer.key" --cert "$lab/pki/signer.pem" --chain "$lab/pki/signer-chain.pem" \
    --output "$lab/images/$4" >/dev/null
}
for v in 1.0.0 1.0.1 1.0.2; do rootfs "$work/rootfs-$v.img" "$v"; sign Device "$v" "$work/rootfs-$v.img" "sag-os-$v.sagimg"; done
dpi_v=20201201_1_0-0.0.2
mkdir -p "$work/dpi/rules"; echo "$dpi_v" >"$work/dpi/version"
for i in $(seq 1 200); do echo "app-$i: port $((1000 + i)) signature $(printf '%08x' $((i * 2654435761 % 4294967296)))" >"$work/dpi/rules/app-$i.rule"; done
tar --zstd -C "$work/dpi" -cf "$work/dpi-$dpi_v.tar.zst" .
sign Dpi "$dpi_v" "$work/dpi-$dpi_v.tar.zst" "sag-dpi-$dpi_v.sagimg"
ls -l "$lab/images" | tail -n +2 | awk '{printf "   %-40s %10d bytes\n", $9, $5}'

step "sag-cloud serve: the Smartag RPC API, the device gateway and the image repository"
"$cloud" serve --config "$lab/cloud.yaml" >"$work/cloud.log" 2>&1 &
cloudpid=$!
for _ in $(seq 200); do grep -q 'API on http' "$work/cloud.log" && break; sleep 0.05; done
grep -q 'API on http' "$work/cloud.log" || { cat "$work/cloud.log"; fail "sag-cloud did not start"; }
sed 's/^<[0-9]>//' "$work/cloud.log" | sed 's/^/   /'
gw=$(sed -n 's#.*device gateway on \(wss://[^;]*\);.*#\1#p' "$work/cloud.log")
# shellcheck disable=SC1091
source "$lab/credentials.env"

step "A simulated SAG-1000 ($serial): Device OS 1.0.0 in slot A, sag-agent connects to $gw"
"$sim" init "$dev" --slot-size $((32 << 20)) --slot-a "$work/rootfs-1.0.0.img" --version 1.0.0 \
  --serial "$serial" --smartag-id "$id" --endpoint "$gw" --root-ca "$lab/pki/root-ca.pem" \
  --dpi-engine "$engine" >/dev/null
cp "$lab/pki/device-$serial-chain.pem" "$dev/pki/device.pem"
cp "$lab/pki/device-$serial.key" "$dev/pki/device.key"
sed -i 's/level: debug/level: info/; s/heartbeat_s: 5/heartbeat_s: 3/; s/max_backoff_s: 10/max_backoff_s: 2/' "$dev/agent.yaml"
power_on() {
  SAG_LOG_STYLE=terminal "$sim" boot "$dev" --agent "$agent" --max-boots 20 >>"$work/appliance.log" 2>&1 &
  simpid=$!
}
power_on

call() {  # prints the call as an operator types it, then the answer
  note "sag-cloud call $* RegionId=cn-shanghai SmartAGId=$id"
  "$cloud" call "$@" RegionId=cn-shanghai SmartAGId="$id"
}
# Waits until DescribeSmartAccessGatewayAttribute satisfies a Python
# expression over `a` (the answer) and `d` (the appliance), at most $2 s.
wait_api() {
  local expr="$1" limit="${2:-60}"
  for _ in $(seq $((limit * 5))); do
    if "$cloud" call DescribeSmartAccessGatewayAttribute RegionId=cn-shanghai SmartAGId="$id" 2>/dev/null |
      python3 -c "
import json, sys
a = json.load(sys.stdin); d = a['Devices']['Device'][0]
sys.exit(0 if ($expr) else 1)" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}
attribute() {
  "$cloud" call DescribeSmartAccessGatewayAttribute RegionId=cn-shanghai SmartAGId="$id" | python3 -c "
import json, sys
a = json.load(sys.stdin); d = a['Devices']['Device'][0]
print(f\"   DescribeSmartAccessGatewayAttribute: Status={a['Status']} SoftwareVersion={d['SoftwareVersion']} DpiSignatureDbVersion={d['DpiSignatureDbVersion'] or '-'}\")"
}
# Follows the newest job as the device reports it over the channel (the
# cloud's record in its store, read with `sag-cloud store dump`), until it
# ends: prints every progress report the cloud recorded for it (each stage the
# appliance went through, even those shorter than a poll), then the outcome.
follow() {
  python3 - "$cloud" "$lab/cloud.yaml" "${1:-180}" <<'PY'
import json, subprocess, sys, time
cloud, config, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
shown, start = set(), time.time()
while time.time() - start < limit:
    try:
        out = subprocess.run([cloud, "store", "dump", "--config", config], capture_output=True,
                             check=True, timeout=10).stdout
        dump = json.loads(out)
    except (OSError, ValueError, subprocess.SubprocessError):
        dump = {}
    jobs = dump.get("jobs", [])
    if jobs:
        j = jobs[-1]
        for r in sorted((r for r in dump.get("reports", [])
                         if r.get("job_id") == j["job_id"] and r.get("type") == "progress"),
                        key=lambda r: r.get("seq", 0)):
            key = (r.get("epoch"), r.get("seq"))
            if key in shown:
                continue
            shown.add(key)
            at = (r.get("received") or "")[11:19]  # HH:MM:SS, when the cloud recorded it
            detail = r.get("detail", "").removesuffix(" 0%")
            print(f"   [{at}] {j['job_id'][:24]}…  the appliance reports {detail}", flush=True)
        state = j.get("state")
        if state in ("Committed", "RolledBack", "Failed", "Rejected"):
            print(f"   {j['job_id'][:24]}…  the cloud records the job {state} after {time.time() - start:.1f} s"
                  f" (outcome {j.get('outcome') or '-'})", flush=True)
            e = j.get("error") or {}
            if e:
                print(f"   cause reported by the appliance: E{e.get('code')} {e.get('name')}: {e.get('message')}")
            sys.exit(0)
    time.sleep(0.1)
print("   the job did not end in time"); sys.exit(1)
PY
}

wait_api 'a["Status"] == "Active" and d["SoftwareVersion"] == "1.0.0"' 60 || fail "the appliance did not come online"
good "online: the appliance said hello over the channel"
attribute

step "1. UpdateSmartAccessGatewayVersion VersionCode=1.0.1: download, write slot B, read back, trial boot, health check, commit"
call UpdateSmartAccessGatewayVersion VersionCode=1.0.1 | sed 's/^/   /'
follow 180 || fail "the Device upgrade did not end"
wait_api 'd["SoftwareVersion"] == "1.0.1"' 30 || fail "1.0.1 is not reported"
good "committed: the appliance runs 1.0.1 from slot B"
attribute

step "2. UpdateSmartAccessGatewayVersion VersionType=Dpi VersionCode=$dpi_v: stage, validate, swap, reload, confirm (no reboot)"
call UpdateSmartAccessGatewayVersion VersionType=Dpi VersionCode="$dpi_v" | sed 's/^/   /'
follow 120 || fail "the DPI upgrade did not end"
wait_api "d['DpiSignatureDbVersion'] == '$dpi_v'" 30 || fail "the DPI database is not reported"
good "the engine confirms it loaded $("$engine" --state "$dev/dpi-engine" confirm | head -1)"
attribute

step "3. 1.0.2, whose trial boot fails its health check (slot A made unhealthy): automatic rollback"
"$sim" fault "$dev" --slot A unhealthy
call UpdateSmartAccessGatewayVersion VersionCode=1.0.2 | sed 's/^/   /'
follow 240 || fail "the 1.0.2 job did not end"
"$cloud" store dump --config "$lab/cloud.yaml" \
  | python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][-1]; sys.exit(0 if j['state']=='RolledBack' else 1)" \
  || fail "the 1.0.2 job did not roll back"
wait_api 'd["SoftwareVersion"] == "1.0.1"' 30 || fail "the API does not show 1.0.1 after the rollback"
good "rolled back: the appliance runs 1.0.1 again, and the cloud knows why"
attribute
"$sim" fault "$dev" --slot A none

step "4. What the API refuses: a downgrade, and an appliance that is off"
out=$(call UpdateSmartAccessGatewayVersion VersionCode=1.0.0 || true)
echo "$out" | sed 's/^/   /'
[[ "$out" == *'"Code":"VersionTooOld"'* ]] || fail "the downgrade was not refused with VersionTooOld"
note "powering the appliance off"
power_off
wait_api 'a["Status"] == "Offline"' 20 || fail "the instance is not Offline"
attribute
out=$(call UpdateSmartAccessGatewayVersion VersionCode=1.0.2 || true)
echo "$out" | sed 's/^/   /'
[[ "$out" == *'"Code":"SmartAccessGatewayNotOnline"'* ]] || fail "not refused with SmartAccessGatewayNotOnline"
note "powering it on again"
power_on
wait_api 'a["Status"] == "Active" and d["SoftwareVersion"] == "1.0.1"' 60 || fail "the appliance did not come back"
good "online again, running 1.0.1 with DPI database $dpi_v"
attribute

step "5. Done; everything it started is stopped"
cleanup
note "cloud: $work/cloud.log, its state $lab/store.db (sag-cloud store dump --config $lab/cloud.yaml), its configuration $lab/cloud.yaml"
note "appliance: $work/appliance.log, its state $dev/state/ (jobs.json, outbox.log), status $dev/run/status.json"
