#!/usr/bin/env bash
# The demo, given a build directory: a simulated SAG appliance runs the real
# sag-agent; signed images are built with sag-image and installed.
#   1. factory state: Device OS 1.0.0 in slot A
#   2. 1.0.1 installed into slot B, trial boot, health check, commit
#   3. 1.0.2 into slot A whose trial boot fails its health check: automatic
#      rollback to 1.0.1
#   4. DPI signature database 20201117_1_0-0.0.1, then 20201201_1_0-0.0.2:
#      verified, staged, validated, swapped, reloaded and confirmed by the
#      (fake) DPI engine without a reboot
#   5. a DPI database the engine rejects on reload: automatic return to the
#      previous database
set -euo pipefail
build="$(cd "$1" && pwd)"
agent="$build/agent/sag-agent"
image="$build/tools/image/sag-image"
sim="$build/tools/sim/sag-sim"
engine="$build/dpi/fake_engine/sag-fake-dpi-engine"
work="${SAG_DEMO_DIR:-$(mktemp -d /tmp/sag-demo.XXXXXX)}"
dev="$work/appliance"
cfg="$dev/agent.yaml"

bold=$'\033[1m'; dim=$'\033[2m'; green=$'\033[32m'; red=$'\033[31m'; off=$'\033[0m'
if [[ ! -t 1 ]]; then bold=; dim=; green=; red=; off=; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
note() { printf '%s   %s%s\n' "$dim" "$*" "$off"; }

simpid=
cleanup() {
  if [[ -n "$simpid" ]] && kill -0 "$simpid" 2>/dev/null; then
    pid=$(cat "$dev/run/agent.pid" 2>/dev/null || true)
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
    wait "$simpid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# Waits until `sag-agent status --json` satisfies a jq-free check (a python
# one-liner over the JSON), at most $2 seconds.
wait_status() {
  local expr="$1" limit="${2:-60}"
  for _ in $(seq $((limit * 10))); do
    if "$agent" status --json --config "$cfg" 2>/dev/null |
      python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if ($expr) else 1)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "${red}timed out waiting for: $expr${off}"; "$agent" status --config "$cfg" || true
  return 1
}

step "Building signed images with sag-image (development PKI in $work/pki)"
"$image" pki init "$work/pki" >/dev/null
note "root CA, intermediate, code-signing certificate (EKU codeSigning), device and server certificates"
for v in 1.0.0 1.0.1 1.0.2; do
  # A stand-in root file system: 24 MiB, mostly compressible, different per version.
  python3 - "$work/rootfs-$v.img" "$v" <<'PY'
import os, sys
path, version = sys.argv[1], sys.argv[2]
with open(path, "wb") as f:
    for i in range(24):
        f.write((f"SAG OS {version} block {i}\n".encode() * 40000)[:1 << 19])
        f.write(os.urandom(1 << 19))
PY
done
for v in 1.0.1 1.0.2; do
  "$image" create --type Device --version "$v" --compatible sag-1000 --compatible sag-100wm \
    --payload "$work/rootfs-$v.img" --key "$work/pki/signer.key" --cert "$work/pki/signer.pem" \
    --chain "$work/pki/signer-chain.pem" --output "$work/sag-os-$v.sagimg" >/dev/null
  "$image" verify --ca "$work/pki/root-ca.pem" "$work/sag-os-$v.sagimg"
done
"$image" inspect "$work/sag-os-1.0.1.sagimg" | sed 's/^/   /'

step "A simulated SAG-1000 appliance: Device OS 1.0.0 in slot A (factory state)"
"$sim" init "$dev" --slot-size $((32 << 20)) --slot-a "$work/rootfs-1.0.0.img" --version 1.0.0 \
  --root-ca "$work/pki/root-ca.pem" --serial sag32a9034958a --smartag-id sag-0ovhf732a9j1234567 \
  --dpi-engine "$engine"
sed -i 's/level: debug/level: info/' "$cfg"
SAG_LOG_STYLE=terminal "$sim" boot "$dev" --agent "$agent" --max-boots 20 \
  > >(grep --line-buffered -vE ' (configuration|identity:|cloud:|boot:|state|health:|download:) ' |
      sed -u 's/^/   /') 2>&1 &
