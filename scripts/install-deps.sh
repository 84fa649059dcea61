#!/usr/bin/env bash
# Installs what txt2img needs on Debian 12 (bookworm) from Debian's packages. Idempotent.
set -euo pipefail
packages=(
  build-essential cmake pkg-config
  libtorch-dev libopenblas0-openmp            # LibTorch; OpenBLAS (OpenMP build, as libtorch's libgomp) replaces the slow reference BLAS
  libtcmalloc-minimal4                        # tcmalloc: LibTorch's large CPU tensors without glibc's mmap/munmap churn
  libsentencepiece-dev libcli11-dev nlohmann-json3-dev libstb-dev libicu-dev libssl-dev zlib1g-dev
  libboost-dev                                # Boost.Math (header-only): A1111's Beta schedule as SciPy computes it
  libgtest-dev
  python3 python3-torch python3-numpy python3-sentencepiece python3-protobuf python3-pytest python3-pil
  python3-yaml                                # the converter reads a single file's LDM .yaml
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "install-deps: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
