#!/usr/bin/env bash
# Benchmark (not a test): `sag-image verify` throughput and peak RSS on random
# payloads of 256 MiB and 1 GiB, next to `openssl speed -evp sha256` on the same
# machine. Random data is stored raw by zstd, so verifying costs one SHA-256
# pass over the payload (the chunk hashes, on a second core) while the next
# chunk is read and decompressed on the first.
#   bench/image_verify.sh [SIZES_MIB...]      (default: 256 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
((${#sizes[@]})) || sizes=(256 1024)
build=build/release
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSAG_BUILD_TESTS=OFF >/dev/null
ninja -C "$build" -j2 sag-image >/dev/null
bin="$build/tools/image/sag-image"
work=$(mktemp -d "${TMPDIR:-/tmp}/sag-bench-XXXXXX")
trap 'rm -rf "$work"' EXIT
"$bin" pki init "$work/pki" >/dev/null

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (numbers are only meaningful on an idle machine)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
sha=$(openssl speed -evp sha256 -bytes 1048576 -seconds 3 2>/dev/null | awk '/^sha256/ {print $2}')
sha=${sha%k}
sha_mib=$(awk -v k="$sha" 'BEGIN { printf "%.0f", k * 1000 / 1048576 }')
echo "openssl speed -evp sha256 (1 MiB blocks): ${sha_mib} MiB/s"

for mib in "${sizes[@]}"; do
  head -c $((mib * 1024 * 1024)) /dev/urandom >"$work/payload"
  "$bin" create --type Device --version 1.0.0 --compatible sag-1000 --payload "$work/payload" \
    --key "$work/pki/signer.key" --cert "$work/pki/signer.pem" \
    --chain "$work/pki/signer-chain.pem" --output "$work/image" >/dev/null
  rm -f "$work/payload"
  cat "$work/image" >/dev/null  # warm the page cache: measure verification, not the disk
  best=0
  best_cpu=0
  rss=0
  for run in 1 2 3; do
    /usr/bin/time -f '%e %U %S %M' -o "$work/time" \
      "$bin" verify --ca "$work/pki/root-ca.pem" "$work/image" >/dev/null
    read -r wall user sys kib <"$work/time"
    rate=$(awk -v t="$wall" -v m="$mib" 'BEGIN { printf "%.0f", m / (t > 0 ? t : 0.01) }')
    # CPU time per byte: what the verifier costs whatever the machine's load.
    cpu=$(awk -v u="$user" -v s="$sys" -v m="$mib" 'BEGIN { t = u + s; printf "%.0f", m / (t > 0 ? t : 0.01) }')
    ((rate > best)) && best=$rate
    ((cpu > best_cpu)) && best_cpu=$cpu
    rss=$kib
  done
  pct=$(awk -v a="$best" -v b="$sha_mib" 'BEGIN { printf "%.0f", 100 * a / b }')
  echo "sag-image verify ${mib} MiB: ${best} MiB/s wall (best of 3, ${pct}% of SHA-256 speed)," \
    "${best_cpu} MiB per CPU-second (user+sys), peak RSS $((rss / 1024)) MiB"
  rm -f "$work/image"
done
