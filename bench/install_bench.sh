#!/usr/bin/env bash
# Benchmark (not a test): how fast `sag-agent install` writes a Device image
# into a slot (boot.read_back: medium, the default), next to the slowest
# single stage of an install measured in the same run on the same target, and
# next to SWUpdate (Debian's swupdate, raw handler, streamed with
# installed-directly, zstd for the compressible payloads, `sync` inside its
# time: it closes the slot without fsync, and an install is not done before
# its data is durable).
#
#   bench/install_bench.sh [BUILD_DIR] [SIZE_MIB]     default: build/release 256
#
# Environment (each a list; defaults in brackets):
#   SAG_BENCH_SLOTS     [tmpfs loop file]  tmpfs: a loop device over a file in
#                       /dev/shm; loop: a loop device over a file on disk
#                       (the work dir); file: a regular file on disk
#   SAG_BENCH_PAYLOADS  [random half ext4] ext4: a file system of real files
#                       (mkfs.ext4 -d of a part of /usr), half: half random
#   SAG_BENCH_INPUTS    [warm cold]   cold: the page cache dropped before each
#                       command (root), the programs loaded again
#   SAG_BENCH_REPS      [5]           rounds; each round runs every command
#                       once, in turn, so each ratio is taken within a round
#   SAG_BENCH_DIR       work dir (on disk; default mktemp in /var/tmp)
#
# Each command is timed by its wall clock from start to exit. Per case the
# script prints medians and [min-max] over the rounds, and the ratios as
# medians of the per-round ratios:
#   share   = slowest stage / sag-agent, the stages being `dd bs=1M
#             conv=fsync` of the payload to the same slot, `openssl dgst
#             -sha256` of the payload and `zstd -d` of the payload (-3) to
#             /dev/null, each from the same input (cold or warm)
#   x SWU   = SWUpdate (+ sync) / sag-agent
#   w+r     = the I/O of an install with the read-back from the medium on,
#             as its limit on a disk: `dd conv=fsync` of the payload to the
#             slot with `dd iflag=direct` reading the slot beside it, and
#             that time / sag-agent (where the disk is slower than the CPU
#             work, this, not dd alone, is the slowest the install can be)
# The agent's time includes its start; the start alone (`sag-agent
# --version`, the shared libraries loaded) is printed separately, with the
# share without it ("job"). The agent's own per-stage log line (wall/CPU of
# read, decompress, hash, crc, write, flush, read-back, hash-back) is printed for
# the last round of each case.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "${1:-$src/build/release}" && pwd)"
mib="${2:-256}"
read -r -a slots <<<"${SAG_BENCH_SLOTS:-tmpfs loop file}"
read -r -a payloads <<<"${SAG_BENCH_PAYLOADS:-random half ext4}"
read -r -a inputs <<<"${SAG_BENCH_INPUTS:-warm cold}"
REPS="${SAG_BENCH_REPS:-5}"
SAG_DEPS_BENCH=1 "$src/tools/deps.sh"
command -v cpio >/dev/null || apt-get install -y -qq cpio >/dev/null
agent="$build/agent/sag-agent"; image="$build/tools/image/sag-image"; sim="$build/tools/sim/sag-sim"
work="${SAG_BENCH_DIR:-$(mktemp -d /var/tmp/sag-bench.XXXXXX)}"
shm="$(mktemp -d /dev/shm/sag-bench.XXXXXX)"
loops=()
cleanup() {
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$work" "$shm"
}
trap cleanup EXIT
"$image" pki init "$work/pki" >/dev/null
cat "$work/pki/intermediate-ca.pem" "$work/pki/root-ca.pem" > "$work/ca-chain.pem"
bytes=$((mib << 20))
root=$([[ $(id -u) == 0 ]] && echo 1 || echo 0)
if [[ $root == 0 ]]; then
  echo "not root: no loop devices, no cold input"; slots=(file); inputs=(warm)
fi
have_swu=0; command -v swupdate >/dev/null && have_swu=1

