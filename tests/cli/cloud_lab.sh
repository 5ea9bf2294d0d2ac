#!/usr/bin/env bash
# sag-cloud lab init + serve with the real parts (store, device gateway,
# image repository, the API over them): the catalog is the repository's
# verified images (a tampered one is left out), an offline device refuses
# an upgrade with Alibaba's code, the repository serves ranges to devices
# with a certificate only, a bad configuration is refused with file:line,
# and serve stops on SIGTERM leaving a loadable store.
set -uo pipefail
cloud="$1"; image="$2"
tmp=$(mktemp -d); pid=
trap '[[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }
lab="$tmp/lab"

"$cloud" lab init "$lab" --serial sag000lab0001 >"$tmp/init.log" || { cat "$tmp/init.log"; exit 1; }
out=$("$cloud" lab init "$lab" 2>&1); rc=$?
[[ $rc -eq 2 && "$out" == *"exists and is not empty"* ]] || bad "lab init over a lab: rc=$rc $out"
[[ $(stat -c %a "$lab/credentials.env") == 600 ]] || bad "credentials.env is not 0600"
head -c 200000 /dev/urandom >"$tmp/rootfs.img"
for v in 1.0.1 1.0.2; do
  "$image" create --type Device --version "$v" --compatible sag-1000 --payload "$tmp/rootfs.img" \
    --key "$lab/pki/signer.key" --cert "$lab/pki/signer.pem" --chain "$lab/pki/signer-chain.pem" \
    --output "$lab/images/sag-os-$v.sagimg" >/dev/null || exit 1
done
# 1.0.2 tampered after signing: a byte of its payload flipped.
size=$(stat -c %s "$lab/images/sag-os-1.0.2.sagimg")
printf '\xff' | dd of="$lab/images/sag-os-1.0.2.sagimg" bs=1 seek=$((size - 2000)) conv=notrunc 2>/dev/null

"$cloud" serve --config "$lab/cloud.yaml" >"$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 200); do grep -q 'API on http' "$tmp/log" && break; sleep 0.05; done
grep -q 'API on http' "$tmp/log" || { cat "$tmp/log"; echo "FAIL: serve did not start"; exit 1; }
grep -q 'left out sag-os-1.0.2.sagimg' "$tmp/log" || bad "the tampered image was not reported: $(cat "$tmp/log")"
# shellcheck disable=SC1091
source "$lab/credentials.env"
id=$(sed -n 's/^  - smartag_id: //p' "$lab/cloud.yaml")
out=$("$cloud" call DescribeSmartAccessGatewayVersions RegionId=cn-shanghai SmartAGId="$id"); rc=$?
[[ $rc -eq 0 && "$out" == *'"VersionCode":"1.0.1"'* && "$out" != *'1.0.2'* ]] \
  || bad "catalog: rc=$rc $out"
out=$("$cloud" call UpdateSmartAccessGatewayVersion RegionId=cn-shanghai SmartAGId="$id" VersionCode=1.0.1); rc=$?
[[ $rc -eq 1 && "$out" == *'"Code":"SmartAccessGatewayNotOnline"'* ]] || bad "offline update: rc=$rc $out"
out=$("$cloud" call UpdateSmartAccessGatewayVersion RegionId=cn-shanghai SmartAGId="$id" VersionCode=1.0.2); rc=$?
[[ $rc -eq 1 && "$out" == *'"Code":"'* ]] || bad "unknown version: rc=$rc $out"
out=$("$cloud" call DescribeSmartAccessGatewayAttribute RegionId=cn-shanghai SmartAGId="$id"); rc=$?
[[ $rc -eq 0 && "$out" == *'sag000lab0001'* ]] || bad "attribute: rc=$rc $out"

repo=$(sed -n 's#.*image repository on \(https://[^ ]*\) .*#\1#p' "$tmp/log")
dev=(--cert "$lab/pki/device-sag000lab0001-chain.pem" --key "$lab/pki/device-sag000lab0001.key")
got=$(curl -s --cacert "$lab/pki/root-ca.pem" "${dev[@]}" -r 0-7 "$repo/images/sag-os-1.0.1.sagimg")
[[ "$got" == "manifest" ]] || bad "range from the repository: '$got'"
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$lab/pki/root-ca.pem" "${dev[@]}" \
  "$repo/images/sag-os-1.0.2.sagimg")
[[ "$code" == 404 ]] || bad "the tampered image was served: HTTP $code"
if curl -s -o /dev/null --cacert "$lab/pki/root-ca.pem" "$repo/images/sag-os-1.0.1.sagimg"; then
  bad "the repository served a client without a device certificate"
fi

kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$pid" 2>/dev/null; then bad "serve did not stop within 5 s of SIGTERM"; fi
wait "$pid"; pid=
"$cloud" store dump --config "$lab/cloud.yaml" >"$tmp/store.json" \
  || bad "sag-cloud store dump cannot read the store after serve stopped"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d['devices'] else 1)" \
  "$tmp/store.json" || bad "the dumped store does not load or has no devices"

# A configuration error names the file, line and key.
sed 's/^  device_ca: .*/  device_ca: 42\n  colour: blue/' "$lab/cloud.yaml" >"$tmp/bad.yaml"
out=$("$cloud" serve --config "$tmp/bad.yaml" 2>&1); rc=$?
[[ $rc -ne 0 && "$out" == *"bad.yaml:"*"unknown key 'colour'"* ]] || bad "bad config: rc=$rc $out"
sed '/^gateway:/,/^repository:/{/^repository:/!d}' "$lab/cloud.yaml" >"$tmp/half.yaml"
out=$("$cloud" serve --config "$tmp/half.yaml" 2>&1); rc=$?
[[ $rc -ne 0 && "$out" == *"go together"* ]] || bad "repository without gateway: rc=$rc $out"

((fail == 0)) && echo "ok: lab init, serve with the real parts, catalog, offline refusal, repository, stop"
exit $fail
