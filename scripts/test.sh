#!/usr/bin/env bash
# Fresh Debian 12 machine -> dependencies, build, every test (C++ unit tests, converter tests, parity with the
# diffusers reference runs, command-line end-to-end tests). Needs ../shared/ beside the checkout.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
echo "BLAS in use: $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3)" >&2
cd "$root/build"
ctest --output-on-failure -j"$(nproc)" "$@"
