#!/usr/bin/env bash
# sag-image end to end: pki init, create, verify, inspect (text and JSON),
# extract, refusals with exit 1 and the right code, and `openssl cms -verify`
# on the signature it made.
#   sag_image_cli.sh PATH/TO/sag-image
set -euo pipefail
bin="$1"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
fail() { echo "FAIL: $*"; exit 1; }

"$bin" pki init pki >/dev/null
for f in root-ca.pem intermediate-ca.pem signer.pem signer.key signer-chain.pem server.pem \
         server.key server-chain.pem device-sag-sim-0001.pem device-sag-sim-0001.key; do
  [[ -s pki/$f ]] || fail "pki init did not write $f"
done
[[ $(stat -c %a pki/signer.key) == 600 ]] || fail "signer.key is not mode 600"
openssl verify -CAfile pki/root-ca.pem -untrusted pki/intermediate-ca.pem pki/server.pem >/dev/null \
  || fail "server cert does not chain"
openssl x509 -in pki/server.pem -noout -ext subjectAltName | grep -q 'IP Address:127.0.0.1' \
  || fail "server cert lacks 127.0.0.1"
openssl x509 -in pki/signer.pem -noout -ext extendedKeyUsage | grep -q 'Code Signing' \
  || fail "signer lacks codeSigning"

head -c 300000 /dev/urandom > payload.bin
seq 1 50000 >> payload.bin
"$bin" create --type Dpi --version 20201117_1_0-0.0.1 --compatible sag-1000 --compatible sag-vcpe \
  --payload payload.bin --key pki/signer.key --cert pki/signer.pem --chain pki/signer-chain.pem \
  --chunk-size 65536 --output db.img >/dev/null
"$bin" verify --ca pki/root-ca.pem db.img | grep -q '^OK db.img: Dpi 20201117_1_0-0.0.1' \
  || fail "verify did not accept a good image"
"$bin" inspect db.img | grep -q 'compatible:   sag-1000, sag-vcpe' || fail "inspect text"
"$bin" inspect db.img --json | python3 -c '
import json, sys
j = json.load(sys.stdin)
assert j["manifest"]["type"] == "Dpi", j
assert j["chunks"] == 9, j  # 588894 bytes in 64 KiB chunks
assert "code signing" in j["signer"], j
assert j["verified"] is False
'
"$bin" extract --ca pki/root-ca.pem db.img --output out.bin >/dev/null
cmp out.bin payload.bin || fail "extract changed the payload"

# Interop: the signature verifies with the openssl command line.
tar xf db.img manifest.json manifest.json.sig
openssl cms -verify -binary -inform DER -in manifest.json.sig -content manifest.json \
  -CAfile pki/root-ca.pem -purpose any -out /dev/null 2>/dev/null || fail "openssl cms -verify"

# A flipped payload byte: verify exits 1 naming the code; extract leaves nothing.
cp db.img bad.img
size=$(stat -c %s bad.img)
# Invert the byte (writing a constant would be no change when the byte already holds it).
at=$((size - 5000))
byte=$(od -An -tu1 -j "$at" -N1 bad.img | tr -d ' ')
printf "\\$(printf '%03o' $((byte ^ 0xff)))" | dd of=bad.img bs=1 seek="$at" conv=notrunc status=none
cmp -s db.img bad.img && fail "the corruption did not change the image"
set +e
out=$("$bin" verify --ca pki/root-ca.pem bad.img 2>&1); rc=$?
set -e
[[ $rc == 1 ]] || fail "verify of a corrupt image exited $rc"
[[ $out == *E210* || $out == *E212* ]] || fail "unexpected error: $out"
if "$bin" extract --ca pki/root-ca.pem bad.img --output bad.bin 2>/dev/null; then fail "extract accepted"; fi
[[ ! -e bad.bin ]] || fail "extract left bad.bin behind"
compgen -G '.bad.bin*partial' >/dev/null && fail "extract left a temporary file behind"

# A symlink planted where extract used to put its temporary file: extract never
# opens through it (its target survives), neither when it succeeds nor when it fails.
echo "precious, must survive" > precious.txt
ln -s precious.txt .victim.bin.partial
ln -s precious.txt .bad2.bin.partial
"$bin" extract --ca pki/root-ca.pem db.img --output victim.bin >/dev/null \
  || fail "extract refused because of a planted symlink"
cmp victim.bin payload.bin || fail "extract next to a planted symlink changed the payload"
if "$bin" extract --ca pki/root-ca.pem bad.img --output bad2.bin 2>/dev/null; then fail "extract accepted"; fi
[[ $(cat precious.txt) == "precious, must survive" ]] || fail "extract wrote through a planted symlink"
[[ -L .victim.bin.partial && -L .bad2.bin.partial ]] || fail "extract removed a file it did not make"
[[ ! -e bad2.bin ]] || fail "extract left bad2.bin behind"

