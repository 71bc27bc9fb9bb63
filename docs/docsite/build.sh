#!/usr/bin/env bash
# Build the collection's HTML documentation site with antsibull-docs and Sphinx, warnings as errors.
# Usage: build.sh OUTDIR   (the collection must be on ANSIBLE_COLLECTIONS_PATH as virtops.kvm)
# Every module, role and plugin page comes from the collection itself (DOCUMENTATION, role argument
# specs); the guides and reference pages come from docs/docsite/extra-docs.yml and rst/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR}
rm -rf "$out"
mkdir -p "$out/rst"
chmod og-w "$out/rst"  # antsibull-docs wants its output directory writable only by itself
antsibull-docs lint-collection-docs --plugin-docs --skip-rstcheck "$(ansible-galaxy collection list virtops.kvm --format json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(next(iter(d)))')/virtops/kvm"
antsibull-docs --config-file "$here/antsibull-docs.cfg" collection --cleanup everything --fail-on-error --use-current \
  --dest-dir "$out/rst" virtops.kvm
cp "$here/site/ansible_references.rst" "$out/rst/"
cat > "$out/rst/index.rst" <<'RST'
.. _docsite_root_index:

virtops.kvm
===========

KVM hypervisors and their guests, end to end, with Ansible.

.. toctree::
   :maxdepth: 2
   :caption: Collection:

   collections/virtops/kvm/index

.. toctree::
   :maxdepth: 1
   :caption: Indexes:
   :glob:

   collections/index_*
   collections/environment_variables
   ansible_references
RST
sphinx-build -M html "$out/rst" "$out/build" -c "$here" -W --keep-going -q
echo "docs: built $(find "$out/build/html" -name '*.html' | wc -l) pages in $out/build/html"
