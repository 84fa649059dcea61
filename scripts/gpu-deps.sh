#!/usr/bin/env bash
# Packs txt2img's build dependencies other than PyTorch for a machine with no network and no package manager (the
# GPU benchmark machine, which has CUDA, PyTorch, CMake and ninja): downloads Debian 12's packages with
# `apt-get download`, unpacks them with `dpkg -x` into .deps/root (git-ignored), drops what no build reads (docs,
# static archives), makes the tree relocatable (pkg-config files relative to their own folder, absolute symbolic
# links made relative) and packs it as .deps/carry/debian-root.tar.xz, beside CLIP's vocabulary (from ../shared, for
# the benchmark's random-weight bundle): .deps/carry is the folder to carry there (about 23 MB). scripts/bench_gpu.sh
# unpacks it when .deps/root is missing and builds with it as a CMake prefix.
#
#   scripts/gpu-deps.sh        # on a Debian 12 machine with apt (this project's development machines)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deps=$root/.deps
packages=(
  libsentencepiece-dev libsentencepiece0
  libcli11-dev nlohmann-json3-dev
  libstb-dev libstb0
  libicu-dev libicu72
  libssl-dev libssl3
  zlib1g-dev zlib1g
  libboost1.74-dev  # headers only (Boost.Math)
  libtcmalloc-minimal4
  pkgconf-bin libpkgconf3  # CMake's pkg_check_modules needs a pkg-config; the target machine may have none
)

rm -rf "$deps/debs" "$deps/root" "$deps/carry"
mkdir -p "$deps/debs" "$deps/root" "$deps/carry"
# apt's download sandbox user cannot write into a root-owned checkout; the folder is ours and thrown away anyway.
chmod 0777 "$deps/debs"
(cd "$deps/debs" && apt-get download "${packages[@]}") >&2 || {
  echo "gpu-deps.sh: apt-get download failed; on Debian 12 run 'apt-get update' first" >&2
  exit 1
}
for deb in "$deps"/debs/*.deb; do dpkg -x "$deb" "$deps/root"; done

cd "$deps/root"
rm -rf usr/share/doc usr/share/man usr/share/lintian usr/share/bug
find . -name '*.a' -delete
# A .pc file names its prefix as /usr; ${pcfiledir} (pkg-config and pkgconf both define it) keeps it inside this tree.
find . -path '*pkgconfig/*.pc' | while read -r pc; do
  up=$(dirname "${pc#./usr/}" | sed 's|[^/]*|..|g')
  sed -i -E "s|^prefix *= */usr\$|prefix=\${pcfiledir}/$up|" "$pc"
done
# Debian's -dev symbolic links may point at /lib/...; point them at the same file in this tree.
find . -type l -lname '/*' | while read -r link; do
  target=$(readlink "$link")
  for candidate in ".$target" "./usr$target"; do
    if [[ -e $candidate ]]; then
      ln -sfn "$(realpath --relative-to="$(dirname "$link")" "$candidate")" "$link"
      break
    fi
  done
done
dangling=$(find . -xtype l)
[[ -z $dangling ]] || { echo "gpu-deps.sh: dangling links left: $dangling" >&2; exit 1; }

tar -C "$deps/root" -cf - . | xz -T0 -6 >"$deps/carry/debian-root.tar.xz"
rm -rf "$deps/debs"
vocab=$root/../shared/clip/bpe_simple_vocab_16e6.txt.gz
if [[ -f $vocab ]]; then
  cp "$vocab" "$deps/carry/"
else
  echo "gpu-deps.sh: warning: no $vocab; scripts/bench_gpu.sh will need a bundle (--model)" >&2
fi
echo "gpu-deps.sh: $(du -sh "$deps/root" | cut -f1) unpacked in $deps/root; carry $deps/carry" \
     "($(du -sh "$deps/carry" | cut -f1))" >&2