now() { echo "$EPOCHREALTIME"; }
secs() { python3 -c "print(f'{$2 - $1:.4f}')"; }
# Prepares the page cache for the next command: cold drops it (the input is
# read from disk), then loads the programs again (an appliance runs the agent
# as a daemon; a cold start of its shared libraries is not part of writing a
# slot, and is measured on its own); warm reads the input into it. Both first
# write out what the previous command and the bench itself left dirty (the
# state directory it just emptied, the files it made), so that no command's
# first fsync pays for another's writes.
prepare() {
  local input=$1; shift
  sync
  if [[ $input == cold ]]; then
    echo 3 > /proc/sys/vm/drop_caches
    dd --version >/dev/null; "$agent" --version >/dev/null; openssl version >/dev/null
    zstd --version >/dev/null; [[ $have_swu == 0 ]] || swupdate -h >/dev/null 2>&1 || true
  else
    cat "$@" >/dev/null
  fi
}
stats() {  # median [min-max] of its arguments
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; printf "%.3f [%.3f-%.3f]", m, a[1], a[NR]}'
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}'; }
spread() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%.2f-%.2f", a[1], a[NR]}'; }

make_payload() {  # KIND FILE
  case $1 in
    random) head -c "$bytes" /dev/urandom > "$2" ;;
    half)
      python3 - "$2" "$mib" <<'PY'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    for i in range(mib):  # each MiB: half text, half random (zstd ratio about 2)
        f.write((f"rootfs block {i} ".encode() * 40000)[:1 << 19] + os.urandom(1 << 19))
PY
      ;;
    ext4)
      # Real files (libraries, data, text) up to 80 % of the size, as a root
      # file system image would hold them; the rest of it free (zeros).
      local tree="$work/tree"; rm -rf "$tree"; mkdir -p "$tree"
      python3 - "$((bytes * 8 / 10))" > "$work/files" <<'PY'
import os, sys
want, total = int(sys.argv[1]), 0
for top in ("/usr/lib/x86_64-linux-gnu", "/usr/share", "/usr/bin", "/usr/lib"):
    for d, _, files in os.walk(top):
        for f in sorted(files):
            p = os.path.join(d, f)
            try:
                if os.path.islink(p) or not os.path.isfile(p): continue
                s = os.path.getsize(p)
            except OSError: continue
            if s > (8 << 20) or total + s > want: continue
            total += s; print(p)
        if total > want * 0.98: sys.exit(0)
PY
      tar -cf - -T "$work/files" 2>/dev/null | tar -xf - -C "$tree"
      rm -f "$2"; truncate -s "$bytes" "$2"
      mkfs.ext4 -q -F -b 4096 -E root_owner=0:0 -d "$tree" "$2"
      rm -rf "$tree"
      ;;
  esac
}

make_target() {  # KIND: sets target[KIND] to the slot's path
  case $1 in
    file) target[$1]="$work/slot-file.img"; truncate -s "$bytes" "${target[$1]}" ;;
    loop|tmpfs)
      local dir; dir=$([[ $1 == loop ]] && echo "$work" || echo "$shm")
      truncate -s "$bytes" "$dir/slot-$1.img"
      target[$1]=$(losetup -f --show "$dir/slot-$1.img"); loops+=("${target[$1]}") ;;
  esac
}

printf '== %s: %d cores, %s MiB payloads, %d rounds, load average %s\n' "$(date -u +%FT%TZ)" \
  "$(nproc)" "$mib" "$REPS" "$(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $("$agent" --version 2>&1 | head -1); SWUpdate $(dpkg-query -W -f '${Version}' swupdate 2>/dev/null || echo 'not installed')"
declare -A target
for s in "${slots[@]}"; do
  make_target "$s"
  dd if=/dev/zero of="${target[$s]}" bs=1M count="$mib" conv=fsync,notrunc status=none  # blocks written once
done

