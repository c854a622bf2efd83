#!/usr/bin/env bash
# Build csrc/ with CMake against the installed torch, with ASan + UBSan, and run ctest.
# Usage: scripts/ci_ctest.sh [build-dir]   (default build/cmake-asan)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build/cmake-asan}
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTDDS_SANITIZE=ON
cmake --build "$BUILD" --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
ctest --test-dir "$BUILD" --output-on-failure
