#!/usr/bin/env bash
# moerun against llama.cpp on this host with the same model shapes, outside CI (8 min measured with
# llama.cpp already built and the files made; a first run also downloads and builds llama.cpp and
# converts the checkpoint twice. ~28 GB of disk at the peak: the bf16 checkpoint, the BF16 and Q8_0
# GGUFs and the moerun file): the random-weight checkpoint of scripts/bench.sh (DeepSeek-V2-Lite's layer
# shapes, LAYERS layers) as moerun's int8 file and as llama.cpp's Q8_0 GGUF (8.5 bits per weight:
# an f16 scale per 32), then, one after the other, llama-bench and `moerun bench`: decode at batch 1
# from a short context (llama-bench tg64: 64 tokens from an empty cache; moerun: 64 steps after an
# 8-token prompt) and a 512-token prefill, at each of THREADS.
#
#   scripts/compare_llama_cpp.sh [WORK_DIR]   (default /tmp/moerun-bench, shared with bench.sh)
# Environment: LAYERS (8), REPEAT (5), THREADS (1,2), LLAMA_CPP_PYTHON (0.3.16).
#
# llama.cpp comes from the llama-cpp-python source package on PyPI (it vendors llama.cpp), built for
# this CPU with its defaults. Its loader takes a DeepSeek-V2 file as Lite (q_proj, no q LoRA) only at
# 27 layers, so for another layer count that one test is widened in the copy built here. The GGUF is
# written by scripts/hf_to_gguf.py with llama.cpp's own gguf-py, then quantised by llama-quantize.
# Both files are evicted from the page cache first, so each tool maps its file as a fresh load would.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/moerun-bench}"
layers="${LAYERS:-8}"
threads="${THREADS:-1,2}"
repeat="${REPEAT:-5}"
version="${LLAMA_CPP_PYTHON:-0.3.16}"
PREPARE_ONLY=1 LAYERS="$layers" WEIGHTS=int8 "$root/scripts/bench.sh" "$work"
ckpt="$work/v2lite${layers}"
model="$work/v2lite${layers}_int8.moerun"

src="$work/llama-cpp-python-$version/vendor/llama.cpp"
if [[ ! -x "$src/build/bin/llama-bench" ]]; then
  python3 -m pip download --quiet --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
  tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
  mv "$work/llama_cpp_python-$version" "$work/llama-cpp-python-$version"
  if [[ "$layers" != 27 ]]; then
    sed -i "s/(hparams.n_layer == 27)/(hparams.n_layer == 27 || hparams.n_layer == $layers)/" \
      "$src/src/llama-model.cpp"
    if ! grep -q "hparams.n_layer == $layers)" "$src/src/llama-model.cpp"; then
      echo "compare_llama_cpp.sh: llama.cpp $version has no 27-layer Lite test to widen; use LAYERS=27" >&2
      exit 1
    fi
  fi
  cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$src/build" -j "$(nproc)" --target llama-bench llama-quantize >/dev/null
fi
gguf="$work/v2lite${layers}-q8_0.gguf"
if [[ ! -f "$gguf" ]]; then
  python3 "$root/scripts/hf_to_gguf.py" "$ckpt" "$work/v2lite${layers}-bf16.gguf" "$src/gguf-py"
  if ! "$src/build/bin/llama-quantize" "$work/v2lite${layers}-bf16.gguf" "$gguf.partial" Q8_0 \
    >"$work/llama-quantize.log" 2>&1; then
    tail -n 5 "$work/llama-quantize.log" >&2
    exit 1
  fi
  mv "$gguf.partial" "$gguf"
  rm -f "$work/v2lite${layers}-bf16.gguf"
fi

dd if="$gguf" iflag=nocache count=0 status=none
dd if="$model" iflag=nocache count=0 status=none
echo "== llama.cpp (from llama-cpp-python $version)"
"$src/build/bin/llama-bench" -m "$gguf" -t "$threads" -p 512 -n 64 -r "$repeat" -o md
echo "== moerun"
"$root/build/moerun" bench "$model" --threads "$threads" --repeat "$repeat" --prompt 512 --gen 64 --batch 1
