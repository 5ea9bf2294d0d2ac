#!/usr/bin/env bash
# SIGKILL of the real daemon at random instants while DPI jobs run and
# reports are pending (issue 14): KILLS times (default 100) the simulated
# appliance boots, the daemon resumes and takes jobs from its inbox (a new
# one each round), and is killed 0-600 ms later. Then one last boot finishes everything, and:
#   - the outbox loads: every line a report, sequence numbers strictly
#     increasing (no report duplicated or reordered by a replay);
#   - every job offered has exactly one result report (none lost, none
#     made twice by the start-up catch-up);
#   - no job ran twice: each job id started its DPI install at most once;
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
offer() {  # ID IMAGE [DOWNGRADE]: a request, written as sag-agent install writes it
  printf '{"id":"%s","source":"%s","allow_downgrade":%s}' "$1" "$2" "${3:-false}" >"$inbox/.$1.tmp" &&
    mv "$inbox/.$1.tmp" "$inbox/$1.json"
}
for i in $(seq 1 12); do offer "${jobs[$((i - 1))]}" "$tmp/dpi$i.sagimg"; done

for k in $(seq 1 "$kills"); do
  # A new job every round (so that jobs run while the kills fall: a
  # database again, downgrades allowed); every 10th round an old id is
  # offered again: answered, never rerun.
  i=$(( k % 12 + 1 )); id="n$(printf '%03d' "$k")"; jobs+=("$id")
  offer "$id" "$tmp/dpi$i.sagimg" true
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

# The last boot: everything finishes. The killed daemon's pid file and
# status.json ("idle") must not be taken for this daemon's.
rm -f "$dev/run/agent.pid" "$dev/run/status.json"
"$sim" boot "$dev" --agent "$agent" --max-boots 1 >>"$tmp/log" 2>&1 &
simpid=$!
for _ in $(seq 600); do [[ -s "$dev/run/agent.pid" ]] && break; sleep 0.05; done
done_all() {
  # (find, not a glob: the daemon removes requests while this looks)
  [[ -z "$(find "$inbox" -maxdepth 1 -name '*.json' -print -quit)" ]] &&
    grep -q '"state": "idle"' "$dev/run/status.json" 2>/dev/null
}
for _ in $(seq 1800); do done_all && break; sleep 0.1; done
kill -TERM "$(cat "$dev/run/agent.pid")"
for _ in $(seq 600); do kill -0 "$simpid" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$simpid" 2>/dev/null && { echo "FAIL: the simulator did not stop within 60 s of SIGTERM"; tail -30 "$tmp/log"; exit 1; }
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
starts = {}
for line in open(log, errors="replace"):
    m = re.search(r"dpi job (\S+): (?:Checking|Verifying) \(version", line)
    if m: starts[m.group(1)] = starts.get(m.group(1), 0) + 1
for j in jobs:
    if len(results.get(j, [])) != 1: bad(f"job {j}: {len(results.get(j, []))} result reports {results.get(j)}")
    if starts.get(j, 0) > 1: bad(f"job {j}: its DPI install started {starts[j]} times")
    if not os.path.exists(os.path.join(state, "inbox", "replies", j + ".json")): bad(f"job {j}: no reply")
outcomes = {}
for j in jobs:
    for p in results.get(j, []): outcomes[p] = outcomes.get(p, 0) + 1
print(f"outbox: {prev} reports {kinds}; results {outcomes}; installs started {sum(starts.values())} for {len(jobs)} jobs")
sys.exit(fail)
PY
rc=$?
kills_seen=$(grep -c 'killed by signal 9\|signal 9\|SIGKILL' "$tmp/log" || true)
echo "sim log: $kills_seen kill lines"
[[ $rc -eq 0 ]] && echo "ok: $kills SIGKILLs: no report lost, duplicated or reordered; no job run twice" || { tail -30 "$tmp/log"; }
exit $rc
