# Shared by the end-to-end tests (e2e_api.sh, e2e_kill.sh); sourced, not run.
# Needs: $cloud, $image, $lab, $serial, $id, and a die() that reports and exits.

# sag-cloud lab init for one appliance, heartbeats every 2 s.
lab_init() {
  "$cloud" lab init "$lab" --serial "$serial" --smartag-id "$id" >/dev/null || die "lab init"
  sed -i 's/heartbeat_s: 10/heartbeat_s: 2/' "$lab/cloud.yaml"
}

# The cloud's store as JSON ({devices, jobs, reports}), written to
# $lab/store.json: `sag-cloud store dump` reads the SQLite store, also while
# sag-cloud serves (or after it was killed).
dump_store() {
  "$cloud" store dump --config "$lab/cloud.yaml" >"$lab/store.json.tmp" 2>/dev/null \
    && mv "$lab/store.json.tmp" "$lab/store.json"
}

# sign TYPE VERSION PAYLOAD [sag-image create options]: a signed image in
# the lab's repository.
sign() {
  "$image" create --type "$1" --version "$2" --compatible sag-1000 --payload "$3" "${@:4}" \
    --key "$lab/pki/signer.key" --cert "$lab/pki/signer.pem" --chain "$lab/pki/signer-chain.pem" \
    --output "$lab/images/$1-$2.sagimg" >/dev/null || die "sign $1 $2"
}

# ---- used by the e2e tests of issue 19 (e2e_ha.sh, e2e_faults.sh) ----
# Needs also: $cloud, $sim, $agent, $engine, $tmp (cloud.log, rootfs-1.0.0.img).

# cloud_start: sag-cloud serve on the lab's configuration (log appended to
# $tmp/cloud.log); sets cloudpid, gw (the device endpoint) and the key pair.
cloud_start() {
  local before
  before=$(grep -c 'API on http' "$tmp/cloud.log" 2>/dev/null)
  "$cloud" serve --config "$lab/cloud.yaml" >>"$tmp/cloud.log" 2>&1 &
  cloudpid=$!
  for _ in $(seq 300); do
    (($(grep -c 'API on http' "$tmp/cloud.log") > ${before:-0})) && break
    kill -0 "$cloudpid" 2>/dev/null || die "sag-cloud serve exited"
    sleep 0.05
  done
  (($(grep -c 'API on http' "$tmp/cloud.log") > ${before:-0})) || die "sag-cloud serve did not start"
  gw=$(sed -n 's#.*device gateway on \(wss://[^;]*\);.*#\1#p' "$tmp/cloud.log" | head -1)
  # shellcheck disable=SC1091
  source "$lab/credentials.env"
}

# device_init DIR SERIAL: a simulated appliance of the lab's instance running
# 1.0.0 ($tmp/rootfs-1.0.0.img), with its device certificate, heartbeats
# every 2 s and reconnects within 1 s.
device_init() {
  "$sim" init "$1" --slot-size $((4 << 20)) --slot-a "$tmp/rootfs-1.0.0.img" --version 1.0.0 \
    --serial "$2" --smartag-id "$id" --endpoint "$gw" --root-ca "$lab/pki/root-ca.pem" \
    --dpi-engine "$engine" >/dev/null || die "sag-sim init $1"
  cp "$lab/pki/device-$2-chain.pem" "$1/pki/device.pem"
  cp "$lab/pki/device-$2.key" "$1/pki/device.key"
  sed -i 's/level: debug/level: info/; s/heartbeat_s: 5/heartbeat_s: 2/; s/max_backoff_s: 10/max_backoff_s: 1/' \
    "$1/agent.yaml"
}