for kind in "${payloads[@]}"; do
  payload="$work/payload-$kind"
  make_payload "$kind" "$payload"
  zstd -q -3 -f "$payload" -o "$payload.zst"
  img="$work/img-$kind.sagimg"
  "$image" create --type Device --version 1.0.1 --compatible sag-1000 --payload "$payload" \
    --key "$work/pki/signer.key" --cert "$work/pki/signer.pem" --chain "$work/pki/signer-chain.pem" \
    --output "$img" >/dev/null
  echo "== payload $kind: $(du -m "$payload.zst" | cut -f1) MiB as zstd -3, image $(du -m "$img" | cut -f1) MiB"
  for s in "${slots[@]}"; do
    tgt=${target[$s]}
    # SWUpdate: a signed .swu (sw-description + CMS signature + the image),
    # streamed into the slot (installed-directly), zstd for compressible data.
    swu="$work/swu"; rm -rf "$swu"; mkdir -p "$swu"
    if [[ $kind == random ]]; then
      file=rootfs.img; ln "$payload" "$swu/$file"; comp=""
    else
      file=rootfs.img.zst; ln "$payload.zst" "$swu/$file"; comp='compressed = "zstd";'
    fi
    digest=$(sha256sum "$swu/$file" | cut -d' ' -f1)
    cat > "$swu/sw-description" <<SWD
