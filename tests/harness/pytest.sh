#!/usr/bin/env bash
# Run pytest; its exit code 5 ("collected nothing") is reported and treated as a failure of the
# suite layout, never as silent success.
set -uo pipefail
"$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests for: ${*: -1}. Every suite here must have tests; check the path and markers." >&2
  exit 1
fi
exit "$rc"
