#!/usr/bin/env bash
# One hash of the sources mprec._C is built from. `make device-prep` records it beside the module it builds
# for the GPU machine, and bench/gpu.sh installs that module only if the working tree still has those sources:
# a module built from older kernels would test and measure code that is no longer there.
set -euo pipefail
cd "$(dirname "$0")/.."
{ find csrc -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' \) -print0
  printf '%s\0' CMakeLists.txt setup.py; } | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
