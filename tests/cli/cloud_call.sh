#!/usr/bin/env bash
# sag-cloud serve answers sag-cloud call in both signature schemes; call
# exits 0 on success, 1 on an error answer (printing it), 2 on bad usage,
# 3 without an answer; serve stops cleanly on SIGTERM.
set -uo pipefail
cloud="$1"
tmp=$(mktemp -d)
pid=
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }

cat >"$tmp/cloud.yaml" <<'YAML'
api:
  listen: 127.0.0.1:0
  host_id: smartag.test
access_keys:
  - {id: testid, secret: testsecret, account: "1001"}
instances:
  - smartag_id: sag-one
    account: "1001"
    region_id: cn-shanghai
    status: Active
    instance_type: sag-1000
    associated_ccn_id: ccn-1
    end_time: 2099-01-01T00:00:00Z
    devices:
      - {serial_number: sag1, software_version: 2.0.0, online: true}
catalog:
  - {type: Device, version_code: 2.0.0, version_name: sag-os-2.0.0}
  - {type: Device, version_code: 2.3.1.1, version_name: sag-os-2.3.1.1}
YAML
"$cloud" serve --config "$tmp/cloud.yaml" >"$tmp/log" 2>&1 &
pid=$!
port=
for _ in $(seq 100); do
  port=$(sed -n 's#.*API on http://127.0.0.1:\([0-9]*\).*#\1#p' "$tmp/log") && [[ -n "$port" ]] && break
  sleep 0.05
done
[[ -n "$port" ]] || { cat "$tmp/log"; echo "FAIL: serve did not start"; exit 1; }
ep="http://127.0.0.1:$port"
call() { "$cloud" call --endpoint "$ep" --access-key-id testid --access-key-secret testsecret "$@"; }

for sig in acs3 v1; do
  out=$(call --signature "$sig" DescribeSmartAccessGateways RegionId=cn-shanghai); rc=$?
  [[ $rc -eq 0 && "$out" == *'"TotalCount":1'* && "$out" == *'"SmartAGId":"sag-one"'* ]] \
    || bad "$sig DescribeSmartAccessGateways: rc=$rc $out"
done
out=$(call --signature v1 --method GET --format XML DescribeSmartAccessGatewayVersions \
  RegionId=cn-shanghai SmartAGId=sag-one); rc=$?
[[ $rc -eq 0 && "$out" == *'<VersionCode>2.3.1.1</VersionCode>'* ]] || bad "XML versions: rc=$rc $out"
out=$(call UpdateSmartAccessGatewayVersion RegionId=cn-shanghai SmartAGId=sag-one VersionCode=2.3.1.1); rc=$?
[[ $rc -eq 0 && "$out" == '{"RequestId":"'*'"}' ]] || bad "update: rc=$rc $out"
out=$(call UpdateSmartAccessGatewayVersion RegionId=cn-shanghai SmartAGId=sag-one VersionCode=2.0.0); rc=$?
[[ $rc -eq 1 && "$out" == *'"Code":"VersionTooOld"'* ]] || bad "too old: rc=$rc $out"
out=$("$cloud" call --endpoint "$ep" --access-key-id testid --access-key-secret wrong \
  --signature v1 DescribeSmartAccessGateways); rc=$?
[[ $rc -eq 1 && "$out" == *'"Code":"SignatureDoesNotMatch"'* ]] || bad "wrong secret: rc=$rc $out"
out=$(ALIBABA_CLOUD_ACCESS_KEY_ID=testid ALIBABA_CLOUD_ACCESS_KEY_SECRET=testsecret \
  "$cloud" call --endpoint "$ep" DescribeSmartAccessGateways); rc=$?
[[ $rc -eq 0 ]] || bad "key pair from the environment: rc=$rc $out"
"$cloud" call --endpoint "$ep" DescribeSmartAccessGateways Bad 2>/dev/null; rc=$?
[[ $rc -eq 2 ]] || bad "usage error: rc=$rc"
"$cloud" call --endpoint http://127.0.0.1:1 --access-key-id a --access-key-secret b X 2>/dev/null; rc=$?
[[ $rc -eq 3 ]] || bad "no server: rc=$rc"

kill -TERM "$pid"; wait "$pid"; rc=$?; pid=
[[ $rc -eq 0 ]] || bad "serve exit on SIGTERM: $rc"

printf 'api:\n  listen: 127.0.0.1:0\n  bogus: 1\n' >"$tmp/bad.yaml"
"$cloud" serve --config "$tmp/bad.yaml" >"$tmp/badlog" 2>&1; rc=$?
[[ $rc -eq 2 ]] && grep -q "bad.yaml:3:3: unknown key 'bogus'" "$tmp/badlog" || { cat "$tmp/badlog"; bad "bad config: rc=$rc"; }

[[ $fail -eq 0 ]] && echo "ok: sag-cloud serve/call"
[[ $fail -eq 0 ]] || cat "$tmp/log"
exit $fail
