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
#            the image is written, once half of it was checkpointed (the
#            write resumes at a checkpoint), and again during the trial
#            boot's health check (1 s); after power returns the job
#            commits, the API shows the version and the slot holds the
#            image byte for byte (a checkpoint recorded before its chunks
#            were synced loses them);
#   dpi-netcut   the same cuts under a DPI job (VersionType=Dpi, a 1.5 MB
#            database of incompressible files streamed into its staging):
#            the download resumes, the job commits, the API shows the new
#            DpiSignatureDbVersion and the database is byte-exact;
#   dpi-powercut the powercut medium under DPI jobs: a first database is
#            installed, then power is cut while the next one is staged
#            (the job fails DpiInterrupted), again after its swap while the
#            engine reloads (the job rolls back), the call is issued again
#            and commits, and power is cut once more after the commit. At
#            every cut `current` names the old or the new database, each
#            whole and byte-exact, and the engine loads it;
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
case "$mode" in netcut|powercut|dupjob|silent|dpi-netcut|dpi-powercut) ;; *) echo "unknown mode $mode"; exit 2 ;; esac
[[ "$mode" != *powercut || -x "$powerloss" ]] || { echo "$mode needs SAG_POWERLOSS"; exit 2; }

lab_init
size=1500000; [[ $mode == netcut ]] || size=3000000  # 3 MB: 3 chunks of 1 MiB
# powercut: 10 chunks of 256 KiB, a checkpoint after each (the agent's
# checkpoints fall on chunk ends), each chunk's write logged (10 %).
chunk=(); [[ $mode == powercut ]] && size=2621440 chunk=(--chunk-size 262144)
for v in 1.0.0 1.0.1; do head -c $size /dev/urandom >"$tmp/rootfs-$v.img"; done
for v in 1.0.0 1.0.1; do sign Device "$v" "$tmp/rootfs-$v.img" "${chunk[@]}"; done
img_size=$(stat -c %s "$lab/images/Device-1.0.1.sagimg")
# DPI databases: dpi_db VERSION FILES: FILES files of 64 KiB of random bytes
# (zstd leaves them as they are: the package is as large as the database),
# a MANIFEST the fake engine checks the sizes against, and the version file;
# kept in $tmp/dpi-VERSION to compare the store with, byte for byte.
dpi_old=20201201_1_0-0.0.1; dpi_new=20201201_1_0-0.0.2
dpi_db() {
  local d="$tmp/dpi-$1" i
  mkdir -p "$d/rules"; echo "$1" >"$d/version"
  for i in $(seq "$2"); do head -c 65536 /dev/urandom >"$d/rules/r$i"; echo "65536 rules/r$i" >>"$d/MANIFEST"; done
  tar --zstd -C "$d" -cf "$tmp/dpi-$1.tar.zst" . && sign Dpi "$1" "$tmp/dpi-$1.tar.zst"
}
case "$mode" in
  dpi-netcut) dpi_db "$dpi_new" 24  # 1.5 MiB
    img_size=$(stat -c %s "$lab/images/Dpi-$dpi_new.sagimg") ;;
  # 2.5 MiB: 2.5 s of staging at 1 MB/s; the first database small.
  dpi-powercut) dpi_db "$dpi_old" 2; dpi_db "$dpi_new" 40 ;;
esac

if [[ $mode == *netcut ]]; then
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
  *netcut) printf 'download:\n  stall_timeout_s: 2\n' >>"$dev/agent.yaml" ;;
  # Writes of about 3 s (1 MB/s) with a checkpoint every 256 KiB: a cut lands
  # mid-install and leaves something to resume from.
  *powercut) printf 'download:\n  bandwidth_limit: 1000000\n  checkpoint_bytes: 262144\n' >>"$dev/agent.yaml" ;;
  # About 10 s of download (300 kB/s), a progress report per 1 MiB chunk
  # (3.5 s), under the 10 s silence limit while the agent runs.
  dupjob|silent) printf 'download:\n  bandwidth_limit: 300000\n' >>"$dev/agent.yaml" ;;
