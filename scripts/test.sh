#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the normal build, then the whole suite again
# under AddressSanitizer + UndefinedBehaviorSanitizer. CI (.ci/run) calls exactly this.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
jobs="$(nproc 2>/dev/null || echo 2)"
export CCACHE_DIR="${CCACHE_DIR:-$root/.cache/ccache}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$jobs}"

echo "== build (RelWithDebInfo)"
scripts/build.sh "$root/build"
echo "== tests"
(cd build && ctest --output-on-failure -j "$jobs")

echo "== build (ASan + UBSan)"
scripts/build.sh "$root/build-asan" -DMOERUN_SANITIZE=ON
echo "== tests under ASan + UBSan"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
(cd build-asan && ctest --output-on-failure -j "$jobs")
