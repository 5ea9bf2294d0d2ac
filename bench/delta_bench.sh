#!/usr/bin/env bash
# Benchmark (not a test): what a delta download of a format 2-4 image costs
# (docs/delta.md). Builds, from a real file tree, a pair of ext4 images before
# and after a "minor update" (3 % of the files edited, half of them in place
# and half with bytes inserted, 10 removed, 10 added of 1-256 KiB), once with the build
# hygiene (fixed UUID and hash seed, E2FSPROGS_FAKE_TIME) and once without,
# then prints for several frame sizes: the bytes a device holding the old
# image would download (signed header + reuse index + coalesced frame
# ranges) as a share of the full image, the request count, and the full
# image's size against today's format 1 image (1 MiB chunks). With casync
# installed, the same pairs through casync (64 KiB average chunks, zstd).
#
#   bench/delta_bench.sh
# Environment: SAG_IMAGE (a built sag-image; default: a RelWithDebInfo build in
# build/release), TREE_DIRS (source directories, default below), TREE_MIB
# (how much of them to copy, default 160), IMAGE_MIB (ext4 size, default 256),
# FRAMES (frame sizes in KiB, each optionally :LEVEL for zstd, default
# "4 16 32 64 1024 32:9 64:9 16:19 32:19 64:19"), GAP (--max-gap, bytes), KEEP_WORK=1 (keep the images),
# FORMAT (the delta format, 2, 3 or 4; default 4), CREATE_OPTS (more options for
# each delta image's sag-image create, e.g. "--group-frames 16 --dict-size 65536"),
# PAIRS (default "hygiene plain").
set -euo pipefail
cd "$(dirname "$0")/.."
delta_repo=$PWD
# shellcheck source=bench/delta_lib.sh
source bench/delta_lib.sh
if [[ -z "${SAG_IMAGE:-}" ]]; then
  delta_build sag-image
  SAG_IMAGE="$delta_build_dir/tools/image/sag-image"
fi
bin=$SAG_IMAGE
frames=${FRAMES:-"4 16 32 64 1024 32:9 64:9 16:19 32:19 64:19"}
gap=${GAP:-4096}  # the agent's default (image::DeltaOptions::max_gap)
delta_setup "$bin"

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); machine: $(nproc) cores;" \
  "$(mkfs.ext4 -V 2>&1 | head -1); tree ${tree_mib} MiB, image ${image_mib} MiB"

# The pairs (bench/delta_lib.sh): with hygiene (fixed UUID, hash seed and
# time) and without.
delta_pairs

create() {  # create PAYLOAD OUT [create options...]
  delta_create 2.0.0 "$@"
}
size() { delta_size "$1"; }
pct() { delta_pct "$1" "$2"; }

for h in ${PAIRS:-hygiene plain}; do
  create "$work/new-$h.ext4" "$work/v1-$h.img" --format 1 --chunk-size 1048576 --level 3
  today=$(size "$work/v1-$h.img")
  echo
  echo "== pair built with$([[ $h == plain ]] && echo "out") hygiene: new image ${image_mib} MiB," \
    "today's format 1 image (1 MiB chunks, zstd 3): $today bytes"
  printf '%-13s %11s %8s %12s %9s %8s %8s %10s %9s %9s %8s %7s %7s\n' frame:level full_bytes \
    vs_today download of_today of_full requests frames header index dict blocks% rss_MiB
  for fl in $frames; do
    f=${fl%%:*}
    level=3
    [[ $fl == *:* ]] && level=${fl##*:}
    # shellcheck disable=SC2046,SC2086  # the options are words
    create "$work/new-$h.ext4" "$work/v2.img" $(delta_frame_opts "$fl") ${CREATE_OPTS:-}
    full=$(size "$work/v2.img")
    "$bin" delta-plan --ca "$work/pki/root-ca.pem" "$work/v2.img" \
      --local "$work/old-$h.ext4" --max-gap "$gap" --json >"$work/plan.json"
    read -r dl req fb hb idx dict found rss < <(python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))
print(p["download_bytes"], p["requests"] + 2 + (1 if p.get("dict_bytes", 0) else 0), p["request_bytes"], p["header_bytes"],
      p["index_bytes"], p.get("dict_bytes", 0), "%.1f" % (100 * p["blocks_found"] / p["blocks"]), p["peak_rss_kib"] // 1024)' \
      "$work/plan.json")
    printf '%-13s %11d %7s%% %12d %8s%% %7s%% %8d %10d %9d %9d %8d %7s %7d\n' "${f}K:$level" "$full" \
      "$(pct $((full - today)) "$today")" "$dl" "$(pct "$dl" "$today")" "$(pct "$dl" "$full")" \
      "$req" "$fb" "$hb" "$idx" "$dict" "$found" "$rss"
  done
  if command -v casync >/dev/null; then
    casync make --compression=zstd --store="$work/store-old" "$work/old.caibx" "$work/old-$h.ext4" >/dev/null
    casync make --compression=zstd --store="$work/store-new" "$work/new.caibx" "$work/new-$h.ext4" >/dev/null
    read -r cfull cdl creq < <(python3 - "$work/store-old" "$work/store-new" <<'PY'
import os, sys
def chunks(store):
    out = {}
    for root, _, names in os.walk(store):
        for n in names:
            if n.endswith(".cacnk"):
                out[n] = os.path.getsize(os.path.join(root, n))
    return out
old, new = chunks(sys.argv[1]), chunks(sys.argv[2])
missing = [s for n, s in new.items() if n not in old]
print(sum(new.values()), sum(missing), len(missing))
PY
)
    cidx=$(size "$work/new.caibx")
    echo "casync (64 KiB average chunks, zstd): full store $cfull bytes," \
      "download $((cdl + cidx)) bytes (chunks $cdl + .caibx index $cidx)" \
      "= $(pct $((cdl + cidx)) "$today")% of today's image in $creq chunk GETs + 1"
    rm -rf "$work/store-old" "$work/store-new" "$work"/*.caibx
  else
    echo "casync: not installed (apt-get install casync) - comparison skipped"
  fi
done