esac
# powercut: a health check of 1 s, so that the cut during the trial boot
# lands in it (written before power-on: on the medium and durable).
[[ $mode == powercut ]] && sed -i '1a sleep 1' "$dev/health-check"
boot_opts=()
[[ $mode == *powercut ]] && boot_opts=(--powerloss "$powerloss")
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
# The armed SIGKILL took the agent down; the simulator then cuts the
# medium's power (unsynced data lost) and stops; power comes back.
powered() {  # WHY
  fired KILL 120 || die "no power cut ($1)"
  for _ in $(seq 100); do kill -0 "${simpids[$dev]}" 2>/dev/null || break; sleep 0.1; done
  wait "${simpids[$dev]}" 2>/dev/null; unset "simpids[$dev]"
  cut_state=$(grep -oE 'job [^ ]+: [A-Za-z]+ -> [A-Za-z]+( \(version [^)]*\))?$' "$dev.log" | tail -1 | sed 's/ (version.*//' | awk '{ print $NF }')
  echo "power cut ($1), in job state $cut_state: $(grep 'medium after' "$dev.log" | tail -1)"
  # Off: $dev is what the medium kept.
  [[ $mode == dpi-powercut ]] && dpi_store "$1"
  device_on "$dev" "${boot_opts[@]}"
}
# dpi_whole VERSION: versions/VERSION in the store is the database as
# packaged, byte for byte (diff -r: every file, no file more or less).
dpi_whole() { diff -r "$tmp/dpi-$1" "$dev/state/dpi/versions/$1" >/dev/null 2>&1; }
# dpi_store WHEN: `current` names the old or the new database and that one
# is whole; the old one is whole as long as it is kept.
dpi_store() {
  local cur was=$fail
  fail=0
  cur=$(readlink "$dev/state/dpi/current")
  case "$cur" in
    "versions/$dpi_old" | "versions/$dpi_new") ;;
    *) bad "$1: current -> '$cur', neither the old nor the new database"; return ;;
  esac
  dpi_whole "${cur#versions/}" || bad "$1: the active database ${cur#versions/} is not whole: $(
    diff -r "$tmp/dpi-${cur#versions/}" "$dev/state/dpi/$cur" 2>&1 | head -3 | paste -sd ';')"
  [[ ! -e "$dev/state/dpi/versions/$dpi_old" ]] || dpi_whole "$dpi_old" \
    || bad "$1: the old database $dpi_old is damaged"
  ((fail == 0)) && echo "the store after the cut ($1): current -> ${cur#versions/}, whole"
  ((fail |= was))
}
# engine_loaded VERSION: the fake engine's record of what it loaded.
engine_loaded() {
  [[ $(head -1 "$dev/dpi-engine/loaded" 2>/dev/null) == "$1" ]] \
    || bad "the engine loaded '$(head -1 "$dev/dpi-engine/loaded" 2>/dev/null)', $1 expected"
}
case "$mode" in
  # While the image is written (2.6 s at 1 MB/s), half of it written and
  # checkpointed (the checkpoint of chunk k is taken while k+1 is written).
  powercut) arm 'Writing 50% (5/10)' "0.$((RANDOM % 5))" KILL ;;
  silent) arm 'into slot' 0 STOP ;;
esac

case "$mode" in
  dpi-netcut) job=$(update VersionType=Dpi VersionCode="$dpi_new") || die "the update call failed" ;;
  dpi-powercut)
    # dpi_update VERSION: the call, and the id of the job it made, the
    # newest (one store read less than `update`: each takes a second or
    # more on a loaded machine).
    dpi_update() {
      local out
      out=$(api UpdateSmartAccessGatewayVersion VersionType=Dpi VersionCode="$1") \
        || die "the update call failed: $out"
      cloud_jobs | tail -1 | awk '{ print $1 }'
    }
    # The first database, without a fault: the old one the cuts must leave whole.
    job=$(dpi_update "$dpi_old")
    wait_job "$job" Committed 60 || die "job $job ($dpi_old): $(job_state "$job")"
    ;;
  *) job=$(update VersionCode=1.0.1) || die "the update call failed" ;;
esac
[[ $(wc -w <<<"$job") -eq 1 ]] || die "one job expected: $job"

case "$mode" in
netcut | dpi-netcut)
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
  powered "while the image is written"
  # Something to resume from: the write goes on at a checkpoint, whose
  # chunks were synced before it was recorded (read back from the medium
  # sees unsynced data too: only the slot compared at the end catches a
  # checkpoint recorded over data the cut took away).
  wait_log 'resuming the write at chunk' 0 60 || bad "the write did not resume at a checkpoint"
  echo "$(grep -o 'resuming the write at chunk .*' "$dev.log" | head -1)"
  arm 'resuming in state Rebooting' 0.3 KILL
  powered "during the trial boot"
  [[ $cut_state =~ ^(Rebooting|HealthChecking)$ ]] || bad "the cut missed the trial boot: job state $cut_state"
  wait_job "$job" Committed 120 || die "job $job: $(job_state "$job")"
  grep -q 'medium after the cut\|medium after power-off' "$dev.log" || bad "no cut of the medium was logged"
  ;;
