#!/usr/bin/env bash
# Fails if a shared library exports any defined dynamic symbol outside the moerun_ namespace:
#   check_exports.sh LIBRARY
# Only the C ABI may be visible (runtime/exports.map); a leaked C++ or third-party symbol could
# clash with the application's own copy of that code.
set -euo pipefail
lib="${1:?usage: check_exports.sh LIBRARY}"
[ -f "$lib" ] || { echo "check_exports: no such file: $lib" >&2; exit 2; }

# nm prints "VALUE TYPE NAME"; version nodes of a versioned script show as type A and are not code.
# A symbol may carry "@VERSION" or "@@VERSION", which is not part of its name.
symbols="$(nm -D --defined-only "$lib")"
names="$(awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' <<<"$symbols")"
[ -n "$names" ] || { echo "check_exports: $lib exports nothing" >&2; exit 1; }
leaked="$(grep -v '^moerun_' <<<"$names" || true)"
if [ -n "$leaked" ]; then
  echo "check_exports: $(basename "$lib") exports symbols outside moerun_*: [$(paste -sd' ' <<<"$leaked")]" >&2
  exit 1
fi
echo "check_exports: $(basename "$lib"): $(wc -l <<<"$names") symbols, all moerun_*"
