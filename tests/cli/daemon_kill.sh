#!/usr/bin/env bash
# SIGKILL of the real daemon at random instants while DPI and Device jobs run
# and reports are pending (issue 14): KILLS times (default 100) the simulated
# appliance boots, the daemon resumes and takes jobs from its inbox (a new
# one each round), and is killed 0-600 ms later. Every 7th round the new job
# is a Device OS upgrade: it writes slot B or A, asks for the reboot, and the
# next rounds' boots are its trial boot (killed too: health check, commit or,
# after three cut trial boots, the fallback). Then one last boot
# (`run --once`, through as many reboots as the Device job needs) finishes
# everything, and:
#   - the outbox loads: every line a report, sequence numbers strictly
#     increasing (no report duplicated or reordered by a replay);
#   - every job offered has exactly one result report (none lost, none
#     made twice by the start-up catch-up), or none and its reply says it was
#     refused (a Device job offered while another waits for its trial boot);
#   - no job ran twice: each job id started its DPI or Device install at most
#     once (a resume after a cut is not a start);
#   - every request was answered (a reply) and none is left in the inbox.
# Usage: daemon_kill.sh SAG_AGENT SAG_SIM SAG_IMAGE FAKE_DPI_ENGINE [KILLS]
set -uo pipefail
agent="$1"; sim="$2"; image="$3"; engine="$4"; kills="${5:-100}"
tmp=$(mktemp -d); dev="$tmp/dev"; inbox="$dev/state/inbox"
trap 'kill -KILL "$(cat "$dev/run/agent.pid" 2>/dev/null)" 2>/dev/null; [[ -n "${SAG_KEEP:-}" ]] || rm -rf "$tmp"' EXIT
seed=${SAG_KILL_SEED:-$RANDOM}; RANDOM=$seed
echo "seed $seed, $kills kills"
"$image" pki init "$tmp/pki" >/dev/null || exit 1
"$sim" init "$dev" --slot-size 1048576 --model sag-1000 --root-ca "$tmp/pki/root-ca.pem" \
  --dpi-engine "$engine" >/dev/null || exit 1
sed -i 's/level: debug/level: info/' "$dev/agent.yaml"
mkdir -p "$inbox"
jobs=()
for i in $(seq 1 12); do
  v=$(printf '20201117_1_0-0.0.%d' "$i")
  mkdir -p "$tmp/db$i"; echo "$v" >"$tmp/db$i/version"
  for r in $(seq 1 50); do echo "rule $r of $v" >"$tmp/db$i/r$r"; done
  tar --zstd -C "$tmp/db$i" -cf "$tmp/db$i.tar.zst" . || exit 1
  "$image" create --type Dpi --version "$v" --compatible sag-1000 --payload "$tmp/db$i.tar.zst" \
    --key "$tmp/pki/signer.key" --cert "$tmp/pki/signer.pem" --chain "$tmp/pki/signer-chain.pem" \
    --output "$tmp/dpi$i.sagimg" >/dev/null || exit 1
  jobs+=("k$(printf '%02d' "$i")")
done
device_image() {  # N: Device OS 1.0.N, a 256 KiB stand-in root file system
  head -c 262144 /dev/urandom >"$tmp/os$1.img" &&
    "$image" create --type Device --version "1.0.$1" --compatible sag-1000 \
      --payload "$tmp/os$1.img" --key "$tmp/pki/signer.key" --cert "$tmp/pki/signer.pem" \
      --chain "$tmp/pki/signer-chain.pem" --output "$tmp/os$1.sagimg" >/dev/null
}
offer() {  # ID IMAGE [DOWNGRADE]: a request, written as sag-agent install writes it
  printf '{"id":"%s","source":"%s","allow_downgrade":%s}' "$1" "$2" "${3:-false}" >"$inbox/.$1.tmp" &&
    mv "$inbox/.$1.tmp" "$inbox/$1.json"
}
for i in $(seq 1 12); do offer "${jobs[$((i - 1))]}" "$tmp/dpi$i.sagimg"; done

