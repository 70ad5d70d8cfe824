#!/usr/bin/env bash
# Installs the Debian packages moerun needs to build and test. Idempotent: installs only what is missing.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config libdnnl-dev libflatbuffers-dev flatbuffers-compiler
      libabsl-dev libgtest-dev libgmock-dev nlohmann-json3-dev libomp-dev ccache
      clang libclang-rt-dev)  # clang + its sanitizer and libFuzzer runtimes: scripts/fuzz.sh
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
