#!/usr/bin/env bash
# The CPU speed benchmark of issue 3, outside CI (minutes, ~15 GB of disk): a random-weight
# checkpoint with DeepSeek-V2-Lite's layer shapes (8 layers, 9.2 GB bf16), converted to the CPU's
# int8 format, then `moerun bench` at 1 and 2 threads: prefill of 512 tokens, decode at batch 1, 4
# and 8 and at 4096 tokens of context, each against probes measured in the same process.
#
#   scripts/bench.sh [WORK_DIR]        (default /tmp/moerun-bench; kept for reruns)
# Environment: LAYERS (8), REPEAT (5), THREADS (1,2), WEIGHTS (int8), PRECISION (bf16); PREPARE_ONLY=1
# stops once the checkpoint and the model file are there (scripts/compare_llama_cpp.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/moerun-bench}"
layers="${LAYERS:-8}"
weights="${WEIGHTS:-int8}"
cd "$root"
scripts/setup.sh
export CCACHE_DIR="${CCACHE_DIR:-$root/.cache/ccache}"
scripts/build.sh "$root/build" >/dev/null
python3 -c "import numpy" 2>/dev/null || python3 -m pip install --quiet numpy
mkdir -p "$work"
ckpt="$work/v2lite${layers}"
model="$work/v2lite${layers}_${weights}.moerun"
if [[ ! -d "$ckpt" ]]; then  # generated aside and renamed, so an interrupted run is not reused
  rm -rf "$ckpt.partial"
  python3 scripts/make_random_model.py --shape v2-lite --layers "$layers" --out "$ckpt.partial"
  mv "$ckpt.partial" "$ckpt"
fi
if [[ ! -f "$model" ]]; then
  "$root/build/moerun" convert "$ckpt" -o "$model" --weights "$weights"
fi
[[ "${PREPARE_ONLY:-0}" == 1 ]] && exit 0
"$root/build/moerun" bench "$model" --precision "${PRECISION:-bf16}" --threads "${THREADS:-1,2}" \
  --repeat "${REPEAT:-5}" --gen 32 --prompt 512 --batch 1,4,8 --context 4096 --json | tee "$work/bench.json"
