#!/usr/bin/env bash
# Benchmark (not a test): what a delta download of a format 2 image costs
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
# Environment: SAG_IMAGE (a built sag-image; default: a Release build in
# build/release), TREE_DIRS (source directories, default below), TREE_MIB
# (how much of them to copy, default 160), IMAGE_MIB (ext4 size, default 256),
# FRAMES (frame sizes in KiB, each optionally :LEVEL for zstd, default
# "4 16 32 64 1024 32:9 64:9 16:19 32:19 64:19"), GAP (--max-gap, bytes), KEEP_WORK=1 (keep the images),
# FORMAT (the delta format, 2 or 3; default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [[ -z "${SAG_IMAGE:-}" ]]; then
  build=build/release
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSAG_BUILD_TESTS=OFF >/dev/null
  ninja -C "$build" -j2 sag-image >/dev/null
  SAG_IMAGE="$repo/$build/tools/image/sag-image"
fi
bin=$SAG_IMAGE
tree_dirs=${TREE_DIRS:-"/usr/lib/python3.11 /usr/sbin /usr/share/perl /usr/lib/x86_64-linux-gnu/perl /usr/share/perl5 /usr/bin"}
tree_mib=${TREE_MIB:-160}
image_mib=${IMAGE_MIB:-256}
frames=${FRAMES:-"4 16 32 64 1024 32:9 64:9 16:19 32:19 64:19"}
gap=${GAP:-16384}
format=${FORMAT:-3}
work=$(mktemp -d "${TMPDIR:-/tmp}/sag-delta-bench-XXXXXX")
[[ -n "${KEEP_WORK:-}" ]] && echo "work directory: $work" || trap 'rm -rf "$work"' EXIT
"$bin" pki init "$work/pki" >/dev/null
command -v mkfs.ext4 >/dev/null || { echo "mkfs.ext4 (e2fsprogs) is needed" >&2; exit 1; }

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); machine: $(nproc) cores;" \
  "$(mkfs.ext4 -V 2>&1 | head -1)"

# The trees: a deterministic copy of real files (sorted, up to tree_mib),
# then the same tree after a deterministic minor update.
python3 - "$work" "$tree_mib" $tree_dirs <<'PY'
import os, random, shutil, sys
work, budget, dirs = sys.argv[1], int(sys.argv[2]) << 20, sys.argv[3:]
before = os.path.join(work, "before")
files = []
for d in dirs:
    for root, subdirs, names in os.walk(d):
        subdirs.sort()
        for n in sorted(names):
            p = os.path.join(root, n)
            if os.path.isfile(p) and not os.path.islink(p):
                files.append(p)
total = 0
copied = []
for p in files:
    size = os.path.getsize(p)
    if size > 8 << 20 or total + size > budget:
        continue
    dst = os.path.join(before, p.lstrip("/"))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(p, dst)
    os.chmod(dst, 0o644)
    total += size
    copied.append(dst)
