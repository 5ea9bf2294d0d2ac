#!/usr/bin/env bash
# The example configurations the packages install as conffiles
# (/etc/sag-agent/agent.yaml, /etc/sag-cloud/cloud.yaml) against their units:
#   - every path sag-cloud writes (store, image repository) is under the
#     unit's StateDirectory= (ProtectSystem=strict makes the rest read-only),
#     everything it reads under /etc/sag-cloud (tmpfiles.d: 0750
#     root:sag-cloud); the agent's state_dir, runtime_dir and DPI store are
#     the unit's StateDirectory= and RuntimeDirectory=, its slots are in the
#     unit's DeviceAllow=, the unit's ExecStart= names the files;
#   - `sag-cloud serve --config` on the example, as shipped but for the
#     host prefix and ports, with a PKI in place, in a mount namespace where
#     everything but the StateDirectory is read-only as in the unit: the API,
#     the device gateway (mutual TLS) and the image repository answer, the
#     store is written where the unit allows; then with the access key and
#     instance the example's comments show: the API lists the instance;
#   - `sag-agent check-config` accepts the agent example.
# Usage: examples.sh SAG_CLOUD SAG_AGENT SOURCE_DIR
set -uo pipefail
cloud="$1"; agent="$2"; src="$3"
tmp=$(mktemp -d); pid=
trap '[[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }
example="$src/cloud/examples/cloud.yaml"
unit="$src/systemd/sag-cloud.service"
key() { sed -nE "s/^$1=(.*)/\\1/p" "$2" | tail -1; }  # KEY UNIT: the last value

# --- the examples against their units ------------------------------------------
state="/var/lib/$(key StateDirectory "$unit")"
[[ "$(key ExecStart "$unit")" == "/usr/bin/sag-cloud serve --config /etc/sag-cloud/cloud.yaml" ]] \
  || bad "sag-cloud.service ExecStart: $(key ExecStart "$unit")"
python3 - "$example" "$state" <<'PY' && ok "cloud.yaml: writes under $state, reads under /etc/sag-cloud" || fail=1
import sys, yaml
c = yaml.safe_load(open(sys.argv[1])); state = sys.argv[2] + "/"
if not c.get("gateway") or not c.get("repository"):
    print("FAIL cloud.yaml has no gateway and repository: sag-cloud serve would run the in-memory API only")
    sys.exit(1)
store = c.get("store")
if isinstance(store, dict):  # a store section naming its file
    store = store.get("path") or store.get("file")
writes = {"store": store, "repository.dir": c["repository"].get("dir")}
reads = {f"gateway.{k}": c["gateway"].get(k) for k in ("cert_chain", "key", "device_ca")}
reads.update({f"repository.{k}": c["repository"].get(k) for k in ("root_ca", "cert_chain", "key", "client_ca")})
bad = [f"{k}: {v} is not under {state} (the unit's StateDirectory; the rest is read-only)"
       for k, v in writes.items() if not (isinstance(v, str) and v.startswith(state))]
bad += [f"{k}: {v} is not under /etc/sag-cloud/" for k, v in reads.items()
        if v is not None and not str(v).startswith("/etc/sag-cloud/")]
for b in bad: print("FAIL cloud.yaml", b)
sys.exit(1 if bad else 0)
PY

aunit="$src/systemd/sag-agent.service"
[[ "$(key ExecStart "$aunit")" == "/usr/bin/sag-agent run --config /etc/sag-agent/agent.yaml" ]] \
  || bad "sag-agent.service ExecStart: $(key ExecStart "$aunit")"
python3 - "$src/agent/examples/agent.yaml" "$aunit" <<'PY' && ok "agent.yaml: state, runtime, DPI store and slots as the unit allows" || fail=1
import re, sys, yaml
c = yaml.safe_load(open(sys.argv[1])); unit = open(sys.argv[2]).read()
val = lambda k: re.findall(rf"^{k}=(.*)$", unit, re.M)
state = "/var/lib/" + val("StateDirectory")[-1]; run = "/run/" + val("RuntimeDirectory")[-1]
allowed = {l.split()[0] for l in val("DeviceAllow") if l}
bad = []
if c["paths"]["state_dir"] != state: bad.append(f"state_dir {c['paths']['state_dir']} is not {state}")
if c["paths"]["runtime_dir"] != run: bad.append(f"runtime_dir {c['paths']['runtime_dir']} is not {run}")
if not c["dpi"]["store"].startswith(state + "/"): bad.append(f"dpi.store {c['dpi']['store']} not under {state}")
for name, slot in c["boot"]["slots"].items():
    if slot["device"] not in allowed: bad.append(f"slot {name} {slot['device']} not in DeviceAllow= {sorted(allowed)}")
for b in bad: print("FAIL agent.yaml", b)
sys.exit(1 if bad else 0)
PY
"$agent" check-config "$src/agent/examples/agent.yaml" >/dev/null && ok "sag-agent check-config: the agent example" \
  || bad "sag-agent check-config rejects the agent example"