dpi-powercut)
  # 1. While the new database is staged: its download streams into
  # staging/ (2.5 s at 1 MB/s). Before the swap: the job fails
  # DpiInterrupted, the old database stays active.
  arm "dpi job [^ ]*: Checking -> Staging" "1.$((RANDOM % 5))" KILL
  job=$(dpi_update "$dpi_new")
  powered "while the DPI database is staged"
  wait_job "$job" Failed 60 || die "job $job after the cut while staged: $(job_state "$job")"
  engine_loaded "$dpi_old"
  # 2. After the swap, while the engine loads the new database (its reload
  # hangs on it: an engine that takes the box down): the job rolls back.
  # The control file made durable, so that the cut does not take it away.
  echo "$dpi_new" >"$dev/dpi-engine/hang-on-reload"; echo sync >"$dev/.sag-powerloss"
  arm "dpi job [^ ]*: Swapping -> Reloading" 0.5 KILL
  job=$(dpi_update "$dpi_new")
  powered "after the swap, while the engine reloads"
  wait_job "$job" RolledBack 60 || die "job $job after the cut after the swap: $(job_state "$job")"
  engine_loaded "$dpi_old"
  # 3. The call issued again, the engine healthy: the job commits. Then
  # power is cut after the commit: the new database must be on the medium.
  rm -f "$dev/dpi-engine/hang-on-reload"; echo sync >"$dev/.sag-powerloss"
  job=$(dpi_update "$dpi_new")
  wait_job "$job" Committed 60 || die "job $job ($dpi_new, issued again): $(job_state "$job")"
  rm -f "$tmp/fired.KILL"
  kill -KILL "$(cat "$dev/run/agent.pid")" && date +%s >"$tmp/fired.KILL"
  powered "after the commit"
  [[ $(readlink "$dev/state/dpi/current") == "versions/$dpi_new" ]] || bad "the commit was lost by the cut"
  engine_loaded "$dpi_new"
  outcomes=$(cloud_jobs | awk '{ print $3, $5, $6 }' | paste -sd ,)
  [[ $outcomes == "Dpi Committed -,Dpi Failed DpiInterrupted,Dpi RolledBack DpiInterrupted,Dpi Committed -" ]] \
    || bad "the jobs' outcomes: $outcomes"
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

if [[ $mode == dpi-* ]]; then
  wait_attr "a['Status'] == 'Active' and dev['$serial']['SoftwareVersion'] == '1.0.0' and dev['$serial']['DpiSignatureDbVersion'] == '$dpi_new'" 30 \
    || bad "the API does not show $dpi_new at the end"
  dpi_whole "$dpi_new" || bad "the store's $dpi_new is not the database as packaged"
  [[ $(readlink "$dev/state/dpi/current") == "versions/$dpi_new" ]] || bad "current does not name $dpi_new"
  # Each job's install started once: its first state logged once.
  for j in $(cloud_jobs | awk '{ print $1 }'); do
    n=$(grep -c "dpi job $j: Checking (version" "$dev.log")
    ((n == 1)) || bad "job $j: the install started $n times"
  done
else
  wait_attr "a['Status'] == 'Active' and dev['$serial']['SoftwareVersion'] == '1.0.1'" 30 \
    || bad "the API does not show 1.0.1 at the end"
  [[ $(installs_of "$dev" "$job") -eq 1 ]] || bad "job $job: the install started $(installs_of "$dev" "$job") times"
fi
reports_once || fail=1
[[ $mode == *powercut ]] && device_off "$dev"  # powered off cleanly: the medium unmounted
if [[ $mode == powercut ]]; then
  # The slot as the medium kept it, through the cuts: the image, byte for byte.
  target=$(grep -oE 'into slot [AB]' "$dev.log" | head -1 | awk '{ print tolower($3) }')
  cmp -n "$size" "$tmp/rootfs-1.0.1.img" "$dev/slot-$target.img" \
    || bad "slot $target does not hold the image the job committed"
fi
echo "jobs: $(cloud_jobs | awk '{ print $1, $4, $5, $6 }' | paste -sd, -); reports: $(cloud_reports | wc -l)"
((fail == 0)) && echo "ok: $mode"
exit $fail
