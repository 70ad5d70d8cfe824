#!/usr/bin/env bash
# The main job end to end: install, build, convert a tiny DeepSeek-V3-architecture checkpoint that the
# repo ships (tests/data/golden/v3_bf16: random weights, real hub layout, 2 shards + index, MTP layer),
# and generate tokens from it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
export CCACHE_DIR="${CCACHE_DIR:-$root/.cache/ccache}"
scripts/build.sh "$root/build" >/dev/null
moerun="$root/build/moerun"
out="$root/build/demo"
mkdir -p "$out"
echo "== convert"
"$moerun" convert tests/data/golden/v3_bf16 -o "$out/v3_tiny.moerun"
echo "== inspect"
# Into a file first: with pipefail, `inspect | head` fails whenever head exits before inspect is done.
"$moerun" inspect "$out/v3_tiny.moerun" > "$out/inspect.txt"
head -n 9 "$out/inspect.txt"
echo "== generate (greedy)"
"$moerun" run "$out/v3_tiny.moerun" --ids 0,17,42,99,7 --max-tokens 24 --greedy
echo "== generate (temperature 0.8, top-k 40, top-p 0.95, seed 7)"
"$moerun" run "$out/v3_tiny.moerun" --ids 0,17,42,99,7 --max-tokens 24 --temperature 0.8 --top-k 40 --top-p 0.95 --seed 7
