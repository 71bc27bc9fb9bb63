#!/usr/bin/env bash
# ansible-test and the Python import path need the collection at
# .../ansible_collections/virtops/kvm. Mirror the work tree there (tracked and untracked files,
# without build output), so tests always run what is in the tree now.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
dest="${VIRTOPS_BUILD:?set VIRTOPS_BUILD (the Makefile does)}/ansible_collections/virtops/kvm"
mkdir -p "$dest"
rm -rf "$dest/.ansible"
rsync -a --delete \
  --exclude /.git --exclude /.build --exclude /.venv --exclude __pycache__ \
  --exclude /.ansible --exclude .pytest_cache --exclude .ruff_cache --exclude .hypothesis --exclude /tests/output \
  --exclude '/virtops-kvm-*.tar.gz' \
  "$top/" "$dest/"
cache=${VIRTOPS_TEST_CACHE:-/var/cache/virtops-kvm-tests}
# ansible-test passes targets almost no environment: the lab's settings (tests/lab/lib.sh's defaults) go here
lab=${VIRTOPS_LAB_DIR:-$cache/lab}
cat > "$dest/tests/integration/integration_config.yml" <<YML
---
virtops_test_cache: $cache
virtops_test_guest_dir: $cache/guest
virtops_lab_dir: $lab
virtops_lab_port: ${VIRTOPS_LAB_PORT:-10022}
virtops_lab_status: ${VIRTOPS_LAB_STATUS:-$lab/status}
YML
echo "$dest"
