#!/usr/bin/env bash
# The loop guard (docs/agent.md): a Device job whose health check kills the
# agent on its trial boot (as a broken new OS could) is not resumed forever.
# The agent is started again and again in the same boot, as systemd's
# Restart= would; each start enters HealthChecking once more. The start after
# the third entry ends the job with E414 JobCrashLoop instead: it rolls back
# (B marked bad, a reboot requested), and in the next boot the old slot runs
# again and the job's result (rolled_back, 414) is recorded and reported.
# Usage: daemon_crash_loop.sh SAG_AGENT SAG_SIM SAG_IMAGE
set -uo pipefail
agent="$1"; sim="$2"; image="$3"
tmp=$(mktemp -d); dev="$tmp/dev"; cfg="$dev/agent.yaml"
trap '[[ -n "${SAG_KEEP:-}" ]] || rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }
ok() { echo "ok: $*"; }
"$image" pki init "$tmp/pki" >/dev/null || exit 1
"$sim" init "$dev" --slot-size 1048576 --model sag-1000 --root-ca "$tmp/pki/root-ca.pem" >/dev/null || exit 1
head -c 300000 /dev/urandom >"$tmp/os.bin"
"$image" create --type Device --version 9.0.0 --compatible sag-1000 --payload "$tmp/os.bin" \
  --key "$tmp/pki/signer.key" --cert "$tmp/pki/signer.pem" --chain "$tmp/pki/signer-chain.pem" \
  --output "$tmp/os-9.sagimg" >/dev/null || exit 1
# The health check (the one sag-sim configured) counts its runs and kills
# the agent that runs it.
cat >"$dev/health-check" <<SH
#!/bin/sh
echo run >>"$tmp/health-runs"
kill -KILL \$PPID
SH
runs() { [[ -f "$tmp/health-runs" ]] && wc -l <"$tmp/health-runs" || echo 0; }
job() {  # FIELD of job "loop" in jobs.json (error.code for its code)
  python3 -c "import json,sys; j=[x for x in json.load(open(sys.argv[1]))['jobs'] if x['id']=='loop'][0]; f=sys.argv[2].split('.'); v=j[f[0]]; print(v[f[1]] if len(f)>1 and v else v)" "$dev/state/jobs.json" "$1"
}

# Power-on: slot A runs (the agent finds nothing to do).
"$sim" boot "$dev" --agent "$agent" --max-boots 1 -- run --once --config "$cfg" >>"$tmp/log" 2>&1 ||
  { echo "first boot failed"; cat "$tmp/log"; exit 1; }
# The job, installed without the daemon and without the reboot: slot B holds
# 9.0.0 and is set for its trial.
out=$("$agent" install "$tmp/os-9.sagimg" --id loop --no-reboot --config "$cfg" 2>&1) ||
  { echo "install: $out"; exit 1; }
# Boot 1: the trial boot of slot B; the agent resumes the job, and its health
# check kills it.
"$sim" boot "$dev" --agent "$agent" --max-boots 1 -- run --once --config "$cfg" >>"$tmp/log" 2>&1
[[ $(runs) -eq 1 ]] || bad "the trial boot ran the health check $(runs) times, not once"
# Two more starts in the same boot: killed again each time.
for n in 2 3; do
  timeout 60 "$agent" run --once --config "$cfg" >>"$tmp/log" 2>&1
  [[ $(runs) -eq $n ]] || bad "start $n: the health check ran $(runs) times"
done
attempts=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['job'], d['step'], d['attempts'])" "$dev/state/step-attempts.json")
[[ "$attempts" == "loop HealthChecking 3" ]] && ok "step-attempts.json after three crashes: $attempts" ||
  bad "step-attempts.json: $attempts"
# The fourth start: the guard ends the job instead of running the step again.
timeout 60 "$agent" run --once --config "$cfg" >>"$tmp/log" 2>&1
if [[ $(runs) -eq 3 ]] && grep -q 'E414 JobCrashLoop' "$tmp/log" && [[ -f "$dev/run/reboot-requested" ]] &&
   [[ "$(job state)" == "RollingBack" && "$(job error.code)" == "414" ]]; then
  ok "the third restart ends the job with E414 JobCrashLoop: rolling back, reboot requested"
else
  bad "fourth start: runs=$(runs) state=$(job state) code=$(job error.code)"; tail -20 "$tmp/log"
fi
# The next boot: the old slot runs again; the result is recorded and reported.
"$sim" boot "$dev" --agent "$agent" --max-boots 1 -- run --once --config "$cfg" >>"$tmp/log" 2>&1
result=$(python3 -c "
import json, sys
rs = [r for r in map(json.loads, open(sys.argv[1])) if r['job'] == 'loop' and r['kind'] == 'result']
print(len(rs), rs[-1]['body']['phase'], rs[-1]['body']['error']['code'] if rs else '')" "$dev/state/outbox.log")
if [[ "$(job phase)" == "rolled_back" && "$(job error.code)" == "414" && "$result" == "1 rolled_back 414" &&
      $(runs) -eq 3 ]] && grep -q 'rolled back to slot A' "$tmp/log"; then
  ok "next boot: slot A runs again; job loop rolled_back with 414, one result report ($result)"
else
  bad "after the rollback boot: phase=$(job phase) code=$(job error.code) result='$result' runs=$(runs)"
  tail -20 "$tmp/log"
fi
exit $fail
