#!/usr/bin/env bash
# Faults on the way of one UpdateSmartAccessGatewayVersion job, end to end
# (issue 19): sag-cloud and a simulated appliance running the real sag-agent
# on loopback, as in e2e_api.sh. One fault per run, chosen by MODE:
#   netcut   the repository connection is reset after 400 kB and the next one
#            stalls after 900 kB in all (a loopback TCP proxy between the
#            agent and the repository): the download resumes where it was
#            (fewer bytes than a restart would take), the job commits;
#   powercut the appliance's storage on the simulator's power-loss medium
#            (sag-powerloss: unsynced data lost at a cut): power cut while
#            the image is written, and again during the trial boot; after
#            power returns the job commits and the API shows the version;
#   dupjob   the same job offered twice: the API call repeated while the job
#            runs (IncorrectStatus, no second job), and, once it committed,
#            the job message sent again twice by a stand-in for the gateway:
#            answered as known with its outcome, never installed again;
#   silent   the agent stopped (SIGSTOP) mid-download with its channel open:
#            the gateway ends the job TimedOut after gateway.job_silence_s
#            and the API shows the box Offline; resumed (SIGCONT), the late
#            result still ends the job.
# Each: every report recorded once, the install started once.
# Usage: e2e_faults.sh MODE SAG_CLOUD SAG_AGENT SAG_SIM SAG_IMAGE FAKE_DPI_ENGINE [SAG_POWERLOSS]
set -uo pipefail
mode="$1"; cloud="$2"; agent="$3"; sim="$4"; image="$5"; engine="$6"; powerloss="${7:-}"
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); lab="$tmp/lab"; dev="$tmp/dev"; cloudpid=; helperpid=
# shellcheck source=tests/cli/e2e_lib.sh
source "$here/e2e_lib.sh"
cleanup() {
  devices_stop
  [[ -n "$cloudpid" ]] && kill -KILL "$cloudpid" 2>/dev/null
  [[ -n "$helperpid" ]] && kill -KILL "$helperpid" 2>/dev/null
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
serial=sag000e2ef0001; id=sag-e2ef000000000001
case "$mode" in netcut|powercut|dupjob|silent) ;; *) echo "unknown mode $mode"; exit 2 ;; esac
[[ "$mode" != powercut || -x "$powerloss" ]] || { echo "powercut needs SAG_POWERLOSS"; exit 2; }

lab_init
size=1500000; [[ $mode == netcut ]] || size=3000000  # 3 MB: 3 chunks of 1 MiB
for v in 1.0.0 1.0.1; do head -c $size /dev/urandom >"$tmp/rootfs-$v.img"; done
for v in 1.0.0 1.0.1; do sign Device "$v" "$tmp/rootfs-$v.img"; done
img_size=$(stat -c %s "$lab/images/Device-1.0.1.sagimg")

if [[ $mode == netcut ]]; then
  repo_port=$(sed -n '/^repository:/,$ s/^  listen: 127.0.0.1:\([0-9]*\)$/\1/p' "$lab/cloud.yaml")
  python3 "$here/e2e_proxy.py" "$tmp/proxy.port" "$repo_port" "$tmp/proxy.json" \
    reset@400000 stall@900000 &
  helperpid=$!
  for _ in $(seq 100); do [[ -s "$tmp/proxy.port" ]] && break; sleep 0.05; done
  [[ -s "$tmp/proxy.port" ]] || die "the proxy did not start"
  echo "  base_url: https://127.0.0.1:$(cat "$tmp/proxy.port")" >>"$lab/cloud.yaml"
fi
[[ $mode == silent ]] && sed -i 's/^  heartbeat_s: 2$/  heartbeat_s: 2\n  job_silence_s: 10/' "$lab/cloud.yaml"
: >"$tmp/cloud.log"
cloud_start
device_init "$dev" "$serial"
case "$mode" in
  netcut) printf 'download:\n  stall_timeout_s: 2\n' >>"$dev/agent.yaml" ;;
  # Writes of about 3 s (1 MB/s) with a checkpoint every 256 KiB: a cut lands
  # mid-install and leaves something to resume from.
  powercut) printf 'download:\n  bandwidth_limit: 1000000\n  checkpoint_bytes: 262144\n' >>"$dev/agent.yaml" ;;
  # About 10 s of download (300 kB/s), a progress report per 1 MiB chunk
  # (3.5 s), under the 10 s silence limit while the agent runs.
  dupjob|silent) printf 'download:\n  bandwidth_limit: 300000\n' >>"$dev/agent.yaml" ;;
