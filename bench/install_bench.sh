#!/usr/bin/env bash
# Benchmark (not a test): Device OS install throughput and peak memory of
# `sag-agent install` into file-backed slots, next to the machine's own limits
# measured in the same run and next to SWUpdate (Debian's swupdate, raw
# handler) installing the same payload into a file.
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

echo "== machine limits (this run; load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores)"
sha=$(openssl speed -evp sha256 -bytes 1048576 -seconds 3 2>/dev/null | awk '/^sha256/ {print $NF}' | tr -d k)
sha_mibps=$(python3 -c "print(f'{float(\"$sha\") * 1000 / 1048576:.0f}')")
echo "sha256 (openssl speed -evp sha256, 1 MiB blocks): $sha_mibps MiB/s"
ddout=$( { /usr/bin/time -f '%e' dd if=/dev/zero of="$work/ddtest" bs=1M count=1024 conv=fsync status=none; } 2>&1 )
write_mibps=$(mibps $((1024 << 20)) "$ddout"); rm -f "$work/ddtest"
echo "sequential write + fsync (dd 1 GiB, conv=fsync): $write_mibps MiB/s"

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

    dev="$work/dev-$kind-$mib"
    "$sim" init "$dev" --slot-size "$bytes" --root-ca "$work/pki/root-ca.pem" >/dev/null
    echo "console=ttyS0 sag.slot=A" > "$dev/cmdline"
    sed -i 's/level: debug/level: warn/' "$dev/agent.yaml"
    # In the field the image arrives over the network, not from the slot's disk: drop the
    # caches (the slot starts cold), then read the image into the page cache, so that the
    # disk sees only the slot's writes and reads, for both installers alike.
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; cat "$img" >/dev/null
    /usr/bin/time -v -o "$work/time-sag" "$agent" install "$img" --config "$dev/agent.yaml" \
      --no-reboot --id "bench-$kind-$mib" >/dev/null
    s=$(wall_s "$work/time-sag"); sag_rate=$(mibps "$bytes" "$s"); sag_rss=$(peak_kib "$work/time-sag")
    rm -rf "$dev"

    # SWUpdate: a signed .swu (sw-description + CMS signature + the raw image).
    swu="$work/swu-$kind-$mib"; mkdir -p "$swu"; cp "$payload" "$swu/rootfs.img"
    digest=$(sha256sum "$payload" | cut -d' ' -f1)
    truncate -s "$bytes" "$work/swslot"
    cat > "$swu/sw-description" <<SWD
software = { version = "1.0.1"; hardware-compatibility = [ "1.0" ]; images: ( { filename = "rootfs.img"; device = "$work/swslot"; type = "raw"; sha256 = "$digest"; } ); }
SWD
    openssl cms -sign -in "$swu/sw-description" -out "$swu/sw-description.sig" -signer "$work/pki/signer.pem" \
      -inkey "$work/pki/signer.key" -certfile "$work/pki/intermediate-ca.pem" -outform DER -nosmimecap -binary
    (cd "$swu" && printf '%s\n' sw-description sw-description.sig rootfs.img | cpio -o -H crc --quiet > "$work/update.swu")
    rm -rf "$swu"
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; cat "$work/update.swu" >/dev/null
    # SWUpdate checks the signer against the -k file alone (it does not take
    # intermediates from the CMS), so that file holds the whole chain; -H
    # gives the board revision that hardware-compatibility names.
    if /usr/bin/time -v -o "$work/time-swu" swupdate -k "$work/ca-chain.pem" --cert-purpose codeSigning \
        -H sag-bench:1.0 -M -i "$work/update.swu" >"$work/swu.log" 2>&1; then
      s=$(wall_s "$work/time-swu"); swu_rate=$(mibps "$bytes" "$s"); swu_rss=$(peak_kib "$work/time-swu")
    else
      swu_rate="failed"; swu_rss="-"; tail -3 "$work/swu.log"
    fi
    rm -f "$work/update.swu" "$work/swslot" "$payload" "$img"
    slowest=$(printf '%s\n' "$sha_mibps" "$write_mibps" "$zstd_mibps" | sort -n | head -1)
    printf '%-12s %5d MiB: sag-agent %5s MiB/s, peak RSS %6s KiB | SWUpdate %5s MiB/s, peak RSS %6s KiB | limits: sha256 %s, write+fsync %s, zstd -d %s MiB/s (slowest %s)\n' \
      "$kind" "$mib" "$sag_rate" "$sag_rss" "$swu_rate" "$swu_rss" "$sha_mibps" "$write_mibps" "$zstd_mibps" "$slowest"
  done
done