# Bad signers, each with its own code.
for flaw in expired:E207 not-yet-valid:E208 no-codesign:E209 other-root:E206; do
  name=${flaw%%:*}; code=${flaw##*:}
  "$bin" pki signer pki "$name" --flaw "$name" >/dev/null
  "$bin" create --type Device --version 1.0.1 --compatible sag-1000 --payload payload.bin \
    --key "pki/$name.key" --cert "pki/$name.pem" --chain "pki/$name-chain.pem" --output "$name.img" >/dev/null
  set +e
  out=$("$bin" verify --ca pki/root-ca.pem "$name.img" 2>&1); rc=$?
  set -e
  [[ $rc == 1 && $out == *"$code"* ]] || fail "$name: rc=$rc $out"
done

# Another tar header for the same signed content (mode 0755, checksum
# recomputed) and the ECDSA signature's twin are other files: E215.
python3 - db.img mode.img <<'PY'
import sys
b = bytearray(open(sys.argv[1], 'rb').read())
b[100:107] = b'000755 '
b[148:156] = b'        '
b[148:156] = b'%06o\0 ' % sum(b[0:512])
open(sys.argv[2], 'wb').write(b)
PY
set +e
out=$("$bin" verify --ca pki/root-ca.pem mode.img 2>&1); rc=$?
set -e
[[ $rc == 1 && $out == *E215* && $out == *mode* ]] || fail "a recomputed tar header: rc=$rc $out"

# Format 2 (docs/delta.md): frames plus a reuse index. verify checks and
# decodes the index, inspect shows it, and delta-plan against the payload
# itself finds every frame locally; against nothing but zero blocks, none.
"$bin" create --type Device --version 2.4.0 --compatible sag-1000 --payload payload.bin \
  --key pki/signer.key --cert pki/signer.pem --chain pki/signer-chain.pem \
  --format 2 --frame-size 16384 --output v2.img >/dev/null
"$bin" verify --ca pki/root-ca.pem v2.img | grep -q '^OK v2.img: Device 2.4.0, 36 frames (format 2, reuse index of 144 blocks)' \
  || fail "verify of a format 2 image: $("$bin" verify --ca pki/root-ca.pem v2.img 2>&1)"
"$bin" inspect v2.img | grep -q '^reuse index:  144 hashes of 8 bytes per 4096-byte block' \
  || fail "inspect of a format 2 image"
"$bin" inspect v2.img --json | python3 -c '
import json, sys
j = json.load(sys.stdin)
assert j["format"] == 2 and j["chunks"] == 36, j
assert "frames" not in j["manifest"] and j["manifest"]["reuse"]["block_size"] == 4096, j
'
"$bin" extract --ca pki/root-ca.pem v2.img --output v2.bin >/dev/null
cmp v2.bin payload.bin || fail "extract of a format 2 image changed the payload"
# Format 3: its defaults (16 KiB frames), 5-byte hashes, and the same payload.
"$bin" create --type Device --version 2.4.0 --compatible sag-1000 --payload payload.bin \
  --key pki/signer.key --cert pki/signer.pem --chain pki/signer-chain.pem \
  --format 3 --level 3 --output v3.img >/dev/null
"$bin" verify --ca pki/root-ca.pem v3.img | grep -q '^OK v3.img: Device 2.4.0, 36 frames (format 3, reuse index of 144 blocks)' \
  || fail "verify of a format 3 image: $("$bin" verify --ca pki/root-ca.pem v3.img 2>&1)"
"$bin" inspect v3.img | grep -q '^reuse index:  144 hashes of 5 bytes per 4096-byte block' \
  || fail "inspect of a format 3 image: $("$bin" inspect v3.img 2>&1)"
"$bin" extract --ca pki/root-ca.pem v3.img --output v3.bin >/dev/null
cmp v3.bin payload.bin || fail "extract of a format 3 image changed the payload"
"$bin" delta-plan --ca pki/root-ca.pem v2.img --local payload.bin --json | python3 -c '
import json, sys
p = json.load(sys.stdin)
assert p["frames_local"] == 36 and p["frames_download"] == 0 and p["requests"] == 0, p
'
"$bin" delta-plan --ca pki/root-ca.pem v2.img --json | python3 -c '
import json, sys
p = json.load(sys.stdin)
assert p["frames_local"] == 0 and p["frames_download"] == 36, p
assert p["requests"] == 1 and p["request_bytes"] == p["frame_bytes"], p  # adjacent frames merge
'
set +e
out=$("$bin" create --type Device --version 2.4.0 --compatible sag-1000 --payload payload.bin \
  --key pki/signer.key --cert pki/signer.pem --frame-size 10000 --output odd.img 2>&1); rc=$?
set -e
[[ $rc == 1 && $out == *"multiple of 4096"* && ! -e odd.img ]] || fail "odd frame size: rc=$rc $out"
set +e
out=$("$bin" delta-plan --ca pki/root-ca.pem db.img --local payload.bin 2>&1); rc=$?
set -e
[[ $rc == 1 && $out == *"no reuse index"* ]] || fail "delta-plan of a format 1 image: rc=$rc $out"

# Usage errors exit 2.
set +e
"$bin" create --type Bios >/dev/null 2>&1; rc=$?
set -e
[[ $rc == 2 ]] || fail "usage error exited $rc"
echo "sag-image CLI: all checks passed"