simpid=$!
wait_status 's.get("state") == "idle"' 30
"$agent" status --config "$cfg" | sed 's/^/   /'

step "Upgrade 1.0.0 -> 1.0.1: stream into slot B, verify, trial boot, health check, commit"
"$agent" install "$work/sag-os-1.0.1.sagimg" --config "$cfg" | sed 's/^/   /'
wait_status 's.get("device_version") == "1.0.1" and s["job"]["state"] == "Committed" and s.get("state") == "idle"' 60
printf '%s   committed: the appliance runs 1.0.1 from slot B%s\n' "$green" "$off"
"$agent" status --config "$cfg" | sed 's/^/   /'

step "Upgrade 1.0.1 -> 1.0.2 whose trial boot fails its health check (slot A made unhealthy)"
"$sim" fault "$dev" --slot A unhealthy
"$agent" install "$work/sag-os-1.0.2.sagimg" --config "$cfg" | sed 's/^/   /'
wait_status 's["job"]["state"] == "RolledBack" and s.get("state") == "idle"' 90
printf '%s   rolled back automatically: the appliance runs 1.0.1 again from slot B%s\n' "$green" "$off"
"$agent" status --config "$cfg" | sed 's/^/   /'

# DPI databases: a tar.zst of the engine's files with a `version` file.
make_dpi() {
  local v="$1" d="$work/dpi-$1"
  mkdir -p "$d/rules"
  echo "$v" > "$d/version"
  for i in $(seq 1 200); do echo "app-$i: port $((1000 + i)) signature $(printf '%08x' $((i * 2654435761 % 4294967296)))" > "$d/rules/app-$i.rule"; done
  tar --zstd -C "$d" -cf "$work/dpi-$v.tar.zst" .
  "$image" create --type Dpi --version "$v" --compatible sag-1000 --payload "$work/dpi-$v.tar.zst" \
    --key "$work/pki/signer.key" --cert "$work/pki/signer.pem" --chain "$work/pki/signer-chain.pem" \
    --output "$work/sag-dpi-$v.sagimg" >/dev/null
}

step "DPI signature database 20201117_1_0-0.0.1: verify, stage, validate, swap, reload, confirm"
make_dpi 20201117_1_0-0.0.1
"$agent" install "$work/sag-dpi-20201117_1_0-0.0.1.sagimg" --config "$cfg" | sed 's/^/   /'
wait_status 's.get("dpi_version") == "20201117_1_0-0.0.1" and s.get("state") == "idle"' 60
printf '%s   the engine confirms it loaded %s%s\n' "$green" "$("$engine" --state "$dev/dpi-engine" confirm | head -1)" "$off"

step "DPI upgrade to 20201201_1_0-0.0.2 (no reboot)"
make_dpi 20201201_1_0-0.0.2
"$agent" install "$work/sag-dpi-20201201_1_0-0.0.2.sagimg" --config "$cfg" | sed 's/^/   /'
wait_status 's.get("dpi_version") == "20201201_1_0-0.0.2" and s.get("state") == "idle"' 60
printf '%s   the engine confirms it loaded %s%s\n' "$green" "$("$engine" --state "$dev/dpi-engine" confirm | head -1)" "$off"
ls -l "$dev/state/dpi/current" | sed 's/^/   /'

step "A DPI database the engine rejects on reload: automatic return to the previous one"
make_dpi 20201215_1_0-0.0.3
echo 20201215_1_0-0.0.3 > "$dev/dpi-engine/reject-on-reload"
"$agent" install "$work/sag-dpi-20201215_1_0-0.0.3.sagimg" --config "$cfg" | sed 's/^/   /' || true
wait_status 's["job"]["state"] == "RolledBack" and s.get("dpi_version") == "20201201_1_0-0.0.2" and s.get("state") == "idle"' 60
printf '%s   rolled back: the engine runs %s again%s\n' "$green" "$("$engine" --state "$dev/dpi-engine" confirm | head -1)" "$off"
"$agent" status --config "$cfg" | sed 's/^/   /'

step "Done: the appliance runs Device OS 1.0.1 and DPI database 20201201_1_0-0.0.2 (files in $work)"
cleanup
