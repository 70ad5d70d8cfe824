#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang + ASan + UBSan into build-fuzz and runs each for
# SECONDS on a scratch copy of its seed corpus plus its regression inputs:  scripts/fuzz.sh [SECONDS]
# SECONDS defaults to 60; 0 only replays the seeds and regressions once (libFuzzer reads a time
# limit of 0 as "forever"). Exits non-zero if any target crashes, leaks, times out or runs out of
# memory; the input that did it is left in build-fuzz/artifacts/<target>/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
secs="${1:-60}"
[[ "$secs" =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
scripts/setup.sh
jobs="$(nproc 2>/dev/null || echo 2)"
export CCACHE_DIR="${CCACHE_DIR:-$root/.cache/ccache}"
build="$root/build-fuzz"
targets=(moerun_file safetensors safetensors_index hf_config)

echo "== build (clang, libFuzzer + ASan + UBSan)"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMOERUN_FUZZ=ON -DMOERUN_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" --target moerun_fuzz_targets -j "$jobs"

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
failed=()
summary=()
for t in "${targets[@]}"; do
  work="$build/runs/$t"
  corpus="$work/corpus"
  artifacts="$build/artifacts/$t"
  rm -rf "$work"
  mkdir -p "$corpus" "$artifacts"
  # Regressions first so a reappearing crash is found at startup. Dotfiles (.gitkeep) are skipped.
  find tests/fuzz/corpus/"$t" tests/fuzz/regressions/"$t" -maxdepth 1 -type f ! -name '.*' \
    -exec cp -t "$corpus" {} +
  if [ "$t" = moerun_file ]; then "$build/tests/fuzz/fuzz_make_moerun_seeds" "$corpus"; fi
  if [ "$secs" = 0 ]; then limit=(-runs=0); else limit=(-max_total_time="$secs"); fi
  echo "== fuzz_$t (${secs}s, $(ls "$corpus" | wc -l) inputs)"
  log="$work/fuzz.log"
  # TMPDIR: the index target builds its scratch checkpoint there.
  if TMPDIR="$work" "$build/tests/fuzz/fuzz_$t" "${limit[@]}" -timeout=10 -rss_limit_mb=2048 \
       -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
    tail -n 60 "$log"
    echo "fuzz_$t failed; reproducer(s) in $artifacts/ (log: $log)."
    echo "Once fixed, copy the reproducer to tests/fuzz/regressions/$t/."
  fi
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
  summary+=("$(printf '%-24s %-7s %12s execs %8s exec/s' "fuzz_$t" "$status" "${execs:-?}" "${rate:-?}")")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
