#!/usr/bin/env bash
# Crash consistency end to end (issue 15): sag-cloud and a simulated appliance
# running the real sag-agent, as in e2e_api.sh, while both sides are killed
# with SIGKILL at random instants in the middle of upgrade jobs:
#   - sag-cloud killed 5 times across 3 jobs (after the API call, while the
#     device downloads and writes, while it waits for its trial boot) and
#     restarted with the same configuration (lab init fixed its ports);
#   - sag-agent killed 4 times (during a Device job's download/write, during
#     its trial boot, during a DPI job) and the appliance booted again.
# Then, the agent powered off, the device's identity sends the last recorded
# report again over its channel (an ack lost; the real agent resumes from
# hello.ack and never resends on its own). At the end: every job reached a
# final state in the cloud (Committed or RolledBack; the one Failed allowed
# is a DPI job killed mid-install, E614 DpiInterrupted by design, sent again
# as a new job), the cloud recorded each report (epoch, seq) at most once and in
# increasing seq order per epoch, the device's outbox is fully acknowledged,
# the cloud's versions are what the device runs, and no job's install
# started twice on the device (a resume after a cut is not a start).
# SAG_KILL_SEED=N replays the random instants.
# Usage: e2e_kill.sh SAG_CLOUD SAG_AGENT SAG_SIM SAG_IMAGE FAKE_DPI_ENGINE
set -uo pipefail
cloud="$1"; agent="$2"; sim="$3"; engine="$5"
# shellcheck disable=SC2034  # used by e2e_lib.sh's sign
image="$4"
seed="${SAG_KILL_SEED:-$(( $(date +%s) % 100000 ))}"; RANDOM=$seed
tmp=$(mktemp -d); lab="$tmp/lab"; dev="$tmp/dev"; cloudpid=; simpid=
cloud_kills=0; agent_kills=0
# shellcheck disable=SC2317  # called by the EXIT trap
stop_all() {
  if [[ -n "$simpid" ]]; then
    kill -KILL "$(cat "$dev/run/agent.pid" 2>/dev/null)" 2>/dev/null
    kill -KILL "$simpid" 2>/dev/null
  fi
  [[ -n "$cloudpid" ]] && kill -KILL "$cloudpid" 2>/dev/null
}
trap 'stop_all; [[ -n "${SAG_KEEP:-}" ]] && echo "kept $tmp" || rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }
die() {
  echo "FAIL: $* (seed $seed)"; echo "--- cloud log"; tail -30 "$tmp/cloud.log"
  echo "--- device log"; tail -40 "$tmp/dev.log"; exit 1
}
ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }   # sleep MS
rnd() { echo $(($1 + RANDOM % ($2 - $1 + 1))); }                       # rnd LO HI
serial=sag000e2e0002; id=sag-e2e0000000000002

# shellcheck source=tests/cli/e2e_lib.sh
source "$(dirname "$0")/e2e_lib.sh"
lab_init
for v in 1.0.0 1.0.1 1.0.2; do head -c 3000000 /dev/urandom >"$tmp/rootfs-$v.img"; done
for v in 1.0.0 1.0.1 1.0.2; do sign Device "$v" "$tmp/rootfs-$v.img"; done
dpi_v=20201201_1_0-0.0.2
mkdir -p "$tmp/dpi"; echo "$dpi_v" >"$tmp/dpi/version"
for i in $(seq 600); do head -c 2000 /dev/urandom | base64 >"$tmp/dpi/r$i"; done
tar --zstd -C "$tmp/dpi" -cf "$tmp/dpi.tar.zst" . && sign Dpi "$dpi_v" "$tmp/dpi.tar.zst"

