#!/usr/bin/env bash
# Benchmark (not a test): Device OS install throughput and peak memory of
# `sag-agent install` into file-backed slots, next to the machine's own limits
# measured in the same run and next to SWUpdate (Debian's swupdate, raw
# handler) installing the same payload into a file. sag-agent runs twice: with
# boot.read_back: medium (the default: the slot read back from the device with
# O_DIRECT before the trial boot) and with boot.read_back: cache.
#   bench/install_bench.sh [BUILD_DIR] [SIZES_MIB...]     default: build/release 256 1024
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "${1:-$src/build/release}" && pwd)"; shift || true
sizes=("${@:-256 1024}"); read -r -a sizes <<<"${sizes[*]}"
SAG_DEPS_BENCH=1 "$src/tools/deps.sh"
command -v cpio >/dev/null || apt-get install -y -qq cpio >/dev/null
agent="$build/agent/sag-agent"; image="$build/tools/image/sag-image"; sim="$build/tools/sim/sag-sim"
work="${SAG_BENCH_DIR:-$(mktemp -d /var/tmp/sag-bench.XXXXXX)}"
trap 'rm -rf "$work"' EXIT
"$image" pki init "$work/pki" >/dev/null
cat "$work/pki/intermediate-ca.pem" "$work/pki/root-ca.pem" > "$work/ca-chain.pem"

mibps() { python3 -c "import sys; print(f'{$1 / 1048576 / $2:.0f}')"; }
peak_kib() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1"; }
wall_s() { python3 - "$1" <<'PY'
import re, sys
t = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", open(sys.argv[1]).read()).group(1)
parts = [float(p) for p in t.split(":")]
s = 0.0
for p in parts: s = s * 60 + p
print(s)
PY
}

REPS="${SAG_BENCH_REPS:-3}"
echo "== $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); each figure the median of $REPS runs"
sha=$(openssl speed -evp sha256 -bytes 1048576 -seconds 3 2>/dev/null | awk '/^sha256/ {print $NF}' | tr -d k)
sha_mibps=$(python3 -c "print(f'{float(\"$sha\") * 1000 / 1048576:.0f}')")
echo "sha256 (openssl speed -evp sha256, 1 MiB blocks): $sha_mibps MiB/s"

