#!/usr/bin/env bash
# Benchmark (not a test): real delta installs on the simulator (docs/delta.md,
# issue 20's "Must show"). For each pair of ext4 images of bench/delta_lib.sh
# (a tree before and after a minor update, built with and without the build
# hygiene):
#   1. a simulated appliance (sag-sim) gets the OLD image installed by the real
#      sag-agent as a delta (format 2, from the factory image, no rate limit),
#      reboots into it and commits it: slot B, its block-hash index kept;
#   2. the agent installs the NEW image (format $FORMAT, default 4) as a delta ("index kept")
#      from an HTTPS server on 127.0.0.1 that sends at most RATE bytes/s
#      (bench/delta_http.py: one link for all connections), into the other
#      slot (`sag-agent install URL --no-reboot`);
#   3. the same on an appliance running OLD from a full install ("slot read":
#      no index, the plan reads and hashes the running slot);
#   4. an appliance running OLD installs the NEW image in full, as today
#      (format 1, 1 MiB chunks, zstd 3), over the same kind of link;
#   5. casync extracts the NEW image from a casync store (64 KiB average
#      chunks, zstd) on the same kind of link (plain HTTP), with the OLD image
#      as seed (skipped when casync is not installed).
# Each installed slot (and casync's output) is compared byte for byte with the
# new ext4 image. Printed per pair and method: the bytes the server sent
# (status lines, headers and bodies: signed header + reuse index + frames for
# the delta; TLS not counted) as a share of the full delta-format image and of
# today's format 1 image, the requests the server answered, the install's wall
# time, the installer's CPU time (user and sys, from /usr/bin/time: sag-agent,
# or casync with its HTTP helper) and peak RSS, and the 1-minute load average
# at the end.
#
#   nice -n 19 ionice -c3 bench/delta_install_bench.sh
# Environment: SAG_BUILD (a build directory holding agent/sag-agent,
# tools/sim/sag-sim and tools/image/sag-image; default: build/release,
# RelWithDebInfo, built), FRAME (the new image's frames: KIB[:LEVEL] or
# "default" for sag-image's own; default 8:19), FORMAT (default 4), CREATE_OPTS (more options
# for the new image's `sag-image create`), RATE (bytes/s, default
# 1048576), PAIRS (default "hygiene plain"; one of them halves the time),
# TREE_MIB (default 160), IMAGE_MIB (default 256), TREE_DIRS, KEEP_WORK=1,
# PARALLEL (the agents' download.delta_parallel; default: the agent's, 3),
# DELAY_MS (the server waits this long before each response, as a link's
# latency would; default 0).
# With the defaults one run took 10 minutes on a 2-core machine at a load
# average of 5-7 (half of it building the two new images at zstd level 19 and
# the two full installs at 1 MiB/s).
set -euo pipefail
cd "$(dirname "$0")/.."
delta_repo=$PWD
# shellcheck source=bench/delta_lib.sh
source bench/delta_lib.sh
if [[ -n "${SAG_BUILD:-}" ]]; then
  delta_build_dir=$(cd "$SAG_BUILD" && pwd)
else
  delta_build sag-agent sag-sim sag-image
fi
agent="$delta_build_dir/agent/sag-agent"
sim="$delta_build_dir/tools/sim/sag-sim"
image="$delta_build_dir/tools/image/sag-image"
for b in "$agent" "$sim" "$image"; do [[ -x $b ]] || { echo "missing $b" >&2; exit 1; }; done
[[ -x /usr/bin/time ]] || { echo "/usr/bin/time (package time) is needed" >&2; exit 1; }
frame=${FRAME:-8:19}
frame_opts=$(delta_frame_opts "$frame")
read -r -a create_opts <<<"${CREATE_OPTS:-}"
rate=${RATE:-1048576}
pairs=${PAIRS:-"hygiene plain"}
for h in $pairs; do
  [[ $h == hygiene || $h == plain ]] || { echo "PAIRS: hygiene and/or plain, not '$h'" >&2; exit 1; }
done
[[ $rate =~ ^[0-9]+$ ]] || { echo "RATE must be bytes per second" >&2; exit 1; }
have_casync=0
command -v casync >/dev/null && have_casync=1

server_pid=
delta_cleanup_hook() {
  [[ -z "$server_pid" ]] || kill "$server_pid" 2>/dev/null
}
delta_setup "$image"
die() { echo "FAIL: $*" >&2; exit 1; }

echo "== $(date -u +%FT%TZ): $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== tree ${tree_mib} MiB in ext4 images of ${image_mib} MiB; new image: format ${FORMAT:-4} ($frame:" \
  "$frame_opts${CREATE_OPTS:+ $CREATE_OPTS}); link $rate B/s; $("$agent" --version 2>&1 | head -1);" \
  "$([[ $have_casync == 1 ]] && casync --version 2>&1 | head -1 || echo 'casync not installed')"
delta_pairs