cloud_start() {
  local before; before=$(grep -c 'API on http' "$tmp/cloud.log" 2>/dev/null)
  "$cloud" serve --config "$lab/cloud.yaml" >>"$tmp/cloud.log" 2>&1 &
  cloudpid=$!
  for _ in $(seq 300); do
    (($(grep -c 'API on http' "$tmp/cloud.log") > ${before:-0})) && return 0
    kill -0 "$cloudpid" 2>/dev/null || break
    sleep 0.05
  done
  die "sag-cloud serve did not start"
}
cloud_kill() {  # WHY
  kill -KILL "$cloudpid"; wait "$cloudpid" 2>/dev/null
  cloud_kills=$((cloud_kills + 1))
  echo "kill: sag-cloud #$cloud_kills ($1); device: $(grep -E '^<.>(dpi )?job ' "$tmp/dev.log" | tail -1 | cut -c1-150)"
  echo "=== test: sag-cloud killed ($1)" >>"$tmp/cloud.log"
  cloud_start
}
: >"$tmp/cloud.log"
cloud_start
gw=$(sed -n 's#.*device gateway on \(wss://[^;]*\);.*#\1#p' "$tmp/cloud.log" | head -1)
# shellcheck disable=SC1091
source "$lab/credentials.env"

"$sim" init "$dev" --slot-size $((4 << 20)) --slot-a "$tmp/rootfs-1.0.0.img" --version 1.0.0 \
  --serial "$serial" --smartag-id "$id" --endpoint "$gw" --root-ca "$lab/pki/root-ca.pem" \
  --dpi-engine "$engine" >/dev/null || die "sag-sim init"