# device_on DIR [sag-sim boot options]: powers the appliance on in the
# background (log DIR.log); its simulator's pid in simpids[DIR].
declare -A simpids=()
device_on() {
  local dir="$1"; shift
  "$sim" boot "$dir" --agent "$agent" --max-boots 30 "$@" >>"$dir.log" 2>&1 &
  simpids[$dir]=$!
}
# device_off DIR: SIGTERM to its agent (a clean stop), the simulator ends.
device_off() {
  local dir="$1" pid
  pid=$(cat "$dir/run/agent.pid" 2>/dev/null)
  [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "${simpids[$dir]}" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "${simpids[$dir]}" 2>/dev/null
  wait "${simpids[$dir]}" 2>/dev/null
  unset "simpids[$dir]"
}
# devices_stop: every appliance still on, at once (the EXIT trap).
devices_stop() {
  local dir
  for dir in "${!simpids[@]}"; do
    kill -CONT "$(cat "$dir/run/agent.pid" 2>/dev/null)" 2>/dev/null
    kill -KILL "$(cat "$dir/run/agent.pid" 2>/dev/null)" 2>/dev/null
    kill -KILL "${simpids[$dir]}" 2>/dev/null
    wait "${simpids[$dir]}" 2>/dev/null
    # A simulator killed with its storage on sag-powerloss leaves the mount.
    if grep -qs " $dir fuse" /proc/mounts; then fusermount3 -u -z "$dir" 2>/dev/null || fusermount -u -z "$dir"; fi
  done
}

api() { "$cloud" call "$@" RegionId=cn-shanghai SmartAGId="$id"; }
# wait_attr EXPR [SECONDS]: until DescribeSmartAccessGatewayAttribute
# satisfies a Python expression on `a` (the answer) and `dev` (serial ->
# that device's entry).
wait_attr() {
  local expr="$1" end=$((SECONDS + ${2:-60}))
  while ((SECONDS < end)); do
    if api DescribeSmartAccessGatewayAttribute 2>/dev/null | python3 -c "
import json, sys
a = json.load(sys.stdin); dev = {d['SerialNumber']: d for d in a['Devices']['Device']}
sys.exit(0 if ($expr) else 1)" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}

# wait_log PATTERN N SECONDS: more than N lines of the device log ($dev.log)
# match PATTERN within SECONDS.
wait_log() {
  local end=$((SECONDS + $3))
  while ((SECONDS < end)); do
    (($(grep -c -- "$1" "$dev.log") > $2)) && return 0
    sleep 0.05
  done
  return 1
}

# cloud_jobs: the cloud's jobs, oldest first, one line each:
# JOB_ID SERIAL TYPE VERSION STATE ERROR-NAME TIMED_OUT(yes|no). These
# helpers read the store through `sag-cloud store dump` (dump_store).
cloud_jobs() {
  dump_store || return 1
  python3 -c "
import json, sys
for j in json.load(open(sys.argv[1])).get('jobs', []):
    print(j['job_id'], j['serial'], j['job_type'], j['version'], j['state'],
          (j.get('error') or {}).get('name') or '-', 'yes' if j.get('timed_out') else 'no')" \
    "$lab/store.json" 2>/dev/null
}
# cloud_reports: the reports the cloud recorded: SERIAL EPOCH SEQ TYPE JOB_ID
cloud_reports() {
  dump_store || return 1
  python3 -c "
import json, sys
for r in json.load(open(sys.argv[1])).get('reports', []):
    print(r['serial'], r['epoch'], r['seq'], r['type'], r.get('job_id') or '-')" \
    "$lab/store.json" 2>/dev/null
}
# job_state JOB_ID: its state as the cloud has it ("" when unknown).
job_state() { cloud_jobs | awk -v j="$1" '$1 == j { print $5 }'; }
# The waits below are bounded by wall time, not by a number of polls: on a
# loaded machine one poll (a Python start) can take seconds.
# wait_job JOB_ID REGEX SECONDS: until its state matches.
wait_job() {
  local end=$((SECONDS + $3))
  while ((SECONDS < end)); do
    [[ $(job_state "$1") =~ ^($2)$ ]] && return 0
    sleep 0.2
  done
  return 1
}
# update ARGS...: UpdateSmartAccessGatewayVersion; prints the new jobs' ids.
update() {
  local before out rc
  before=$(cloud_jobs | wc -l)
  out=$(api UpdateSmartAccessGatewayVersion "$@"); rc=$?
  [[ $rc -eq 0 ]] || { echo "UpdateSmartAccessGatewayVersion $*: rc=$rc $out" >&2; return 1; }
  cloud_jobs | tail -n +$((before + 1)) | awk '{ print $1 }'
}
# reports_once: no report (serial, epoch, seq) recorded twice.
reports_once() {
  local dups
  dups=$(cloud_reports | awk '{ print $1, $2, $3 }' | sort | uniq -d)
  [[ -z "$dups" ]] || { echo "reports recorded twice: $dups"; return 1; }
}
# installs_of DIR JOB_ID: how many times the job's install started on the device.
installs_of() { grep -c "job $2: Device \S* -> \S* into slot" "$1.log"; }
# cloud_acked SERIAL: "EPOCH SEQ", the last report of the device the cloud recorded.
cloud_acked() {
  dump_store || return 1
  python3 -c "
import json, sys
for d in json.load(open(sys.argv[1])).get('devices', []):
    if d['serial'] == sys.argv[2]: print(d.get('epoch') or '-', d.get('acked_seq', 0))" \
    "$lab/store.json" "$1" 2>/dev/null
}
# job_spec JOB_ID: the job message's fields as the cloud stored them (JSON).
job_spec() {
  dump_store || return 1
  python3 -c "
import json, sys
for j in json.load(open(sys.argv[1])).get('jobs', []):
    if j['job_id'] == sys.argv[2]:
        print(json.dumps({k: j[k] for k in ('job_id', 'job_type', 'version', 'url', 'size',
                                             'sha256', 'deadline', 'allow_downgrade')}))" \
    "$lab/store.json" "$1" 2>/dev/null
}
# wait_offline SERIAL SECONDS: until the gateway has marked the device offline.
wait_offline() {
  local end=$((SECONDS + $2))
  while ((SECONDS < end)); do
    dump_store && python3 -c "
import json, sys
d = [d for d in json.load(open(sys.argv[1])).get('devices', []) if d['serial'] == sys.argv[2]]
sys.exit(0 if d and not d[0].get('online') else 1)" "$lab/store.json" "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}