# Every writer gets the same target: a file of the slot size whose blocks are
# already written (as a partition is; a fresh fallocate'd file would charge
# the first writer with converting its extents), with nothing of it cached,
# and its input read into the page cache first (in the field the image comes
# from the network, not from the slot's disk). The writers' own programs are
# loaded once after the caches are dropped: on an appliance the agent runs as
# a daemon, and a cold start of its 23 shared libraries (50-60 ms on the test
# VM, 10 % of a 256 MiB install) is not part of writing a slot.
prewrite() { dd if=/dev/zero of="$1" bs=1M count="$2" conv=fsync,notrunc status=none; }
cold() {
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; cat "$@" >/dev/null
  dd --version >/dev/null; "$agent" --version >/dev/null; swupdate -h >/dev/null 2>&1 || true
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
max() { printf '%s\n' "$@" | sort -n | tail -1; }

for kind in random compressible; do
  for mib in "${sizes[@]}"; do
    bytes=$((mib << 20))
    payload="$work/payload-$kind-$mib"
    if [[ $kind == random ]]; then
      head -c "$bytes" /dev/urandom > "$payload"
    else
      python3 - "$payload" "$mib" <<'PY'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    for i in range(mib):  # each MiB: half text, half random (zstd ratio about 2)
        f.write((f"rootfs block {i} ".encode() * 40000)[:1 << 19] + os.urandom(1 << 19))
PY
    fi
    img="$work/img-$kind-$mib.sagimg"
    "$image" create --type Device --version 1.0.1 --compatible sag-1000 --payload "$payload" \
      --key "$work/pki/signer.key" --cert "$work/pki/signer.pem" --chain "$work/pki/signer-chain.pem" \
      --output "$img" >/dev/null
    zstd_line=$(zstd -b3 -i2 "$payload" 2>&1 | tr '\r' '\n' | grep -E 'MB/s' | tail -1)
    zstd_d=$(echo "$zstd_line" | sed -E 's/.*, *([0-9.]+) MB\/s *$/\1/')
    zstd_mibps=$(python3 -c "print(f'{float(\"$zstd_d\") * 1e6 / 1048576:.0f}')")

    # SWUpdate: a signed .swu (sw-description + CMS signature + the raw image).
    swu="$work/swu-$kind-$mib"; mkdir -p "$swu"; cp "$payload" "$swu/rootfs.img"
    digest=$(sha256sum "$payload" | cut -d' ' -f1)
    cat > "$swu/sw-description" <<SWD
software = { version = "1.0.1"; hardware-compatibility = [ "1.0" ]; images: ( { filename = "rootfs.img"; device = "$work/swslot"; type = "raw"; sha256 = "$digest"; } ); }
SWD
    openssl cms -sign -in "$swu/sw-description" -out "$swu/sw-description.sig" -signer "$work/pki/signer.pem" \
      -inkey "$work/pki/signer.key" -certfile "$work/pki/intermediate-ca.pem" -outform DER -nosmimecap -binary
    (cd "$swu" && printf '%s\n' sw-description sw-description.sig rootfs.img | cpio -o -H crc --quiet > "$work/update.swu")
    rm -rf "$swu"

    dev="$work/dev-$kind-$mib"
    "$sim" init "$dev" --slot-size "$bytes" --root-ca "$work/pki/root-ca.pem" >/dev/null
    echo "console=ttyS0 sag.slot=A" > "$dev/cmdline"
    sed -i 's/level: debug/level: warn/' "$dev/agent.yaml"
    sed 's/^boot:$/boot:\n  read_back: cache/' "$dev/agent.yaml" > "$dev/agent-cache.yaml"
    grep -q 'read_back: cache' "$dev/agent-cache.yaml"
    prewrite "$dev/slot-b.img" "$mib"
    truncate -s "$bytes" "$work/ddslot" "$work/swslot"
    prewrite "$work/ddslot" "$mib"; prewrite "$work/swslot" "$mib"

    dd_r=(); sag_r=(); sag_m=(); sagc_r=(); swu_r=(); swu_m=()
    for ((rep = 1; rep <= REPS; rep++)); do
      # The machine's sequential write with fsync, same payload, same kind of target.
      cold "$payload"
      ddout=$( { /usr/bin/time -f '%e' dd if="$payload" of="$work/ddslot" bs=1M conv=fsync,notrunc status=none; } 2>&1 )
      dd_r+=("$(mibps "$bytes" "$ddout")")

      rm -rf "$dev/state"; mkdir -p "$dev/state"
      cold "$img"
      /usr/bin/time -v -o "$work/time-sag" "$agent" install "$img" --config "$dev/agent.yaml" \
        --no-reboot --id "bench-$kind-$mib-$rep" >/dev/null
      sag_r+=("$(mibps "$bytes" "$(wall_s "$work/time-sag")")"); sag_m+=("$(peak_kib "$work/time-sag")")
      rm -rf "$dev/state"; mkdir -p "$dev/state"
      cold "$img"
      /usr/bin/time -v -o "$work/time-sagc" "$agent" install "$img" --config "$dev/agent-cache.yaml" \
        --no-reboot --id "bench-cache-$kind-$mib-$rep" >/dev/null
      sagc_r+=("$(mibps "$bytes" "$(wall_s "$work/time-sagc")")")

      # SWUpdate checks the signer against the -k file alone (it does not take
      # intermediates from the CMS), so that file holds the whole chain; -H
      # gives the board revision that hardware-compatibility names.
      cold "$work/update.swu"
      if /usr/bin/time -v -o "$work/time-swu" swupdate -k "$work/ca-chain.pem" --cert-purpose codeSigning \
          -H sag-bench:1.0 -M -i "$work/update.swu" >"$work/swu.log" 2>&1; then
        swu_r+=("$(mibps "$bytes" "$(wall_s "$work/time-swu")")"); swu_m+=("$(peak_kib "$work/time-swu")")
      else
        tail -3 "$work/swu.log"; swu_r+=(0); swu_m+=(0)
      fi
    done
    rm -rf "$dev"; rm -f "$work/update.swu" "$work/swslot" "$work/ddslot" "$payload" "$img"

    write_mibps=$(median "${dd_r[@]}"); sag_rate=$(median "${sag_r[@]}"); swu_rate=$(median "${swu_r[@]}")
    sagc_rate=$(median "${sagc_r[@]}")
    slowest=$(printf '%s\n' "$sha_mibps" "$write_mibps" "$zstd_mibps" | sort -n | head -1)
    printf '%-12s %5d MiB: sag-agent %4s MiB/s (runs %s), peak RSS %5s KiB | SWUpdate %4s MiB/s, peak RSS %5s KiB\n' \
      "$kind" "$mib" "$sag_rate" "${sag_r[*]}" "$(max "${sag_m[@]}")" "$swu_rate" "$(max "${swu_m[@]}")"
    printf '%18s limits: sha256 %s, write+fsync %s (runs %s), zstd -d %s MiB/s | sag-agent = %s%% of the slowest (%s), %s x SWUpdate\n' \
      "" "$sha_mibps" "$write_mibps" "${dd_r[*]}" "$zstd_mibps" \
      "$(python3 -c "print(round(100 * $sag_rate / $slowest))")" "$slowest" \
      "$(python3 -c "print(f'{$sag_rate / max($swu_rate, 1):.1f}')")"
    printf '%18s read-back from the medium (boot.read_back: medium) %s MiB/s; page cache only (cache) %s MiB/s (runs %s)\n' \
      "" "$sag_rate" "$sagc_rate" "${sagc_r[*]}"
  done
done
