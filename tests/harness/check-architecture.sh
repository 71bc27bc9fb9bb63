#!/usr/bin/env bash
# make lint: docs/architecture.md names every file under plugins/ (it is the map of the codebase).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
missing=0
while IFS= read -r file; do
  name=$(basename "$file")
  if ! grep -qF "$name" "$top/docs/architecture.md"; then
    echo "docs/architecture.md does not name plugins/$file" >&2
    missing=1
  fi
done < <(cd "$top/plugins" && find . -name '*.py' ! -name '__init__.py' | sed 's|^\./||' | sort)
exit "$missing"
