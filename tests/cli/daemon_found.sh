#!/usr/bin/env bash
# The five daemon bugs found when main was tried as a new user and an operator
# would (issue 14), each on a simulated appliance running the real sag-agent:
#   1. an inbox request with "allow_downgrade": "yes" aborted the daemon (and
#      stayed, so every restart aborted again);
#   2. a FIFO named x.json in the inbox blocked the daemon forever (SIGTERM no
#      longer handled);
#   3. a DPI job id replayed after its image was gone was answered as a failed
#      Device job and added to the Device history;
#   4. `sag-agent install` waited 30 minutes when the daemon refused its job;
#   5. malformed state files of the daemon's own (Device history, DPI journal)
#      aborted it with uncaught exceptions.
# And issue 13 finding 9 on the daemon's own downloads:
#   6. SIGTERM while a DPI download waits on a stalled server stops at once.
# Usage: daemon_found.sh SAG_AGENT SAG_SIM SAG_IMAGE FAKE_DPI_ENGINE
set -uo pipefail
agent="$1"; sim="$2"; image="$3"; engine="$4"
tmp=$(mktemp -d); dev="$tmp/dev"; cfg="$dev/agent.yaml"
simpid=
stop() {
  if [[ -n "$simpid" ]] && kill -0 "$simpid" 2>/dev/null; then
    kill -TERM "$(cat "$dev/run/agent.pid" 2>/dev/null)" 2>/dev/null
    wait "$simpid" 2>/dev/null
  fi
  simpid=
}
trap 'stop; rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }
ok() { echo "ok: $*"; }
# Waits (at most 20 s) until the command succeeds.
wait_for() { for _ in $(seq 200); do "$@" && return 0; sleep 0.1; done; return 1; }
alive() { kill -0 "$(cat "$dev/run/agent.pid" 2>/dev/null)" 2>/dev/null; }
idle() { grep -q '"state": "idle"' "$dev/run/status.json" 2>/dev/null; }
# Before each case: a daemon that runs, whatever the case before did to it (on
# a broken daemon, so that each case fails for its own bug).
up() {
  if [[ -p "$inbox/f.json" || -e "$inbox/x.json" ]] || ! alive; then
    kill -KILL "$(cat "$dev/run/agent.pid" 2>/dev/null)" 2>/dev/null
    rm -f "$inbox/f.json" "$inbox/x.json" "$dev/run/status.json"
    wait "$simpid" 2>/dev/null; simpid=
    boot
  fi
}
boot() {
  "$sim" boot "$dev" --agent "$agent" --max-boots 1 >>"$tmp/log" 2>&1 &
  simpid=$!
  wait_for idle || { bad "the daemon did not become idle"; cat "$tmp/log"; exit 1; }
}

"$image" pki init "$tmp/pki" >/dev/null || exit 1
"$sim" init "$dev" --slot-size 1048576 --model sag-1000 --root-ca "$tmp/pki/root-ca.pem" \
  --dpi-engine "$engine" >/dev/null || exit 1
sign() {  # TYPE VERSION PAYLOAD OUTPUT
  "$image" create --type "$1" --version "$2" --compatible sag-1000 --payload "$3" \
    --key "$tmp/pki/signer.key" --cert "$tmp/pki/signer.pem" --chain "$tmp/pki/signer-chain.pem" \
    --output "$4" >/dev/null || exit 1
}
mkdir -p "$tmp/db"; echo 20201117_1_0-0.0.1 >"$tmp/db/version"
tar --zstd -C "$tmp/db" -cf "$tmp/db.tar.zst" . || exit 1
sign Dpi 20201117_1_0-0.0.1 "$tmp/db.tar.zst" "$tmp/dpi.sagimg"
head -c 300000 /dev/urandom >"$tmp/os.img"
sign Device 9.0.0 "$tmp/os.img" "$tmp/os-9.sagimg"
sign Device 9.0.1 "$tmp/os.img" "$tmp/os-9.0.1.sagimg"
inbox="$dev/state/inbox"

boot

