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
sudo=()
if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
if ((${#missing[@]} > 0)); then
  echo "==> installing missing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "==> packages installed"
fi
# clang-tidy 22 (bookworm-security), where the archive has it: it leaves
# system headers out of its matching and checks the sources in about 220
# CPU-seconds where clang-tidy 14 takes about 480 (2-core VM, the test build's
# units). Without it tools/check.sh runs clang-tidy 14, which the sources pass
# too. Looked for in the package lists as they are; an install that fails
# leaves clang-tidy 14 in charge.
tidy=clang-tidy-22
tidy_status=$(dpkg-query -W -f='${Status}' "$tidy" 2>/dev/null || true)
tidy_policy=$(apt-cache policy "$tidy" 2>/dev/null || true)
if [[ $tidy_status != *"install ok installed"* && $tidy_policy == *"Candidate: "[0-9]* ]]; then
  echo "==> installing $tidy"
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$tidy" >/dev/null ||
    echo "==> $tidy could not be installed; the style check uses clang-tidy 14"
fi