after = os.path.join(work, "after")
shutil.copytree(before, after, symlinks=True, copy_function=shutil.copy2)
rng = random.Random(20261202)
rel = sorted(os.path.relpath(p, before) for p in copied)
edited = rng.sample(rel, max(1, len(rel) * 3 // 100))
for i, r in enumerate(edited):
    p = os.path.join(after, r)
    data = bytearray(open(p, "rb").read())
    if not data:
        data = bytearray(b"x")
    if i % 2 == 0:  # in place: a few bytes at a few spots (a version string, a constant)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            data[at:at + 8] = rng.randbytes(min(8, len(data) - at))
    else:  # bytes inserted: the rest of the file moves, the file grows
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randint(100, 5000))
    st = os.stat(p)
    open(p, "wb").write(data)
    os.utime(p, (st.st_atime + 86400, st.st_mtime + 86400))
rest = sorted(set(rel) - set(edited))
for r in rng.sample(rest, 10):
    os.remove(os.path.join(after, r))
for i in range(10):
    p = os.path.join(after, "usr/share/sag-update", "new-%d.bin" % i)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    size = rng.randint(1 << 10, 256 << 10)
    half = rng.randbytes(size // 2)
    text = ("new file %d line\n" % i).encode() * (size // 34 + 1)
    open(p, "wb").write(half + text[: size - len(half)])
print("tree: %d files, %.1f MiB; update: %d edited, 10 removed, 10 added"
      % (len(copied), total / 2**20, len(edited)))
PY

# ext4 images: with hygiene (fixed UUID, hash seed and time) and without.
mk() {  # mk TREE IMAGE hygiene|plain
  if [[ $3 == hygiene ]]; then
    E2FSPROGS_FAKE_TIME=1764590400 mkfs.ext4 -q -F -t ext4 -b 4096 \
      -U 0b0e5c6a-5a9e-4d3e-9c4f-5a6e7c8d9e01 \
      -E hash_seed=7d2c1f3e-8b4a-4c5d-9e6f-0a1b2c3d4e5f,root_owner=0:0 \
      -L rootfs -d "$1" "$2" "${image_mib}M"
  else
    mkfs.ext4 -q -F -t ext4 -b 4096 -E root_owner=0:0 -L rootfs -d "$1" "$2" "${image_mib}M"
  fi 2>&1 | grep -v '^Creating regular file' || true
}
for h in hygiene plain; do
  mk "$work/before" "$work/old-$h.ext4" "$h"
  mk "$work/after" "$work/new-$h.ext4" "$h"
done
rm -rf "$work/before" "$work/after"

create() {  # create PAYLOAD OUT [create options...]
  local payload=$1 out=$2
  shift 2
  "$bin" create --type Device --version 2.0.0 --compatible sag-1000 --payload "$payload" \
    --key "$work/pki/signer.key" --cert "$work/pki/signer.pem" \
    --chain "$work/pki/signer-chain.pem" --build-time 2026-12-01T12:00:00Z \
    --output "$out" "$@" >/dev/null
}
size() { stat -c %s "$1"; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", 100 * a / b }'; }

for h in hygiene plain; do
  create "$work/new-$h.ext4" "$work/v1-$h.img"
  today=$(size "$work/v1-$h.img")
  echo
  echo "== pair built with$([[ $h == plain ]] && echo "out") hygiene: new image ${image_mib} MiB," \
    "today's format 1 image (1 MiB chunks, zstd 3): $today bytes"
  printf '%-13s %11s %8s %12s %9s %8s %8s %10s %9s %9s %7s %7s\n' frame:level full_bytes \
    vs_today download of_today of_full requests frames header index blocks% rss_MiB
  for fl in $frames; do
    f=${fl%%:*}
    level=3
    [[ $fl == *:* ]] && level=${fl##*:}
    create "$work/new-$h.ext4" "$work/v2.img" --format "$format" --frame-size $((f * 1024)) --level "$level"
    full=$(size "$work/v2.img")
    "$bin" delta-plan --ca "$work/pki/root-ca.pem" "$work/v2.img" \
      --local "$work/old-$h.ext4" --max-gap "$gap" --json >"$work/plan.json"
    read -r dl req fb hb idx found rss < <(python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))
print(p["download_bytes"], p["requests"] + 2, p["request_bytes"], p["header_bytes"],
      p["index_bytes"], "%.1f" % (100 * p["blocks_found"] / p["blocks"]), p["peak_rss_kib"] // 1024)' \
      "$work/plan.json")
    printf '%-13s %11d %7s%% %12d %8s%% %7s%% %8d %10d %9d %9d %7s %7d\n' "${f}K:$level" "$full" \
      "$(pct $((full - today)) "$today")" "$dl" "$(pct "$dl" "$today")" "$(pct "$dl" "$full")" \
      "$req" "$fb" "$hb" "$idx" "$found" "$rss"
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
