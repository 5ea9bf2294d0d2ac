#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in build/fuzz (-DSAG_FUZZ=ON, ASan +
# UBSan), makes a seed corpus from real images, and runs each fuzzer.
#   tools/fuzz.sh [SECONDS_PER_FUZZER]      (default 60)
# Corpora and crash artifacts land in build/fuzz/corpus and build/fuzz/artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
build=build/fuzz
tools/deps.sh
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSAG_FUZZ=ON -DSAG_SANITIZE=ON -DSAG_WERROR=OFF >/dev/null
ninja -C "$build" -j2 fuzz_manifest fuzz_container fuzz_proto sag-image

# Seeds: real images (small chunks, both types, a bad signer) and their manifests.
seeds="$build/seeds"
rm -rf "$seeds"
mkdir -p "$seeds/work" "$build/corpus/manifest" "$build/corpus/container" "$build/corpus/proto" \
  "$build/artifacts"
# Seeds for the channel decoder: one message of each type (docs/protocol.md).
cp "$PWD"/tests/data/proto/*.json "$build/corpus/proto/"
img="$build/tools/image/sag-image"
"$img" pki init "$seeds/work/pki" >/dev/null
"$img" pki signer "$seeds/work/pki" old --flaw expired >/dev/null
head -c 20000 /dev/urandom >"$seeds/work/random.bin"
seq 1 4000 >"$seeds/work/text.bin"
n=0
for spec in "Device 1.0.1 random.bin signer" "Dpi 20201117_1_0-0.0.1 text.bin signer" \
            "Device 2.3 text.bin old"; do
  read -r type version payload signer <<<"$spec"
  n=$((n + 1))
  "$img" create --type "$type" --version "$version" --compatible sag-1000 --compatible sag-vcpe \
    --payload "$seeds/work/$payload" --key "$seeds/work/pki/$signer.key" \
    --cert "$seeds/work/pki/$signer.pem" --chain "$seeds/work/pki/$signer-chain.pem" \
    --chunk-size 4096 --output "$build/corpus/container/seed$n.img" >/dev/null
  tar -xOf "$build/corpus/container/seed$n.img" manifest.json >"$build/corpus/manifest/seed$n.json"
done

for target in manifest container proto; do
  echo "==> fuzz_$target for ${seconds}s"
  "$build/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 \
    -artifact_prefix="$build/artifacts/$target-" -print_final_stats=1 \
    "$build/corpus/$target" 2>&1 | tail -n 20
done