# --- sag-cloud serve on the example -------------------------------------------
# A PKI as an operator would install it (a lab's), in $root/etc/sag-cloud/pki.
root="$tmp/root"
"$cloud" lab init "$tmp/lab" --serial sag000pkg0001 >/dev/null || { bad "lab init"; exit 1; }
mkdir -p "$root/etc/sag-cloud/pki" "$root$state/images"
cp "$tmp/lab/pki/root-ca.pem" "$tmp/lab/pki/server-chain.pem" "$tmp/lab/pki/server.key" "$root/etc/sag-cloud/pki/"
ports=($(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])'))
# The example with the host's paths under $root and free ports: nothing else changed.
sed -e "s#/etc/sag-cloud/#$root/etc/sag-cloud/#g; s#$state/#$root$state/#g" \
    -e "s#127.0.0.1:8080#127.0.0.1:${ports[0]}#; s#0.0.0.0:8443#127.0.0.1:${ports[1]}#; s#0.0.0.0:8444#127.0.0.1:${ports[2]}#" \
    -e "s#https://sag-cloud.example.com:8444#https://127.0.0.1:${ports[2]}#" "$example" >"$root/etc/sag-cloud/cloud.yaml"
# serve CONFIG: in a mount namespace where $root is read-only but for the
# StateDirectory, as ProtectSystem=strict + StateDirectory= make it.
serve() {
  : >"$tmp/serve.log"
  unshare -m --propagation private sh -c '
    mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" &&
    mount --bind "$1$2" "$1$2" && mount -o remount,bind,rw "$1$2" || exit 97
    exec "$3" serve --config "$4"' sh "$root" "$state" "$cloud" "$1" >"$tmp/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do grep -q 'API on http' "$tmp/serve.log" && return 0; kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  cat "$tmp/serve.log"; return 1
}
stop() {
  kill -TERM "$pid"; wait "$pid"; local rc=$?; pid=
  [[ $rc -eq 0 ]] || bad "serve exited $rc on SIGTERM"
}
if ! serve "$root/etc/sag-cloud/cloud.yaml"; then
  bad "sag-cloud serve on the example did not start"; exit 1
fi
grep -q "device gateway on wss://127.0.0.1:${ports[1]}/device/v1; image repository on https://127.0.0.1:${ports[2]}" "$tmp/serve.log" \
  && ok "serve on the example: API, device gateway and image repository up, /etc read-only" \
  || bad "serve on the example did not start the gateway and repository: $(cat "$tmp/serve.log")"
store=$(python3 -c 'import sys, yaml; s = yaml.safe_load(open(sys.argv[1]))["store"]; print(s if isinstance(s, str) else s.get("path") or s.get("file"))' "$example")
[[ -s "$root$store" ]] && ok "the store is written at $store" || bad "no store at $root$store"
devcert=(--cert "$tmp/lab/pki/device-sag000pkg0001-chain.pem" --key "$tmp/lab/pki/device-sag000pkg0001.key")
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$tmp/lab/pki/root-ca.pem" "${devcert[@]}" \
  "https://127.0.0.1:${ports[2]}/images/none.sagimg")
[[ "$code" == 404 ]] && ok "repository: a device certificate gets an answer (404 for no image)" \
  || bad "repository with a device certificate: HTTP $code"
curl -s -o /dev/null --cacert "$tmp/lab/pki/root-ca.pem" "https://127.0.0.1:${ports[2]}/images/none.sagimg" \
  && bad "the repository answered a client without a certificate"
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$tmp/lab/pki/root-ca.pem" "${devcert[@]}" \
  "https://127.0.0.1:${ports[1]}/device/v1")
[[ "$code" =~ ^[1-5][0-9][0-9]$ ]] && ok "device gateway: mutual TLS with a device certificate (HTTP $code without an upgrade)" \
  || bad "device gateway with a device certificate: '$code'"
out=$("$cloud" call --endpoint "http://127.0.0.1:${ports[0]}" --access-key-id none --access-key-secret none \
  DescribeSmartAccessGateways 2>&1); rc=$?
[[ $rc -eq 1 && "$out" == *InvalidAccessKeyId.NotFound* ]] && ok "API: no access key until one is added" \
  || bad "API without keys: rc=$rc $out"
stop

# The access key and the instance as the example's comments show them.
python3 - "$root/etc/sag-cloud/cloud.yaml" <<'PY' || { bad "the commented examples in cloud.yaml do not parse"; exit 1; }
import re, sys, yaml
path = sys.argv[1]; text = open(path).read()
def commented(before):  # the "#   " lines right before `before`, uncommented
    lines = text[:text.index(before)].rstrip("\n").split("\n")
    block = []
    while lines and re.match(r"^#   ", lines[-1]):
        block.insert(0, lines.pop()[4:])
    assert yaml.safe_load("\n".join(block)), before
    return "\n".join(block)
keys = commented("# A key with read_only").replace("<a long random string>", "an-example-secret-of-the-test")
instances = commented("instances: []")
text = text.replace("access_keys: []", "access_keys:\n" + keys).replace("instances: []", "instances:\n" + instances)
open(path, "w").write(text)
PY
serve "$root/etc/sag-cloud/cloud.yaml" || { bad "serve with the commented examples did not start"; exit 1; }
out=$("$cloud" call --endpoint "http://127.0.0.1:${ports[0]}" --access-key-id LTAI5tExampleKeyId \
  --access-key-secret an-example-secret-of-the-test DescribeSmartAccessGatewayAttribute \
  RegionId=cn-shanghai SmartAGId=sag-0ovhf732a9j1234567 2>&1); rc=$?
[[ $rc -eq 0 && "$out" == *'"SerialNumber":"sag233abcd"'* ]] \
  && ok "the example's commented access key and instance work: the API shows the device" \
  || bad "API with the example's key and instance: rc=$rc $out"
stop
exit $fail
