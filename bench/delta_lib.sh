# shellcheck shell=bash
# Shared by bench/delta_bench.sh and bench/delta_install_bench.sh; sourced, not
# run. The reproducible pair of ext4 images of docs/delta.md: a copy of real
# files (the tree before), the same tree after a deterministic "minor update"
# (3 % of the files edited, half of them in place and half with bytes
# inserted, 10 removed, 10 added of 1-256 KiB), each put in an ext4 image with
# the build hygiene (fixed UUID and hash seed, E2FSPROGS_FAKE_TIME) and
# without it.
#
# Environment read here: TREE_DIRS (source directories, default below),
# TREE_MIB (how much of them to copy), IMAGE_MIB (ext4 size), KEEP_WORK=1
# (keep the work directory). Each script sets its own defaults of TREE_MIB and
# IMAGE_MIB before delta_setup.

# delta_build TARGET...: builds the targets in build/release (RelWithDebInfo,
# no tests) of the repository; sets delta_build_dir.
delta_build() {
  : "${delta_repo:?the sourcing script sets delta_repo, the repository}"
  delta_build_dir="$delta_repo/build/release"
  cmake -S "$delta_repo" -B "$delta_build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSAG_BUILD_TESTS=OFF >/dev/null
  ninja -C "$delta_build_dir" -j2 "$@" >/dev/null
}

# delta_setup BIN_SAG_IMAGE: the work directory ($work, removed at exit unless
# KEEP_WORK), the test PKI ($work/pki), the parameters (tree_dirs, tree_mib,
# image_mib).
delta_setup() {
  delta_image_bin=$1
  tree_dirs=${TREE_DIRS:-"/usr/lib/python3.11 /usr/sbin /usr/share/perl /usr/lib/x86_64-linux-gnu/perl /usr/share/perl5 /usr/bin"}
  tree_mib=${TREE_MIB:-160}
  image_mib=${IMAGE_MIB:-256}
  command -v mkfs.ext4 >/dev/null || { echo "mkfs.ext4 (e2fsprogs) is needed" >&2; exit 1; }
  work=$(mktemp -d "${TMPDIR:-/tmp}/sag-delta-bench-XXXXXX")
  [[ -z "${KEEP_WORK:-}" ]] || echo "work directory: $work"
  trap 'delta_cleanup' EXIT
  "$delta_image_bin" pki init "$work/pki" >/dev/null
}

# delta_cleanup: the EXIT trap; a script may define delta_cleanup_hook to stop
# what it started first.
delta_cleanup() {
  if declare -F delta_cleanup_hook >/dev/null; then delta_cleanup_hook || true; fi
  [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$work"
}

# delta_trees: $work/before (a deterministic copy of real files, sorted, up to
# tree_mib) and $work/after (the same after the minor update). Prints a line.
delta_trees() {
  # shellcheck disable=SC2086  # tree_dirs is a list
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
}

# delta_ext4 TREE IMAGE hygiene|plain: an ext4 image of image_mib MiB of TREE,
# with the hygiene (fixed UUID, hash seed and time) or without.
delta_ext4() {
  if [[ $3 == hygiene ]]; then
    E2FSPROGS_FAKE_TIME=1764590400 mkfs.ext4 -q -F -t ext4 -b 4096 \
      -U 0b0e5c6a-5a9e-4d3e-9c4f-5a6e7c8d9e01 \
      -E hash_seed=7d2c1f3e-8b4a-4c5d-9e6f-0a1b2c3d4e5f,root_owner=0:0 \
      -L rootfs -d "$1" "$2" "${image_mib}M"
  else
    mkfs.ext4 -q -F -t ext4 -b 4096 -E root_owner=0:0 -L rootfs -d "$1" "$2" "${image_mib}M"
  fi 2>&1 | grep -v '^Creating regular file' || true
}

# delta_pairs: the trees, then $work/old-hygiene.ext4, new-hygiene.ext4,
# old-plain.ext4 and new-plain.ext4; the trees are removed.
delta_pairs() {
  delta_trees
  local h
  for h in hygiene plain; do
    delta_ext4 "$work/before" "$work/old-$h.ext4" "$h"
    delta_ext4 "$work/after" "$work/new-$h.ext4" "$h"
  done
  rm -rf "$work/before" "$work/after"
}

# delta_create VERSION PAYLOAD OUT [create options...]: a signed Device image
# (model sag-1000, a fixed build time) of PAYLOAD.
delta_create() {
  local version=$1 payload=$2 out=$3
  shift 3
  "$delta_image_bin" create --type Device --version "$version" --compatible sag-1000 \
    --payload "$payload" --key "$work/pki/signer.key" --cert "$work/pki/signer.pem" \
    --chain "$work/pki/signer-chain.pem" --build-time 2026-12-01T12:00:00Z \
    --output "$out" "$@" >/dev/null
}

# delta_frame_opts KIB[:LEVEL] | default: the create options of a delta image
# (format $FORMAT, default 4) with frames of KIB KiB at zstd LEVEL (3 when not
# given); "default": --format alone (whatever sag-image's defaults are).
delta_frame_opts() {
  if [[ $1 == default ]]; then
    echo "--format ${FORMAT:-4}"
    return
  fi
  local f=${1%%:*} level=3
  [[ $1 == *:* ]] && level=${1##*:}
  [[ $f =~ ^[0-9]+$ && $level =~ ^[0-9]+$ ]] || { echo "bad frame spec '$1' (KIB[:LEVEL])" >&2; return 1; }
  echo "--format ${FORMAT:-4} --frame-size $((f * 1024)) --level $level"
}

delta_size() { stat -c %s "$1"; }
delta_pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", 100 * a / b }'; }