esac
boot_opts=()
[[ $mode == powercut ]] && boot_opts=(--powerloss "$powerloss")
device_on "$dev" "${boot_opts[@]}"
wait_attr "a['Status'] == 'Active' and dev['$serial']['SoftwareVersion'] == '1.0.0'" 60 \
  || die "the appliance did not come online with 1.0.0"
# arm PATTERN SECONDS SIGNAL: in the background, as soon as the device log
# shows PATTERN once more, wait SECONDS and send SIGNAL to the running agent;
# $tmp/fired.SIGNAL tells when it was done. Independent of how long the
# test's own API calls and store reads take on a loaded machine.
arm() {
  rm -f "$tmp/fired.$3"
  (
    wait_log "$1" "$(grep -c -- "$1" "$dev.log")" 180 || exit 1
    sleep "$2"
    for _ in $(seq 200); do
      pid=$(cat "$dev/run/agent.pid" 2>/dev/null)
      [[ -n "$pid" ]] && kill -"$3" "$pid" 2>/dev/null && { date +%s >"$tmp/fired.$3"; exit 0; }
      sleep 0.02
    done
    exit 1
  ) &
}
fired() {  # SIGNAL SECONDS: until the armed signal was sent
  local end=$((SECONDS + $2))
  while ((SECONDS < end)); do [[ -s "$tmp/fired.$1" ]] && return 0; sleep 0.05; done
  return 1
}
case "$mode" in
  # While the image is written (3 s at 1 MB/s), past the first checkpoint.
  powercut) arm 'into slot' "1.$((RANDOM % 9 + 1))" KILL ;;
  silent) arm 'into slot' 0 STOP ;;
esac

job=$(update VersionCode=1.0.1) || die "the update call failed"
[[ $(wc -w <<<"$job") -eq 1 ]] || die "one job expected: $job"

case "$mode" in
netcut)
  wait_job "$job" Committed 120 || die "job $job: $(job_state "$job")"
  python3 - "$tmp/proxy.json" "$img_size" <<'PY' || fail=1
import json, sys
s = json.load(open(sys.argv[1])); size = int(sys.argv[2])
done = [e[0] for e in s["events"]]
print(f"proxy: {s['connections']} connections, {s['down']} bytes to the device "
      f"for an image of {size}; cuts: {', '.join(done)}")
if done != ["reset", "stall"]:
    print("FAIL: the cuts did not both happen during the download"); sys.exit(1)
if s["down"] > size * 1.3:
    print("FAIL: the download started again from the beginning instead of resuming"); sys.exit(1)
PY
  # The downloader's own account: a retry from a byte past the start, per cut.
  resumed=$(grep -cE 'retry [0-9]+/[0-9]+ in [0-9]+ ms \(at byte [1-9]' "$dev.log")
  ((resumed >= 2)) || bad "the device log shows $resumed resumed retries, 2 expected"
  ;;
powercut)
  # The armed SIGKILL took the agent down; the simulator then cuts the
  # medium's power (unsynced data lost) and stops; power comes back.
  powered() {  # WHY
    fired KILL 120 || die "no power cut ($1)"
    for _ in $(seq 100); do kill -0 "${simpids[$dev]}" 2>/dev/null || break; sleep 0.1; done
    wait "${simpids[$dev]}" 2>/dev/null; unset "simpids[$dev]"
    echo "power cut ($1), in job state $(grep -oE 'job [^ ]+: [A-Za-z]+ -> [A-Za-z]+$' "$dev.log" | tail -1 | awk '{ print $NF }'): $(grep 'medium after' "$dev.log" | tail -1)"
    device_on "$dev" "${boot_opts[@]}"
  }
  powered "while the image is written"
  arm 'resuming in state Rebooting' 0.3 KILL
  powered "during the trial boot"
  wait_job "$job" Committed 120 || die "job $job: $(job_state "$job")"
  grep -q 'medium after the cut\|medium after power-off' "$dev.log" || bad "no cut of the medium was logged"
  ;;
