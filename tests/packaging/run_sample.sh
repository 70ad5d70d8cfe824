#!/usr/bin/env bash
# Runs a sample program on a model and checks that it exited 0 and printed generated token ids:
#   run_sample.sh PROGRAM MODEL.moerun
# The samples print the generated ids on one line, optionally after a label ("generated: 5 17 2");
# requiring at least one id catches a loop that silently produces nothing.
set -euo pipefail
program="${1:?usage: run_sample.sh PROGRAM MODEL}"
model="${2:?usage: run_sample.sh PROGRAM MODEL}"
out="$("$program" "$model")" || { rc=$?; echo "run_sample: $program exited $rc" >&2; exit 1; }
printf '%s\n' "$out"
if ! grep -Eq '^([A-Za-z ]+:)?( *[0-9]+)+ *$' <<<"$out"; then
  echo "run_sample: $program printed no line of token ids" >&2
  exit 1
fi