# serve DIR tls|plain [RATE]: delta_http.py on DIR at RATE (default $rate)
# bytes/s; sets server_port, server_pid and server_stats.
serve() {
  local tls=()
  [[ $2 == tls ]] && tls=("$work/pki/server-chain.pem" "$work/pki/server.key")
  rm -f "$work/port"
  server_stats="$work/stats.json"
  SAG_HTTP_DELAY_MS=${DELAY_MS:-0} \
    python3 "$delta_repo/bench/delta_http.py" "$1" "$work/port" "$server_stats" "${3:-$rate}" \
    "${tls[@]}" &
  server_pid=$!
  for _ in $(seq 200); do [[ -s "$work/port" ]] && break; sleep 0.05; done
  [[ -s "$work/port" ]] || die "the HTTP server did not start"
  server_port=$(cat "$work/port")
}
unserve() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}
# measure NAME EXPECTED SLOT_FILE COMMAND...: runs COMMAND under /usr/bin/time
# (output $work/NAME.out, log $work/NAME.log), then compares SLOT_FILE with
# EXPECTED; appends to $work/rows: NAME bytes requests wall user sys rss_kib
# exact load1.
measure() {
  local name=$1 expected=$2 slot=$3 rc=0 exact=no
  shift 3
  # timeout's own few hundred KiB aside, time reports the command's rusage
  # (the children's maximum RSS and summed CPU reach it through timeout).
  /usr/bin/time -f '%e %U %S %M' -o "$work/time" timeout 1800 "$@" >"$work/$name.out" \
    2>"$work/$name.log" || rc=$?
  unserve
  cp "$server_stats" "$work/$name.stats.json"
  if [[ $rc != 0 ]]; then
    echo "$name failed (exit $rc):" >&2
    tail -n 5 "$work/$name.out" "$work/$name.log" >&2
  fi
  cmp -s -n "$(delta_size "$expected")" "$slot" "$expected" && exact=yes
  read -r wall user sys rss < <(tail -1 "$work/time")
  read -r bytes requests < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
print(s["bytes"], s["requests"])' "$server_stats")
  echo "$name $bytes $requests $wall $user $sys $rss $exact $(cut -d' ' -f1 /proc/loadavg)" >>"$work/rows"
}
# device NAME [sim init options]: a simulated appliance $work/NAME with the
# test PKI's device identity, logging at info.
device() {
  local dev="$work/$1"
  shift
  "$sim" init "$dev" --slot-size $((image_mib << 20)) --root-ca "$work/pki/root-ca.pem" "$@" >/dev/null
  cp "$work/pki/device-sag-sim-0001-chain.pem" "$dev/pki/device.pem"
  cp "$work/pki/device-sag-sim-0001.key" "$dev/pki/device.key"
  sed -i 's/level: debug/level: info/' "$dev/agent.yaml"
  if [[ -n "${PARALLEL:-}" ]]; then
    if grep -q '^download:' "$dev/agent.yaml"; then
      sed -i "/^download:/a\\  delta_parallel: $PARALLEL" "$dev/agent.yaml"
    else
      printf 'download:\n  delta_parallel: %s\n' "$PARALLEL" >>"$dev/agent.yaml"
    fi
  fi
}