for k in $(seq 1 "$kills"); do
  # A new job every round (so that jobs run while the kills fall: a
  # database again, downgrades allowed); every 10th round an old id is
  # offered again: answered, never rerun.
  id="n$(printf '%03d' "$k")"; jobs+=("$id")
  if (( k % 7 == 0 )); then
    device_image "$k" || exit 1
    offer "$id" "$tmp/os$k.sagimg"
  else
    i=$(( k % 12 + 1 )); offer "$id" "$tmp/dpi$i.sagimg" true
  fi
  if (( k % 10 == 0 )); then
    i=$(( RANDOM % 12 + 1 )); offer "${jobs[$((i - 1))]}" "$tmp/dpi$i.sagimg"
  fi
  rm -f "$dev/run/agent.pid"
  "$sim" boot "$dev" --agent "$agent" --max-boots 1 >>"$tmp/log" 2>&1 &
  simpid=$!
  for _ in $(seq 200); do [[ -s "$dev/run/agent.pid" ]] && break; sleep 0.01; done
  sleep "0.$(printf '%03d' $(( RANDOM % 600 )))"
  kill -KILL "$(cat "$dev/run/agent.pid" 2>/dev/null)" 2>/dev/null
  wait "$simpid"
done

# The last boots: everything finishes. `run --once` resumes, answers the
# inbox and exits when nothing is left; a Device job's reboot is followed
# (its trial boot commits or falls back), then the simulator stops.
rm -f "$dev/run/agent.pid" "$dev/run/status.json"
"$sim" boot "$dev" --agent "$agent" --max-boots 40 -- run --once --config "$dev/agent.yaml" \
  >>"$tmp/log" 2>&1 &
simpid=$!
for _ in $(seq 1800); do kill -0 "$simpid" 2>/dev/null || break; sleep 0.1; done
if kill -KILL "$simpid" 2>/dev/null; then
  kill -KILL "$(cat "$dev/run/agent.pid" 2>/dev/null)" 2>/dev/null
  echo "FAIL: the last boots did not finish within 180 s"; tail -30 "$tmp/log"; exit 1
fi
wait "$simpid"

python3 - "$dev/state" "$tmp/log" "${jobs[@]}" <<'PY'
import json, os, re, sys
state, log, jobs = sys.argv[1], sys.argv[2], sys.argv[3:]
fail = 0
def bad(msg):
    global fail
    print("FAIL:", msg); fail = 1
prev, results, kinds = 0, {}, {}
for n, line in enumerate(open(os.path.join(state, "outbox.log")), 1):
    r = json.loads(line)
    if r["seq"] <= prev: bad(f"outbox line {n}: seq {r['seq']} after {prev}")
    prev = r["seq"]
    kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    if r["kind"] == "result": results.setdefault(r["job"], []).append(r["body"].get("phase"))
starts, device = {}, set()
for line in open(log, errors="replace"):
    m = (re.search(r"dpi job (\S+): (?:Checking|Verifying) \(version", line) or
         re.search(r"job (\S+): Device \S* -> \S+ into slot", line))
    if m: starts[m.group(1)] = starts.get(m.group(1), 0) + 1
    if m and "Device" in line: device.add(m.group(1))
refused = 0
for j in jobs:
    reply_path = os.path.join(state, "inbox", "replies", j + ".json")
    reply = json.load(open(reply_path)) if os.path.exists(reply_path) else None
    if reply is None: bad(f"job {j}: no reply")
    n = len(results.get(j, []))
    if n == 0 and reply is not None and reply.get("state") == "Refused" and j not in starts:
        refused += 1
    elif n != 1: bad(f"job {j}: {n} result reports {results.get(j)}, reply {reply}")
    if starts.get(j, 0) > 1: bad(f"job {j}: its install started {starts[j]} times")
outcomes, dev_outcomes = {}, {}
for j in jobs:
    for p in results.get(j, []):
        o = dev_outcomes if j in device else outcomes
        o[p] = o.get(p, 0) + 1
print(f"outbox: {prev} reports {kinds}; results DPI {outcomes} Device {dev_outcomes}; installs started {sum(starts.values())} "
      f"({len(device)} Device) for {len(jobs)} jobs, {refused} refused")
if not device: bad("no Device install started: the test did not test Device jobs")
sys.exit(fail)
PY
rc=$?
kills_seen=$(grep -c 'killed by signal 9\|signal 9\|SIGKILL' "$tmp/log" || true)
echo "sim log: $kills_seen kill lines"
[[ $rc -eq 0 ]] && echo "ok: $kills SIGKILLs: no report lost, duplicated or reordered; no job run twice" || { tail -30 "$tmp/log"; }
exit $rc
