#!/usr/bin/env bash
# Installs the Debian 12 packages the build, tests and demo need; only what is
# missing, so running it again is cheap. Used by both README commands.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git python3
  libboost-dev libboost-program-options-dev libssl-dev openssl
  libarchive-dev libspdlog-dev libyaml-cpp-dev libgtest-dev libgmock-dev
  libubootenv-dev libubootenv-tool libzstd-dev zstd nlohmann-json3-dev libsqlite3-dev fuse3 libfuse3-dev
  grub-common clang clang-format clang-tidy libclang-rt-14-dev
  dpkg-dev fakeroot lintian file systemd
)
if [[ "${SAG_DEPS_BENCH:-0}" == 1 ]]; then packages+=(swupdate); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "==> installing missing Debian packages: ${missing[*]}"
sudo=()
if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "==> packages installed"
