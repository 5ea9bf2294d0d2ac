# Shared by the end-to-end tests (e2e_api.sh, e2e_kill.sh); sourced, not run.
# Needs: $cloud, $image, $lab, $serial, $id, and a die() that reports and exits.

# sag-cloud lab init for one appliance, heartbeats every 2 s.
lab_init() {
  "$cloud" lab init "$lab" --serial "$serial" --smartag-id "$id" >/dev/null || die "lab init"
  sed -i 's/heartbeat_s: 10/heartbeat_s: 2/' "$lab/cloud.yaml"
}

# The cloud's store as JSON ({devices, jobs, reports}), written to
# $lab/store.json: `sag-cloud store dump` reads the SQLite store, also while
# sag-cloud serves (or after it was killed).
dump_store() {
  "$cloud" store dump --config "$lab/cloud.yaml" >"$lab/store.json.tmp" 2>/dev/null \
    && mv "$lab/store.json.tmp" "$lab/store.json"
}

# sign TYPE VERSION PAYLOAD: a signed image in the lab's repository.
sign() {
  "$image" create --type "$1" --version "$2" --compatible sag-1000 --payload "$3" \
    --key "$lab/pki/signer.key" --cert "$lab/pki/signer.pem" --chain "$lab/pki/signer-chain.pem" \
    --output "$lab/images/$1-$2.sagimg" >/dev/null || die "sign $1 $2"
}