# 1. wrong type in a request
printf '{"id":"x","source":"/nonexistent","allow_downgrade":"yes"}' >"$inbox/.x.tmp"
mv "$inbox/.x.tmp" "$inbox/x.json"
# The reply is written last (after the move and the .error file).
if wait_for test -e "$inbox/replies/x.json" && alive && [[ ! -e "$inbox/x.json" ]] \
   && grep -q 'E415 BadRequest: .*allow_downgrade: expected a boolean, got string' "$inbox/rejected/x.json.error" \
   && grep -q '"Rejected"' "$inbox/replies/x.json"; then
  ok "1. a wrong type is rejected, moved aside and answered; the daemon serves on"
else
  bad "1. wrong type"; ls -la "$inbox" "$inbox/rejected" 2>&1; tail -5 "$tmp/log"
fi

# 2. a FIFO
up
mkfifo "$inbox/f.json"
if wait_for test -e "$inbox/rejected/f.json.error" && alive && grep -q 'is a FIFO' "$inbox/rejected/f.json.error"; then
  ok "2. a FIFO is rejected without blocking"
else
  bad "2. FIFO"; ls -la "$inbox" "$inbox/rejected" 2>&1; tail -5 "$tmp/log"
fi

# 5a. a damaged Device history: the job is refused with the file's problem.
up
echo '[{"id": 7}]' >"$dev/state/device-jobs.json"
out=$(timeout 60 "$agent" install "$tmp/os-9.0.1.sagimg" --id dev3 --config "$cfg" 2>&1); rc=$?
if [[ $rc -eq 1 && "$out" == *"E410 JournalCorrupt: Device job history"*"job 0: id: expected a string, got integer"* ]] && alive; then
  ok "5a. a damaged Device history refuses the job with its problem; the daemon serves on"
else
  bad "5a. damaged history: rc=$rc $out"; tail -5 "$tmp/log"
fi
rm -f "$dev/state/device-jobs.json"

# 3. a DPI job replayed after its image is gone
up
out=$(timeout 60 "$agent" install "$tmp/dpi.sagimg" --id d1 --config "$cfg" 2>&1); rc=$?
if [[ $rc -ne 0 || "$out" != *"job d1 Committed"* ]]; then bad "3. the DPI job itself: rc=$rc $out"; fi
mv "$tmp/dpi.sagimg" "$tmp/dpi.gone"
out=$(timeout 60 "$agent" install "$tmp/dpi.sagimg" --id d1 --config "$cfg" 2>&1); rc=$?
if [[ $rc -eq 0 && "$out" == *"job d1 Committed"* ]] && ! grep -q '"d1"' "$dev/state/device-jobs.json" 2>/dev/null; then
  ok "3. a DPI job id replayed without its image is answered with its DPI record"
  # Its reports: accepted, a state change for each DPI step, then one result
  # (the replay reports nothing new).
  kinds=$(python3 -c "import json,sys; print(' '.join(r['kind']+':'+r['body'].get('phase','') for r in map(json.loads, open(sys.argv[1])) if r['job']=='d1'))" "$dev/state/outbox.log")
  [[ "$kinds" =~ ^state:accepted( state:running)+\ result:committed$ ]] && ok "3. its reports in the outbox: $kinds" || bad "3. outbox reports of d1: '$kinds'"
else
  bad "3. DPI replay: rc=$rc $out"; cat "$dev/state/device-jobs.json" 2>/dev/null
fi

# 3b. an image that cannot be opened: failed and recorded under its id in the
# registry (type Unknown), not in the Device history; offered again, the
# record answers.
up
out=$(timeout 60 "$agent" install "$tmp/missing.sagimg" --id m1 --config "$cfg" 2>&1); rc=$?
out2=$(timeout 60 "$agent" install "$tmp/missing.sagimg" --id m1 --config "$cfg" 2>&1); rc2=$?
if [[ $rc -eq 1 && $rc2 -eq 1 && "$out" == *"job m1 Failed: E112 NotFound"* && "$out2" == *"job m1 Failed: E112 NotFound"* ]] \
   && python3 -c "import json,sys; j=[x for x in json.load(open(sys.argv[1]))['jobs'] if x['id']=='m1']; sys.exit(0 if j and j[0]['type']=='Unknown' and j[0]['phase']=='failed' else 1)" "$dev/state/jobs.json" \
   && ! grep -q '"m1"' "$dev/state/device-jobs.json" 2>/dev/null; then
  ok "3b. an unreadable image fails under its id in the registry, not as a Device job"
else
  bad "3b. unreadable image: rc=$rc/$rc2 $out / $out2"; cat "$dev/state/jobs.json" 2>/dev/null