: >"$work/rows"
for h in $pairs; do
  mkdir -p "$work/srv"
  delta_create 1.1.0 "$work/old-$h.ext4" "$work/srv/old2.img" --format 2 --frame-size 32768 --level 3
  start=$EPOCHREALTIME
  # shellcheck disable=SC2086  # frame_opts are words
  delta_create 1.2.0 "$work/new-$h.ext4" "$work/srv/new2.img" $frame_opts "${create_opts[@]}"
  build_s=$(python3 -c "print(f'{$EPOCHREALTIME - $start:.0f}')")
  delta_create 1.2.0 "$work/new-$h.ext4" "$work/srv/new1.img" --format 1 --chunk-size 1048576 --level 3
  full2=$(delta_size "$work/srv/new2.img")
  today=$(delta_size "$work/srv/new1.img")

  # 1. The OLD image installed by the agent as a delta (from the factory
  # image: zeros; no rate limit), booted and committed: slot B, with its
  # block-hash index kept beside it.
  device "kept-$h"
  dev="$work/kept-$h"
  mkdir -p "$dev/state/inbox"
  serve "$work/srv" tls 0
  printf '{"id": "old", "source": "https://127.0.0.1:%s/old2.img"}\n' "$server_port" \
    >"$dev/state/inbox/old.json"
  timeout 900 "$sim" boot "$dev" --agent "$agent" --max-boots 3 -- run --once \
    --config "$dev/agent.yaml" >"$work/boot-$h.log" 2>&1 || true
  unserve
  grep -q 'committed: slot B runs 1.1.0' "$work/boot-$h.log" \
    || { tail -20 "$work/boot-$h.log" >&2; die "the old image was not installed and committed"; }
  [[ -s "$dev/state/slot-B.blockhashes" ]] || die "no block-hash index kept beside slot B"
  # 2. The NEW image as a delta into slot A, the running slot looked up by its
  # index (every install a delta).
  serve "$work/srv" tls
  measure "kept-$h" "$work/new-$h.ext4" "$dev/slot-a.img" "$agent" install \
    "https://127.0.0.1:$server_port/new2.img" --config "$dev/agent.yaml" --no-reboot --id "kept-$h"
  rm -rf "$dev"
  # 3. The same on an appliance that runs OLD from a full install (no index:
  # the plan reads and hashes the running slot).
  device "read-$h" --slot-a "$work/old-$h.ext4" --version 1.1.0
  echo "console=ttyS0 sag.slot=A" >"$work/read-$h/cmdline"  # booted from A (no sag-sim boot)
  serve "$work/srv" tls
  measure "read-$h" "$work/new-$h.ext4" "$work/read-$h/slot-b.img" "$agent" install \
    "https://127.0.0.1:$server_port/new2.img" --config "$work/read-$h/agent.yaml" --no-reboot \
    --id "read-$h"
  rm -rf "$work/read-$h"
  # 4. The NEW image in full (today's format 1) on an appliance running OLD.
  device "full-$h" --slot-a "$work/old-$h.ext4" --version 1.1.0
  echo "console=ttyS0 sag.slot=A" >"$work/full-$h/cmdline"
  serve "$work/srv" tls
  measure "full-$h" "$work/new-$h.ext4" "$work/full-$h/slot-b.img" "$agent" install \
    "https://127.0.0.1:$server_port/new1.img" --config "$work/full-$h/agent.yaml" --no-reboot \
    --id "full-$h"
  rm -rf "$work/full-$h"
  # 5. casync, the OLD image as seed.
  store_bytes=-
  if [[ $have_casync == 1 ]]; then
    mkdir -p "$work/cas"
    casync make --compression=zstd --store="$work/cas/store" "$work/cas/new.caibx" \
      "$work/new-$h.ext4" >/dev/null
    store_bytes=$(find "$work/cas/store" -name '*.cacnk' -printf '%s\n' | awk '{s += $1} END {print s}')
    serve "$work/cas" plain
    measure "casync-$h" "$work/new-$h.ext4" "$work/cas/out.ext4" casync extract \
      --store="http://127.0.0.1:$server_port/store" --seed="$work/old-$h.ext4" \
      "http://127.0.0.1:$server_port/new.caibx" "$work/cas/out.ext4"
    rm -rf "$work/cas"
  fi

  echo
  echo "== pair built with$([[ $h == plain ]] && echo "out") hygiene: new image format ${FORMAT:-4} ($frame)" \
    "$full2 bytes (built in $build_s s), today's format 1 $today bytes, casync store $store_bytes bytes"
  printf '%-26s %11s %8s %8s %8s %8s %7s %7s %8s %5s %5s\n' method downloaded of_full of_today \
    requests wall_s user_s sys_s rss_MiB exact load1
  declare -A walls=()
  for m in kept read full casync; do
    read -r _ bytes requests wall user sys rss exact load < <(grep "^$m-$h " "$work/rows") || continue
    case $m in
      kept) label="delta $frame, index kept" ;;
      read) label="delta $frame, slot read" ;;
      full) label="full, format 1 (today)" ;;
      casync) label="casync extract --seed" ;;
    esac
    printf '%-26s %11d %7s%% %7s%% %8d %8.1f %7.2f %7.2f %8s %5s %5s\n' "$label" "$bytes" \
      "$(delta_pct "$bytes" "$full2")" "$(delta_pct "$bytes" "$today")" "$requests" "$wall" "$user" \
      "$sys" "$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')" "$exact" "$load"
    walls[$m]=$wall
  done
  echo "delta install time: $(delta_pct "${walls[kept]}" "${walls[full]}")% (index kept)," \
    "$(delta_pct "${walls[read]}" "${walls[full]}")% (slot read) of the full install's at $rate B/s"
  # What the delta's requests were: the header GET (a stream stopped once the
  # signed header is verified; what it read ahead is counted), then the index
  # and the planned ranges.
  python3 - "$work/kept-$h.stats.json" "$("$image" inspect --json "$work/srv/new2.img" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["payload_offset"])')" <<'PY'
import json, sys
s, header = json.load(open(sys.argv[1])), int(sys.argv[2])
first, rest = s["log"][0], s["log"][1:]
print(f"delta at the server: header GET {first[4]} bytes (signed header {header}, so "
      f"{first[4] - header} bytes of HTTP headers and read-ahead), index + frames "
      f"{sum(r[4] for r in rest)} bytes in {len(rest)} range requests")
PY
  for m in kept read; do
    grep -E "job $m-$h: (delta from frame|delta written)|the delta plan reads the slot" "$work/$m-$h.log" |
      sed -E "s/^<[0-9]>/agent ($m): /" || true
  done
  rm -rf "$work/srv"
done
awk '$8 != "yes" { bad = 1; print "NOT EXACT: " $1 } END { exit bad }' "$work/rows"
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
