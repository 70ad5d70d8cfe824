#!/usr/bin/env bash
# Tests the Python binding against a moerun build: bindings/python/run_tests.sh BUILD_DIR
#  - makes a venv at BUILD_DIR/python-venv with the first python3 on PATH and installs the package,
#    numpy and pytest into it;
#  - installs libmoerun into the venv prefix with `cmake --install` (the layout users get), so the
#    package finds it there without MOERUN_LIBRARY;
#  - runs the pytest suite with numpy and again with numpy blocked, then the Python sample.
# Everything it writes goes under BUILD_DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
die() { echo "run_tests.sh: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 BUILD_DIR"
[ -d "$1" ] || die "$1 is not a directory (build moerun first: scripts/build.sh BUILD_DIR)"
build="$(cd "$1" && pwd)"
[ -x "$build/moerun" ] || die "$build/moerun not found: build moerun there first (scripts/build.sh $build)"
[ -e "$build/libmoerun.so" ] || die "$build/libmoerun.so not found: build moerun there first"

py="$(command -v python3)" || die "python3 is not on PATH"
"$py" -c 'import venv, ensurepip' 2>/dev/null ||
  die "$py cannot create virtual environments (module venv/ensurepip missing); on Debian: apt-get install python3-venv"

venv="$build/python-venv"
# Reuse the venv only if the same interpreter made it and it still runs (pyenv upgrades break it).
stamp="$venv/.made-by"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$py" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
  rm -rf "$venv"
  "$py" -m venv "$venv" || die "$py -m venv $venv failed"
  echo "$py" > "$stamp"
fi
echo "python: $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0], sys.executable)') (venv of $py)"

export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/python" -m pip install -q numpy pytest || die "pip install numpy pytest failed"
# Exactly what the README tells users to run (setuptools' build/ and *.egg-info are git-ignored).
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$here" || die "pip install $here failed"

# Drop a copy from an earlier run so that only this build's install can satisfy the check below.
find "$venv" -maxdepth 3 -name 'libmoerun.so*' -path "$venv/lib*" -exec rm -f {} +
unset MOERUN_LIBRARY
install_log="$build/python-cmake-install.log"
cmake --install "$build" --prefix "$venv" > "$install_log" 2>&1 || die "cmake --install $build failed (log: $install_log)"
[ -n "$(find "$venv" -maxdepth 3 -name 'libmoerun.so*' -path "$venv/lib*" -print -quit)" ] ||
  die "cmake --install put no libmoerun under $venv (log: $install_log)"
echo "libmoerun: installed into the venv prefix with cmake --install $build --prefix $venv"
echo "libmoerun used: $("$venv/bin/python" -c 'import moerun; print(moerun.library_path(), moerun.version())')"

export MOERUN_BUILD_DIR="$build"
# No bytecode or pytest cache next to the sources.
export PYTHONDONTWRITEBYTECODE=1
cd "$build"
echo "-- pytest (with numpy)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider -rs "$here/tests"
echo "-- pytest (numpy blocked)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider -rs --no-numpy "$here/tests"

echo "-- samples/python/generate.py"
model="$build/python-tests/sample-v3_bf16.moerun"
mkdir -p "$build/python-tests"
"$build/moerun" convert "$root/tests/data/golden/v3_bf16" -o "$model" >/dev/null
"$venv/bin/python" "$root/samples/python/generate.py" "$model" --ids 0,17,42 --max-tokens 16 \
  --temperature 0.7 --top-p 0.9 --seed 1
echo "python binding: OK"