fi

# 4. a refused job is answered at once: a Device job left at its trial boot
# (--no-reboot), then another one, which conflicts with it.
up
out=$(timeout 60 "$agent" install "$tmp/os-9.sagimg" --id dev1 --no-reboot --config "$cfg" 2>&1); rc=$?
if [[ $rc -ne 0 || "$out" != *"Rebooting"* ]]; then bad "4. the first Device job: rc=$rc $out"; fi
wait_for idle
start=$(date +%s)
out=$(timeout 60 "$agent" install "$tmp/os-9.0.1.sagimg" --id dev2 --config "$cfg" 2>&1); rc=$?
took=$(( $(date +%s) - start ))
if [[ $rc -eq 1 && "$out" == *"job dev2 Refused: E408 JobConflict: job dev1 is still Rebooting"* ]]; then
  ok "4. a refused job: install exits 1 with the reason (${took}s)"
else
  bad "4. refused job: rc=$rc after ${took}s: $out"
fi

# 2 (end). SIGTERM is still handled.
up
kill -TERM "$(cat "$dev/run/agent.pid")"
if timeout 20 tail --pid="$simpid" -f /dev/null && grep -q 'received SIGTERM, stopping' "$tmp/log"; then
  ok "2. SIGTERM stops the daemon"
else
  bad "2. SIGTERM not handled"
fi
stop

# 5b. a damaged DPI journal at start: reported, and the daemon serves on.
echo '{"kind": "dpi", "job": {"id": "d1", "state": "Committed", "version": 5}}' >"$dev/state/dpi-job.json"
: >"$tmp/log"
boot
if alive && grep -q 'E410 JournalCorrupt: job journal .*dpi-job.json: DPI job record: version: expected a string, got integer' "$tmp/log"; then
  ok "5b. a damaged DPI journal is an error with its code at start; the daemon runs"
else
  bad "5b. damaged DPI journal"; tail -20 "$tmp/log"
fi
stop
# 6. SIGTERM while a DPI download waits on a stalled server (issue 13, finding
# 9): the daemon stops at once, not when the stall timeout (300 s here) ends,
# and the job is failed with Cancelled.
cat >>"$cfg" <<'YAML'
download:
  stall_timeout_s: 300
  min_rate: 0
YAML
python3 - "$tmp/port" "$tmp/pki" >>"$tmp/stall.log" 2>&1 <<'PY' &
import socket, ssl, sys, time
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2] + "/server-chain.pem", sys.argv[2] + "/server.key")
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
s.settimeout(120)
c, _ = s.accept(); c = ctx.wrap_socket(c, server_side=True); c.recv(65536)
c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"S" * 100)
time.sleep(120)
PY
stall=$!
wait_for test -s "$tmp/port" || bad "6. the stalling server did not start"
rm -f "$dev/state/dpi-job.json"  # 5b's damaged journal
cp "$tmp/pki/device-sag-sim-0001-chain.pem" "$dev/pki/device.pem"  # https needs an identity
cp "$tmp/pki/device-sag-sim-0001.key" "$dev/pki/device.key"
: >"$tmp/log"
boot
printf '{"id":"stalled","source":"https://127.0.0.1:%s/dpi.sagimg"}' "$(cat "$tmp/port")" >"$inbox/.s.tmp"
mv "$inbox/.s.tmp" "$inbox/stalled.json"
wait_for grep -q 'stalled' "$dev/run/status.json"
sleep 1  # the download is waiting on the server now
kill -TERM "$(cat "$dev/run/agent.pid")"; start=$(date +%s)
if timeout 20 tail --pid="$simpid" -f /dev/null && python3 -c '
import json, sys
jobs = {j["id"]: j for j in json.load(open(sys.argv[1]))["jobs"]}
sys.exit(0 if (jobs["stalled"].get("error") or {}).get("name") == "Cancelled" else 1)' "$dev/state/jobs.json"; then
  ok "6. SIGTERM during a stalled DPI download stops the daemon ($(( $(date +%s) - start )) s); the job is Cancelled"
else
  bad "6. SIGTERM during a stalled download"; tail -5 "$tmp/log"; cat "$dev/state/jobs.json" 2>&1 | tail -20
fi
kill "$stall" 2>/dev/null; wait "$stall" 2>/dev/null
stop
exit $fail