dupjob)
  # The call repeated (a client retrying): while its job runs the box is
  # busy (IncorrectStatus); had it committed already, VersionTooOld. Never
  # a second job.
  out=$(api UpdateSmartAccessGatewayVersion VersionCode=1.0.1); rc=$?
  # (SmartAccessGatewayNotOnline while it reboots into its trial).
  [[ $rc -eq 1 && "$out" =~ \"Code\":\"(IncorrectStatus|VersionTooOld|SmartAccessGatewayNotOnline)\" ]] \
    || bad "repeated call: rc=$rc $out"
  echo "the call repeated while the job ran: $(sed 's/.*"Code":"\([^"]*\)".*/\1/' <<<"$out")"
  [[ $(cloud_jobs | wc -l) -eq 1 ]] || bad "a repeated call made a job: $(cloud_jobs)"
  wait_job "$job" Committed 120 || die "job $job: $(job_state "$job")"
  out=$(api UpdateSmartAccessGatewayVersion VersionCode=1.0.1); rc=$?
  [[ $rc -eq 1 && "$out" == *'"Code":"VersionTooOld"'* ]] || bad "repeated after the commit: rc=$rc $out"
  # The job message again, twice, from a stand-in for the gateway on its port.
  gw_port=${gw##*:}; gw_port=${gw_port%%/*}
  kill -TERM "$cloudpid"; wait "$cloudpid" 2>/dev/null; cloudpid=
  spec=$(job_spec "$job"); read -r epoch seq < <(cloud_acked "$serial")
  python3 "$here/e2e_fake_gateway.py" "$gw_port" "$lab/pki/server-chain.pem" "$lab/pki/server.key" \
    "$lab/pki/root-ca.pem" "$spec" "$epoch" "$seq" "$tmp/offers.json" >>"$tmp/cloud.log" 2>&1 \
    || bad "the stand-in gateway: $(tail -1 "$tmp/cloud.log")"
  python3 - "$tmp/offers.json" "$job" <<'PY' || fail=1
import json, sys
r = json.load(open(sys.argv[1])); job = sys.argv[2]
listed = [j for j in r["hello"]["jobs"] if j["job_id"] == job]
if not listed or listed[0]["outcome"] != "committed":
    print(f"FAIL: the device's hello does not list {job} as committed: {r['hello']['jobs']}")
    sys.exit(1)
for a in r["acks"]:
    print(f"job {job} offered again: accepted={a.get('accepted')} known={a.get('known')} "
          f"state={a.get('state')} outcome={a.get('outcome')}")
    if not (a.get("accepted") and a.get("known") and a.get("outcome") == "committed"):
        print("FAIL: not answered as a known, committed job"); sys.exit(1)
PY
  cloud_start
  ;;
silent)
  fired STOP 120 || die "job $job never started"
  # Not final yet (on a loaded machine it may be TimedOut already: the agent
  # took longer than the limit from the offer to its first report).
  at_stop=$(job_state "$job")
  [[ $at_stop =~ ^(Offered|Accepted|TimedOut)$ ]] || bad "job $job at the stop: $at_stop"
  stopped=$(cat "$tmp/fired.STOP")
  wait_job "$job" TimedOut 60 || bad "the silent job did not time out: $(job_state "$job")"
  echo "job $job TimedOut $(($(date +%s) - stopped)) s after the agent stopped (job_silence_s 10)"
  [[ $(cloud_jobs | awk -v j="$job" '$1 == j { print $6 }') == Timeout ]] || bad "no Timeout error: $(cloud_jobs)"
  wait_attr "a['Status'] == 'Offline' and dev['$serial']['SoftwareVersion'] == '1.0.0'" 20 \
    || bad "the API does not show the silent box Offline at 1.0.0"
  out=$(api UpdateSmartAccessGatewayVersion VersionCode=1.0.1); rc=$?
  [[ $rc -eq 1 && "$out" == *'"Code":"SmartAccessGatewayNotOnline"'* ]] || bad "silent box: rc=$rc $out"
  kill -CONT "$(cat "$dev/run/agent.pid")"
  # The device's word is the truth: its late result ends the job.
  wait_job "$job" Committed 120 || bad "after SIGCONT: $(job_state "$job")"
  [[ $(cloud_jobs | awk -v j="$job" '$1 == j { print $7 }') == yes ]] || bad "the job forgot it timed out"
  ;;
esac

wait_attr "a['Status'] == 'Active' and dev['$serial']['SoftwareVersion'] == '1.0.1'" 30 \
  || bad "the API does not show 1.0.1 at the end"
[[ $(installs_of "$dev" "$job") -eq 1 ]] || bad "job $job: the install started $(installs_of "$dev" "$job") times"
reports_once || fail=1
[[ $mode == powercut ]] && device_off "$dev"  # powered off cleanly: the medium unmounted
echo "jobs: $(cloud_jobs | awk '{ print $1, $4, $5, $6 }' | paste -sd, -); reports: $(cloud_reports | wc -l)"
((fail == 0)) && echo "ok: $mode"
exit $fail