software = { version = "1.0.1"; hardware-compatibility = [ "1.0" ]; images: ( { filename = "$file"; device = "$tgt"; type = "raw"; sha256 = "$digest"; installed-directly = true; $comp } ); }
SWD
    openssl cms -sign -in "$swu/sw-description" -out "$swu/sw-description.sig" \
      -signer "$work/pki/signer.pem" -inkey "$work/pki/signer.key" \
      -certfile "$work/pki/intermediate-ca.pem" -outform DER -nosmimecap -binary
    (cd "$swu" && printf '%s\n' sw-description sw-description.sig "$file" |
      cpio -o -H crc --quiet > "$work/update.swu")
    rm -rf "$swu"

    dev="$work/dev"; rm -rf "$dev"
    "$sim" init "$dev" --slot-size "$bytes" --root-ca "$work/pki/root-ca.pem" >/dev/null
    echo "console=ttyS0 sag.slot=A" > "$dev/cmdline"
    sed -i -e 's/level: debug/level: info/' -e "s|\"$dev/slot-b.img\"|\"$tgt\"|" \
      -e "s|'$dev/slot-b.img'|'$tgt'|" -e "s|device: $dev/slot-b.img|device: $tgt|" "$dev/agent.yaml"
    grep -q "$tgt" "$dev/agent.yaml" || { echo "could not point slot B at $tgt"; exit 1; }
    rm -f "$dev/slot-b.img"

    for input in "${inputs[@]}"; do
      t_dd=(); t_io=(); t_sha=(); t_zstd=(); t_start=(); t_sag=(); t_swu=(); rss_sag=(); rss_swu=()
      share=(); share_job=(); share_io=(); factor=(); loads=()
      for ((rep = 1; rep <= REPS; rep++)); do
        loads+=("$(cut -d' ' -f1 /proc/loadavg)")
        prepare "$input" "$payload"
        a=$(now); dd if="$payload" of="$tgt" bs=1M conv=fsync,notrunc status=none; b=$(now)
        t_dd+=("$(secs "$a" "$b")")
        prepare "$input" "$payload"
        a=$(now)
        dd if="$payload" of="$tgt" bs=1M conv=fsync,notrunc status=none &
        dd if="$tgt" of=/dev/null bs=512k iflag=direct status=none 2>/dev/null ||
          dd if="$tgt" of=/dev/null bs=512k status=none  # no O_DIRECT there
        wait; b=$(now); t_io+=("$(secs "$a" "$b")")
        prepare "$input" "$payload"
        a=$(now); openssl dgst -sha256 "$payload" >/dev/null; b=$(now); t_sha+=("$(secs "$a" "$b")")
        prepare "$input" "$payload.zst"
        a=$(now); zstd -q -d -c "$payload.zst" >/dev/null; b=$(now); t_zstd+=("$(secs "$a" "$b")")
        a=$(now); "$agent" --version >/dev/null; b=$(now); t_start+=("$(secs "$a" "$b")")

        rm -rf "$dev/state"; mkdir -p "$dev/state"
        prepare "$input" "$img"
        a=$(now)
        /usr/bin/time -f '%M' -o "$work/rss" "$agent" install "$img" --config "$dev/agent.yaml" \
          --no-reboot --id "bench-$kind-$s-$input-$rep" >/dev/null 2>"$work/agent.log"
        b=$(now); t_sag+=("$(secs "$a" "$b")"); rss_sag+=("$(tail -1 "$work/rss")")

        if [[ $have_swu == 1 ]]; then
          prepare "$input" "$work/update.swu"
          a=$(now)
          if /usr/bin/time -f '%M' -o "$work/rss" swupdate -k "$work/ca-chain.pem" \
              --cert-purpose codeSigning -H sag-bench:1.0 -M -i "$work/update.swu" \
              >"$work/swu.log" 2>&1 && sync; then
            b=$(now); t_swu+=("$(secs "$a" "$b")"); rss_swu+=("$(tail -1 "$work/rss")")
          else
            tail -3 "$work/swu.log"; have_swu=0
          fi
        fi
        read -r w_dd w_sha w_zstd w_start w_sag <<<"${t_dd[-1]} ${t_sha[-1]} ${t_zstd[-1]} ${t_start[-1]} ${t_sag[-1]}"
        slow=$(python3 -c "print(max($w_dd, $w_sha, $w_zstd))")
        share+=("$(python3 -c "print($slow / $w_sag)")")
        share_job+=("$(python3 -c "print($slow / max($w_sag - $w_start, 1e-3))")")
        share_io+=("$(python3 -c "print(${t_io[-1]} / $w_sag)")")
        [[ $have_swu == 0 ]] || factor+=("$(python3 -c "print(${t_swu[-1]} / $w_sag)")")
      done
      rate=$(python3 -c "print(f'{$mib / $(median "${t_sag[@]}"):.0f}')")
      printf '%-6s %-5s %-4s sag-agent %s s (%s MiB/s), start %s s, peak RSS %s KiB\n' "$kind" "$s" \
        "$input" "$(stats "${t_sag[@]}")" "$rate" "$(stats "${t_start[@]}")" \
        "$(printf '%s\n' "${rss_sag[@]}" | sort -n | tail -1)"
      printf '%17s stages: dd+fsync %s, sha256 %s, zstd -d %s s; w+r %s s\n' "" \
        "$(stats "${t_dd[@]}")" "$(stats "${t_sha[@]}")" "$(stats "${t_zstd[@]}")" \
        "$(stats "${t_io[@]}")"
      if [[ ${#t_swu[@]} -gt 0 ]]; then
        printf '%17s SWUpdate+sync %s s, peak RSS %s KiB\n' "" "$(stats "${t_swu[@]}")" \
          "$(printf '%s\n' "${rss_swu[@]}" | sort -n | tail -1)"
      fi
      printf '%17s share of the slowest stage %s (%s), job only %s (%s), of w+r %s; x SWUpdate %s (%s); load %s\n' "" \
        "$(median "${share[@]}")" "$(spread "${share[@]}")" "$(median "${share_job[@]}")" \
        "$(spread "${share_job[@]}")" "$(median "${share_io[@]}")" \
        "$( ((${#factor[@]})) && median "${factor[@]}" || echo -)" \
        "$( ((${#factor[@]})) && spread "${factor[@]}" || echo -)" "$(spread "${loads[@]}")"
      sed -n -E 's/.*: ((Writing [0-9]+ chunks|Verifying chunks) .*)$/                  agent: \1/p' "$work/agent.log"
    done
  done
  rm -f "$payload" "$payload.zst" "$img" "$work/update.swu"
done