cp "$lab/pki/device-$serial-chain.pem" "$dev/pki/device.pem"
cp "$lab/pki/device-$serial.key" "$dev/pki/device.key"
sed -i 's/level: debug/level: info/; s/heartbeat_s: 5/heartbeat_s: 2/; s/max_backoff_s: 10/max_backoff_s: 1/' "$dev/agent.yaml"
# Downloads of about 3 s (1 MB/s), a checkpoint every 512 KiB: a kill lands
# mid-download and the resumed install has something to resume from.
printf 'download:\n  bandwidth_limit: 1000000\n  checkpoint_bytes: 524288\n' >>"$dev/agent.yaml"
# A trial boot of about 1.5 s that needs the cloud: a kill lands in it, and
# the cloud's restarts are waited for.
sed -i "s/require_cloud: false/require_cloud: true/; s#^  checks:#  checks:\n    - name: settle\n      command: ['/bin/sleep', '1.5']\n      timeout_s: 10#" "$dev/agent.yaml"
power_on() {
  "$sim" boot "$dev" --agent "$agent" --max-boots 30 >>"$tmp/dev.log" 2>&1 &
  simpid=$!
}
# SIGKILL of the running agent; the simulator stops when its agent dies
# without asking for a reboot, and the appliance is booted again.
agent_kill() {  # WHY
  local pid killed=
  for _ in $(seq 50); do  # between two boots (a reboot) there is no agent
    pid=$(cat "$dev/run/agent.pid" 2>/dev/null)
    [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null && { killed=1; break; }
    sleep 0.05
  done
  [[ -n "$killed" ]] || { echo "kill: no agent ran ($1): not counted"; return; }
  agent_kills=$((agent_kills + 1))
  echo "kill: sag-agent #$agent_kills ($1); last: $(grep -E '^<.>(dpi )?job ' "$tmp/dev.log" | tail -1 | cut -c1-150)"
  echo "=== test: sag-agent killed ($1)" >>"$tmp/dev.log"
  for _ in $(seq 100); do kill -0 "$simpid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$simpid" 2>/dev/null; then
    echo "note: the simulator went on booting after the kill"  # it had asked for a reboot
  else
    wait "$simpid" 2>/dev/null; power_on
  fi
}
: >"$tmp/dev.log"
power_on

api() { "$cloud" call "$@" RegionId=cn-shanghai SmartAGId="$id"; }
wait_api() {  # EXPR [SECONDS]: on `d` (the first device) and `a` (the answer)
  local expr="$1" limit="${2:-60}"
  for _ in $(seq $((limit * 4))); do
    if api DescribeSmartAccessGatewayAttribute 2>/dev/null | python3 -c "
import json, sys
a = json.load(sys.stdin); d = a['Devices']['Device'][0]
sys.exit(0 if ($expr) else 1)" 2>/dev/null; then return 0; fi
    sleep 0.25
  done
  return 1
}
# Waits until the device log holds more than N lines matching a pattern.
wait_log() {  # PATTERN N SECONDS
  for _ in $(seq $(($3 * 20))); do
    (($(grep -c -- "$1" "$tmp/dev.log") > $2)) && return 0
    sleep 0.05
  done
  return 1
}
newest_job() {  # JOB_ID STATE of the newest job, as the cloud stored it
  dump_store
  python3 -c "
import json, sys
jobs = json.load(open(sys.argv[1])).get('jobs', [])
print(jobs[-1].get('job_id', '') if jobs else '', jobs[-1].get('state', '') if jobs else '')" \
    "$lab/store.json" 2>/dev/null
}
wait_final() {  # JOB_ID SECONDS
  for _ in $(seq $(($2 * 4))); do
    dump_store
    python3 -c "
import json, sys
j = [j for j in json.load(open(sys.argv[1])).get('jobs', []) if j.get('job_id') == sys.argv[2]]
sys.exit(0 if j and j[0].get('state') in ('Committed', 'RolledBack', 'Failed') else 1)" \
      "$lab/store.json" "$1" 2>/dev/null && return 0
    sleep 0.25
  done
  return 1
}
update() {  # ARGS...: the job id
  local out rc
  for _ in $(seq 20); do
    out=$(api UpdateSmartAccessGatewayVersion "$@"); rc=$?
    [[ $rc -eq 0 ]] && break
    sleep 0.5  # the appliance may still be reconnecting after a restart
  done
  [[ $rc -eq 0 ]] || { echo "UpdateSmartAccessGatewayVersion $*: rc=$rc $out" >&2; return 1; }
  read -r job _ < <(newest_job); echo "job $job: $*" >&2
  echo "$job"
}
wait_api 'a["Status"] == "Active" and d["SoftwareVersion"] == "1.0.0"' 60 \
  || die "the appliance did not come online with 1.0.0"

# Job 1: Device 1.0.0 -> 1.0.1. The cloud dies right after the call and
# while the device waits for its trial boot; the agent dies mid-install.
starts=$(grep -c 'into slot' "$tmp/dev.log")
trials=$(grep -c 'resuming in state Rebooting' "$tmp/dev.log")
j1=$(update VersionCode=1.0.1) || die "the update call failed"
ms "$(rnd 50 1500)"; cloud_kill "job 1 offered or downloading"
wait_log 'into slot' "$starts" 60 || die "job $j1 never started"
ms "$(rnd 0 2500)"; agent_kill "job 1 downloading/writing"
wait_log 'resuming in state Rebooting' "$trials" 90 || die "job $j1: no trial boot"
ms "$(rnd 0 1000)"; cloud_kill "job 1 trial boot"
wait_final "$j1" 120 || die "job $j1 never final"

# Job 2: the DPI database; the agent dies mid-install, the cloud after it.
# Killed before the swap, the job fails with E614 DpiInterrupted by design
# (docs/dpi.md, resume rules: the payload stream died with the process, the
# cloud sends the job again); after the swap started it is rolled back, also
# E614. Either way the device keeps no new database: the job is sent again
# as a new job, which must commit.
checks=$(grep -c 'dpi job .*: Checking' "$tmp/dev.log")
j2=$(update VersionCode="$dpi_v" VersionType=Dpi) || die "the update call failed"
wait_log 'dpi job .*: Checking' "$checks" 60 || die "job $j2 never started"
ms "$(rnd 0 1500)"; agent_kill "job 2 DPI install"
ms "$(rnd 0 1500)"; cloud_kill "job 2 after the agent's restart"
wait_final "$j2" 120 || die "job $j2 never final"
dpi_jobs=("$j2")
dump_store
if python3 -c "
import json, sys
j = [j for j in json.load(open(sys.argv[1]))['jobs'] if j['job_id'] == sys.argv[2]][0]
sys.exit(0 if j['state'] in ('Failed', 'RolledBack')
         and (j.get('error') or {}).get('name') == 'DpiInterrupted' else 1)" \
  "$lab/store.json" "$j2"; then
  j2b=$(update VersionCode="$dpi_v" VersionType=Dpi) || die "the update call failed"
  wait_final "$j2b" 120 || die "job $j2b never final"
  dpi_jobs+=("$j2b")
fi

# Job 3: Device 1.0.1 -> 1.0.2. The cloud dies twice, the agent during the
# install and during the trial boot.
starts=$(grep -c 'into slot' "$tmp/dev.log")
trials=$(grep -c 'resuming in state Rebooting' "$tmp/dev.log")
j3=$(update VersionCode=1.0.2) || die "the update call failed"
ms "$(rnd 0 1000)"; cloud_kill "job 3 offered or downloading"
wait_log 'into slot' "$starts" 60 || die "job $j3 never started"
ms "$(rnd 0 2500)"; agent_kill "job 3 downloading/writing"
# The trial boot: after the reboot the agent asked for, or the power-on
# after a kill that came once the trial was set.
wait_log 'resuming in state Rebooting' "$trials" 90 || die "job $j3: no trial boot"
ms "$(rnd 0 400)"; agent_kill "job 3 trial boot"
ms "$(rnd 0 1500)"; cloud_kill "job 3 after the trial boot's cut"
wait_final "$j3" 150 || die "job $j3 never final"

# A report sent again (its ack lost, as when the cloud dies between
# recording and acking; docs/protocol.md: at least once): with the agent
# powered off, the device's identity replays the last recorded report over
# its own channel. The cloud must ack it and not record it again.
kill -TERM "$(cat "$dev/run/agent.pid")"
for _ in $(seq 100); do kill -0 "$simpid" 2>/dev/null || break; sleep 0.1; done
wait "$simpid" 2>/dev/null; simpid=
replays=0
if python3 - "$gw" "$dev" "$lab/pki/root-ca.pem" <<'REPLAY'; then replays=1; else bad "the replay of a recorded report"; fi
# A report sent again after its ack was lost (docs/protocol.md: at least
# once): the device's identity over its own mutual-TLS channel, a hello, then
# the last report the cloud recorded, once more. The cloud must answer with
# an ack and record nothing. Usage: GW_URL DEV_DIR ROOT_CA
import base64, json, os, socket, ssl, struct, sys, time, urllib.parse

url, dev, root_ca = sys.argv[1:4]
u = urllib.parse.urlparse(url)
ctx = ssl.create_default_context(cafile=root_ca)
ctx.check_hostname = False
ctx.load_cert_chain(os.path.join(dev, "pki", "device.pem"), os.path.join(dev, "pki", "device.key"))
sock = ctx.wrap_socket(socket.create_connection((u.hostname, u.port), timeout=10))
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
              f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf:
    chunk = sock.recv(4096)
    if not chunk: sys.exit("replay: the gateway closed during the upgrade")
    buf += chunk
head, buf = buf.split(b"\r\n\r\n", 1)
if b" 101 " not in head.split(b"\r\n")[0]: sys.exit("replay: upgrade refused: " + head.decode(errors="replace"))

def send(msg):
    data = json.dumps(msg).encode(); mask = os.urandom(4)
    n = len(data)
    hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    sock.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

def recv():
    global buf
    def need(k):
        global buf
        while len(buf) < k:
            chunk = sock.recv(65536)
            if not chunk: sys.exit("replay: the gateway closed the connection")
            buf += chunk
    need(2); op, n = buf[0] & 0x0F, buf[1] & 0x7F; off = 2
    if n == 126: need(4); n = struct.unpack(">H", buf[2:4])[0]; off = 4
    elif n == 127: need(10); n = struct.unpack(">Q", buf[2:10])[0]; off = 10
    need(off + n); payload, buf = buf[off:off + n], buf[off + n:]
    return op, payload

status = json.load(open(os.path.join(dev, "run", "status.json")))
ack = json.load(open(os.path.join(dev, "state", "outbox.ack")))
versions = {"device": status.get("device_version") or "", "dpi": status.get("dpi_version") or ""}
boot = {"booted_slot": status.get("booted_slot", "A"), "slots": {}}
send({"v": 1, "type": "hello", "id": "1",
      "device": {"smartag_id": status["smartag_id"], "serial": status["serial_number"],
                 "model": status["model"]},
      "agent_version": status["agent_version"], "versions": versions, "boot": boot,
      "agent_state": "idle", "jobs": [], "outbox": {"epoch": ack["epoch"], "last_seq": ack["acked"]}})
seq = None
deadline = time.time() + 10
while time.time() < deadline:
    op, payload = recv()
    if op == 8: sys.exit("replay: closed by the gateway: " + payload[2:].decode(errors="replace"))
    if op != 1: continue
    m = json.loads(payload)
    if m["type"] == "hello.ack" and seq is None:
        seq = m["acked"]["seq"]
        if seq == 0 or m["acked"]["epoch"] != ack["epoch"]:
            sys.exit(f"replay: the cloud knows no report of this epoch: {m['acked']}")
        send({"v": 1, "type": "state", "id": "2", "seq": seq, "versions": versions, "boot": boot,
              "agent_state": "idle", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    elif m["type"] == "ack" and seq is not None:
        print(f"replay: report #{seq} sent again, acked #{m.get('seq')}")
        sys.exit(0)
    elif m["type"] == "error":
        sys.exit(f"replay: error from the gateway: {m}")
sys.exit("replay: no ack within 10 s")
REPLAY
power_on

# The last reconnect: the outbox drained and acknowledged.
for _ in $(seq 120); do
  dump_store
  python3 - "$dev/state" "$lab/store.json" "$serial" <<'PY' 2>/dev/null && break
import json, os, sys
state, store, serial = sys.argv[1:]
lines = [json.loads(l) for l in open(os.path.join(state, "outbox.log")) if l.strip()]
ack = json.load(open(os.path.join(state, "outbox.ack")))
d = [d for d in json.load(open(store)).get("devices", []) if d.get("serial") == serial][0]
last = lines[-1]["seq"] if lines else ack["acked"]
sys.exit(0 if ack["acked"] == last and d.get("acked_seq") == last else 1)
PY
  sleep 0.25
done
wait_api 'a["Status"] == "Active"' 30 || bad "the appliance is not online at the end"
api DescribeSmartAccessGatewayAttribute >"$tmp/attr.json" 2>/dev/null || bad "DescribeSmartAccessGatewayAttribute"

dump_store || bad "sag-cloud store dump failed"
python3 - "$lab/store.json" "$dev" "$tmp/dev.log" "$tmp/attr.json" "$serial" \
  "$cloud_kills" "$agent_kills" "$replays" "$seed" "$j2" "$j1" "${dpi_jobs[@]}" "$j3" <<'PY' || fail=1
import collections, json, os, re, sys
store_path, dev, log_path, attr_path, serial, ck, ak, rp, seed, killed_dpi = sys.argv[1:11]
job_ids = sys.argv[11:]
store = json.load(open(store_path))
errors = []

# 1. Every job final; Committed or RolledBack. The one Failed allowed: the
# DPI job the agent was killed in, with E614 DpiInterrupted (docs/dpi.md).
jobs = {j["job_id"]: j for j in store.get("jobs", [])}
outcomes = collections.Counter()
for jid in job_ids:
    j = jobs.get(jid)
    if j is None:
        errors.append(f"job {jid} is not in the store"); continue
    state = j.get("state")
    outcomes[state] += 1
    legit = (jid == killed_dpi and state == "Failed"
             and (j.get("error") or {}).get("name") == "DpiInterrupted")
    if state not in ("Committed", "RolledBack") and not legit:
        errors.append(f"job {jid} ({j.get('job_type')} {j.get('version')}) is {state}: "
                      f"{json.dumps(j.get('error'))}")

# 2. Each report (epoch, seq) recorded at most once, seq increasing per epoch.
reports = [r for r in store.get("reports", []) if r.get("serial") == serial]
seen, last = set(), {}
for r in reports:
    key = (r["epoch"], r["seq"])
    if key in seen:
        errors.append(f"report {key} ({r['type']} {r.get('job_id')}) recorded twice")
    seen.add(key)
    if r["seq"] <= last.get(r["epoch"], 0):
        errors.append(f"report {key} recorded after #{last[r['epoch']]} of its epoch")
    last[r["epoch"]] = max(last.get(r["epoch"], 0), r["seq"])

# 3. The outbox fully acknowledged, the cloud at the same position.
lines = [json.loads(l) for l in open(os.path.join(dev, "state", "outbox.log")) if l.strip()]
ack = json.load(open(os.path.join(dev, "state", "outbox.ack")))
dev_rec = [d for d in store.get("devices", []) if d.get("serial") == serial][0]
last_seq = lines[-1]["seq"] if lines else ack["acked"]
if ack["acked"] != last_seq:
    errors.append(f"outbox: acked {ack['acked']}, last seq {last_seq}")
if dev_rec.get("acked_seq") != last_seq or dev_rec.get("epoch") != ack.get("epoch"):
    errors.append(f"cloud at {dev_rec.get('epoch')}#{dev_rec.get('acked_seq')}, "
                  f"device at {ack.get('epoch')}#{last_seq}")

# 4. The cloud's versions are what the device runs.
status = json.load(open(os.path.join(dev, "run", "status.json")))
attr = json.load(open(attr_path))["Devices"]["Device"][0]
running = status.get("device_version")
dpi = status.get("dpi_version")
if attr.get("SoftwareVersion") != running:
    errors.append(f"the API shows {attr.get('SoftwareVersion')}, the device runs {running}")
if (attr.get("DpiSignatureDbVersion") or None) != dpi or dpi is None:
    errors.append(f"the API shows DPI {attr.get('DpiSignatureDbVersion')}, the device has {dpi}")

# 5. No install started twice on the device.
log = open(log_path, errors="replace").read()
for jid in job_ids:
    n = len(re.findall(rf"job {re.escape(jid)}: Device \S+ -> \S+ into slot", log)) + \
        len(re.findall(rf"dpi job {re.escape(jid)}: Checking \(version", log))
    if n != 1:
        errors.append(f"job {jid}: the install started {n} times on the device")

for e in errors:
    print("FAIL:", e)
print(f"e2e.kill: seed {seed}; kills: sag-cloud {ck}, sag-agent {ak}; replayed reports {rp}; "
      f"reports recorded "
      f"{len(reports)} over {len(last)} epoch(s); jobs {len(job_ids)}: " +
      ", ".join(f"{jobs[j].get('job_type')} {jobs[j].get('version')} {jobs[j].get('state')}"
                for j in job_ids if j in jobs) +
      f"; device runs {running}, DPI {dpi}")
sys.exit(1 if errors else 0)
PY
((cloud_kills >= 5 && agent_kills >= 4)) || bad "fewer kills than planned: cloud $cloud_kills, agent $agent_kills"
((fail == 0)) && echo "ok: jobs survive SIGKILL of sag-cloud and sag-agent (seed $seed)"
((fail == 0)) || echo "seed $seed; SAG_KEEP=1 keeps the files"
exit $fail
