#!/usr/bin/env bash
# Packaging checks that need no container runtime (part of `make test` through `make package`):
#  - the execution environment: `ansible-builder introspect` of the installed collection yields
#    exactly requirements.txt and bindep.txt (what meta/execution-environment.yml declares), and
#    `ansible-builder create` of docs/awx/execution-environment.yml generates a complete build context;
#  - galaxy-importer accepts the built tarball with no warning (ansible-test off: it needs a container);
#  - antsibull-changelog lint passes.
# Usage: check.sh COLLECTION_DIR TARBALL
set -euo pipefail
coll=${1:?usage: check.sh COLLECTION_DIR TARBALL}
tarball=$(realpath "${2:?usage: check.sh COLLECTION_DIR TARBALL}")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() { echo "package: $*" >&2; exit 1; }
lines() { sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$1" | sort; }

# -- execution environment ---------------------------------------------------------------------
# --force: with the collection already on ANSIBLE_COLLECTIONS_PATH, ansible-galaxy would install nothing here
ansible-galaxy collection install --force -p "$tmp/collections" "$tarball" >/dev/null 2>&1
ansible-builder introspect --sanitize --write-pip "$tmp/ee-python.txt" --write-bindep "$tmp/ee-system.txt" \
  "$tmp/collections" >"$tmp/introspect.yml"
# introspection appends "# from collection virtops.kvm" to each line
sed -i 's/[[:space:]]*# from collection.*//' "$tmp/ee-python.txt" "$tmp/ee-system.txt"
diff <(lines "$coll/requirements.txt") <(lines "$tmp/ee-python.txt") >"$tmp/d1" \
  || fail "the execution environment's Python dependencies differ from requirements.txt: $(cat "$tmp/d1")"
diff <(lines "$coll/bindep.txt") <(lines "$tmp/ee-system.txt") >"$tmp/d2" \
  || fail "the execution environment's system dependencies differ from bindep.txt: $(cat "$tmp/d2")"
ansible-builder create -f "$coll/docs/awx/execution-environment.yml" -c "$tmp/context" --output-filename Containerfile >/dev/null
for f in Containerfile _build/requirements.yml _build/scripts/introspect.py _build/scripts/assemble; do
  [ -f "$tmp/context/$f" ] || fail "ansible-builder create made no $f"
done
grep -q 'virtops.kvm' "$tmp/context/_build/requirements.yml" || fail "the EE build context does not install virtops.kvm"
echo "package: execution environment: dependencies match requirements.txt and bindep.txt; build context created"

# -- galaxy-importer ---------------------------------------------------------------------------
printf '[galaxy-importer]\nRUN_ANSIBLE_TEST = False\nRUN_ANSIBLE_LINT = True\nRUN_FLAKE8 = False\nLOG_LEVEL_MAIN = INFO\n' >"$tmp/importer.cfg"
# the importer writes importer_result.json into its working directory
(cd "$tmp" && GALAXY_IMPORTER_CONFIG="$tmp/importer.cfg" python -m galaxy_importer.main "$tarball") >"$tmp/importer.log" 2>&1 \
  || fail "galaxy-importer rejected the tarball: $(grep -v '^Loading' "$tmp/importer.log" | tail -5)"
# "Loading module_utils _errors.py" is a file name, not a finding
if grep -v '^Loading ' "$tmp/importer.log" | grep -qiE 'warning|error'; then
  fail "galaxy-importer warned: $(grep -v '^Loading ' "$tmp/importer.log" | grep -iE 'warning|error' | head -10)"
fi
grep -q 'Importer processing completed successfully' "$tmp/importer.log" || fail "galaxy-importer did not complete: $(tail -3 "$tmp/importer.log")"
echo "package: galaxy-importer accepted the tarball with no warnings"

# -- changelog ---------------------------------------------------------------------------------
(cd "$coll" && antsibull-changelog lint) || fail "antsibull-changelog lint failed"
echo "package: antsibull-changelog lint passed"
