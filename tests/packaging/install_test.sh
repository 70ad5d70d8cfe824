#!/usr/bin/env bash
# Installs a finished build into a temporary prefix and consumes it the way users do:
#   tests/packaging/install_test.sh BUILD_DIR
# checks the installed layout, builds the samples out of tree with find_package(moerun) and with
# pkg-config, converts a fixture with the installed CLI and runs every sample build on it. Every
# program runs without LD_LIBRARY_PATH, so the installed library must be found through RPATH.
set -euo pipefail
build="$(cd "${1:?usage: install_test.sh BUILD_DIR}" && pwd)"
root="$(cd "$(dirname "$0")/../.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"
unset LD_LIBRARY_PATH

fail() { echo "install_test: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$prefix" >/dev/null

# GNUInstallDirs picks lib or lib/<multiarch> depending on the configured prefix.
lib="$(find "$prefix" -name libmoerun.so -print -quit)"
[ -n "$lib" ] || fail "no libmoerun.so under $prefix"
libdir="$(dirname "$lib")"
pc="$libdir/pkgconfig/moerun.pc"
[ -f "$pc" ] || fail "missing $pc"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
version="$(pkg-config --modversion moerun)"

echo "install_test: checking the installed files (moerun $version, libdir ${libdir#"$prefix"/})"
for header in "$root"/include/moerun/*.h "$root"/include/moerun/*.hpp; do
  [ -e "$header" ] || continue  # an unmatched glob
  [ -f "$prefix/include/moerun/$(basename "$header")" ] || fail "header $(basename "$header") not installed"
done
# Development link -> SONAME link (the ABI version of moerun.h) -> the real file, and the SONAME the
# loader will look for.
abi="$(sed -n 's/^#define MOERUN_ABI_VERSION \([0-9]*\)$/\1/p' "$prefix/include/moerun/moerun.h")"
[ -n "$abi" ] || fail "no MOERUN_ABI_VERSION in the installed moerun.h"
soname="libmoerun.so.$abi"
[ "$(readlink "$lib")" = "$soname" ] || fail "libmoerun.so does not link to $soname"
[ "$(readlink "$libdir/$soname")" = "libmoerun.so.$version" ] || fail "$soname does not link to libmoerun.so.$version"
real="$libdir/libmoerun.so.$version"
[[ -f "$real" && ! -L "$real" ]] || fail "libmoerun.so.$version is not a regular file"
dynamic="$(objdump -p "$lib")"
grep -Eq "^ +SONAME +$soname\$" <<<"$dynamic" || fail "SONAME of libmoerun.so is not $soname"
[ -x "$prefix/bin/moerun" ] || fail "the moerun CLI is not installed"
for f in moerunConfig.cmake moerunConfigVersion.cmake moerunTargets.cmake; do
  [ -f "$libdir/cmake/moerun/$f" ] || fail "missing $libdir/cmake/moerun/$f"
done
[ "$(pkg-config --variable=prefix moerun)" = "$prefix" ] || fail "moerun.pc has the wrong prefix"

# A program passes only if the loader resolves libmoerun to the installed copy, not the build tree.
uses_installed_lib() {
  local resolved
  resolved="$(ldd "$1" | awk '$1 ~ /^libmoerun\.so/ { print $3 }')"
  [[ -n "$resolved" && "$(readlink -f "$resolved")" = "$(readlink -f "$real")" ]] ||
    fail "$1 loads libmoerun from '${resolved:-nowhere}', not $libdir"
}

echo "install_test: building samples/c out of tree with find_package(moerun)"
cmake -S "$root/samples/c" -B "$tmp/sample-c" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
grep -q "^moerun_DIR:PATH=$libdir/cmake/moerun\$" "$tmp/sample-c/CMakeCache.txt" ||
  fail "samples/c found a moerun package outside $prefix"
cmake --build "$tmp/sample-c" >/dev/null
programs=("$tmp/sample-c/minimal")

echo "install_test: building samples/c/minimal.c with cc and pkg-config"
# shellcheck disable=SC2046  # pkg-config's flags are meant to be split into words
cc -std=c99 -Wall -Wextra -pedantic -Werror -o "$tmp/minimal-pkgconfig" "$root/samples/c/minimal.c" \
  $(pkg-config --cflags --libs moerun) -Wl,-rpath,"$(pkg-config --variable=libdir moerun)"
programs+=("$tmp/minimal-pkgconfig")

if [ -f "$root/samples/cpp/CMakeLists.txt" ]; then
  echo "install_test: building samples/cpp out of tree with find_package(moerun)"
  cmake -S "$root/samples/cpp" -B "$tmp/sample-cpp" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
  cmake --build "$tmp/sample-cpp" >/dev/null
  programs+=("$tmp/sample-cpp/generate")
fi

echo "install_test: converting a fixture with the installed CLI and running the samples"
uses_installed_lib "$prefix/bin/moerun"
"$prefix/bin/moerun" convert "$root/tests/data/golden/v3_bf16" -o "$tmp/v3.moerun" >/dev/null
for program in "${programs[@]}"; do
  uses_installed_lib "$program"
  "$root/tests/packaging/run_sample.sh" "$program" "$tmp/v3.moerun"
done
echo "install_test: ok (${#programs[@]} sample builds)"
