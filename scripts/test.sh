#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the normal build, then the whole suite again
# under AddressSanitizer + UndefinedBehaviorSanitizer, then the concurrency tests under
# ThreadSanitizer. CI (.ci/run) calls exactly this.
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
echo "== install to a temporary prefix; build and run the samples out of tree (CMake, pkg-config)"
tests/packaging/install_test.sh "$root/build"
echo "== python binding (pytest) and the Python sample"
bindings/python/run_tests.sh "$root/build"

echo "== build (ASan + UBSan)"
scripts/build.sh "$root/build-asan" -DMOERUN_SANITIZE=ON
echo "== tests under ASan + UBSan"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
(cd build-asan && ctest --output-on-failure -j "$jobs")

echo "== build (ThreadSanitizer: the C API and its concurrency tests)"
cmake -S "$root" -B "$root/build-tsan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOERUN_TSAN=ON >/dev/null
cmake --build "$root/build-tsan" -j "$jobs" --target moerun_api_tests
echo "== concurrency tests under TSan"
# One OpenMP thread per session: libgomp is not instrumented, so its barriers would read as races;
# the threads under test are the application's own.
TSAN_OPTIONS="halt_on_error=1" MOERUN_TEST_OMP_THREADS=1 OMP_NUM_THREADS=1 \
  build-tsan/tests/moerun_api_tests --gtest_filter='*Concurrency*'

echo "== fuzz (libFuzzer + ASan + UBSan, ${FUZZ_SECONDS:-30} s per target; scripts/fuzz.sh for long runs)"
scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
