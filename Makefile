# virtops.kvm — the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

VENV ?= $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export VIRTOPS_TEST_CACHE ?= /var/cache/virtops-kvm-tests
# ansible-test needs the tree at .../ansible_collections/virtops/kvm and outside any git checkout
# (inside one it lists files with git); the mirror lives in a directory named after this checkout.
export VIRTOPS_BUILD ?= /tmp/virtops-kvm-build-$(shell printf %s '$(CURDIR)' | cksum | cut -d' ' -f1)
COLL := $(VIRTOPS_BUILD)/ansible_collections/virtops/kvm
# the lab VM's targets run from a copy of the mirror, beside this machine's (make integration)
LABCOLL := $(VIRTOPS_BUILD)-lab/ansible_collections/virtops/kvm
HARNESS := $(CURDIR)/tests/harness

.PHONY: test test-fresh bench reliability-doc deps collection lint sanity units package integration guest demo build docs clean

## test: everything CI runs, in order: lint, sanity, unit tests, packaging, the docs site, integration tests
test: lint sanity units package docs integration

## test-fresh: `make test` inside a freshly debootstrapped Debian 12 root (not part of `make test`)
test-fresh:
	$(HARNESS)/test-fresh.sh

## deps: Debian packages and the virtualenv (idempotent)
deps:
	$(HARNESS)/setup-host.sh

collection: deps
	$(HARNESS)/sync-collection.sh >/dev/null

lint: collection
	ruff check plugins tests benchmarks docs
	ruff format --check plugins tests benchmarks docs
	# docs/reliability.md is generated from the tests (make reliability-doc rewrites it)
	python tests/reliability/render.py --check
	$(HARNESS)/check-architecture.sh
	# from inside the mirror, ansible-lint sees the collection in place and installs no copy of it;
	# its project cache (.ansible/) must not outlive it, or sanity would test that copy too
	cd $(COLL)
	trap 'rm -rf $(COLL)/.ansible' EXIT
	ansible-lint --profile production roles playbooks docs/guides extensions

sanity: collection
	cd $(COLL)
	ansible-test sanity --venv --python 3.11 --color no

units: collection
	# a few unit tests use the real libvirtd where libvirt's test driver lacks a feature (secrets)
	$(HARNESS)/libvirtd.sh start
	trap '$(HARNESS)/libvirtd.sh stop' EXIT
	cd $(COLL)
	PYTHONPATH=$(VIRTOPS_BUILD) $(HARNESS)/pytest.sh pytest -q -p no:cacheprovider tests/unit

guest: deps
	$(HARNESS)/build-guest.sh
	# the Debian cloud image the kvm_guest role's tests and the demo boot (cached on the script's hash)
	tests/images/build-cloud-image.sh

## integration: real libvirtd (started here if needed, stopped afterwards) and real TCG guests
integration: collection guest
	$(HARNESS)/libvirtd.sh start
	trap '$(HARNESS)/libvirtd.sh stop' EXIT
	# the lab VM (tests/lab) boots only when a selected target needs it; it writes a status file that
	# says "ready" or why it cannot run, and its targets are skipped with that reason
	lab= host=
	for target in $${VIRTOPS_TARGETS:-$$(ls tests/integration/targets)}; do
	  case $$target in setup_*) continue ;; esac
	  if grep -qx 'needs/lab' "tests/integration/targets/$$target/aliases" 2>/dev/null; then lab=1; else host=1; fi
	done
	if [ -n "$$lab" ]; then
	  export VIRTOPS_LAB_STATUS=$$($(CURDIR)/tests/lab/start.sh)
	  trap '$(CURDIR)/tests/lab/stop.sh; $(HARNESS)/libvirtd.sh stop' EXIT
	  echo "lab: $$(cat "$$VIRTOPS_LAB_STATUS")"
	fi
	mkdir -p $(CURDIR)/tests/output
	# ansible-test makes its ssh key pair (~/.ansible/test/id_rsa) on its first run. On a new machine the two halves
	# below would make it at the same time, and the second ssh-keygen stops at "id_rsa already exists. Overwrite
	# (y/n)?" (the lab half's first target failed so): it is made here first, the way ansible-test makes it.
	key=$$HOME/.ansible/test/id_rsa
	if [ ! -f "$$key" ] || [ ! -f "$$key.pub" ]; then
	  mkdir -p "$$(dirname "$$key")"
	  rm -f "$$key" "$$key.pub"
	  ssh-keygen -m PEM -q -t rsa -N '' -f "$$key"
	  sed -i -E 's/(BEGIN|END) PRIVATE KEY/\1 RSA PRIVATE KEY/' "$$key"
	fi
	# The lab's targets run inside the lab VM and this machine's targets on its libvirtd: the two halves share
	# nothing, so they run side by side (VIRTOPS_PART), the lab's from a mirror of its own (ansible-test keeps
	# its state in the collection's tests/output). conftest.py prints a per-target timing table for each half
	# and writes it to VIRTOPS_TIMING_FILE; the lab half's output follows this machine's.
	lab_rc=0 host_rc=0 lab_pid=
	if [ -n "$$lab" ]; then
	  mkdir -p $(LABCOLL)
	  rsync -a --delete $(COLL)/ $(LABCOLL)/
	  (cd $(LABCOLL) && VIRTOPS_PART=lab VIRTOPS_COLLECTION=$(LABCOLL) VIRTOPS_TIMING_FILE=$(CURDIR)/tests/output/integration-timing-lab.tsv \
	    $(HARNESS)/pytest.sh pytest -p no:cacheprovider -rs -v tests/harness/test_integration.py) >$(CURDIR)/tests/output/integration-lab.log 2>&1 &
	  lab_pid=$$!
	fi
	if [ -n "$$host" ]; then
	  (cd $(COLL) && VIRTOPS_PART=host VIRTOPS_COLLECTION=$(COLL) VIRTOPS_TIMING_FILE=$(CURDIR)/tests/output/integration-timing.tsv \
	    $(HARNESS)/pytest.sh pytest -p no:cacheprovider -rs -v tests/harness/test_integration.py) || host_rc=$$?
	fi
	if [ -n "$$lab_pid" ]; then
	  wait "$$lab_pid" || lab_rc=$$?
	  echo "==== the lab VM's targets (tests/output/integration-lab.log) ===="
	  cat $(CURDIR)/tests/output/integration-lab.log
	fi
	echo "integration: this machine's targets exit $$host_rc, the lab's exit $$lab_rc"
	[ "$$host_rc" -eq 0 ] && [ "$$lab_rc" -eq 0 ]

## demo: provision this machine as a KVM host, boot a Debian guest on it and run a command in it over ssh
demo: collection guest
	$(HARNESS)/libvirtd.sh start
	ANSIBLE_COLLECTIONS_PATH=$(VIRTOPS_BUILD) ansible-playbook -i localhost, \
	  -e virtops_image_dir=$(VIRTOPS_TEST_CACHE)/cloud-image \
	  playbooks/demo.yml

## build: the collection tarball
build: collection
	ansible-galaxy collection build --force $(COLL)

## package: the built tarball installs, every module's documentation renders, and an installed module runs
package: collection
	tmp=$$(mktemp -d)
	trap 'rm -rf "$$tmp"' EXIT
	ansible-galaxy collection build --output-path "$$tmp" $(COLL) >/dev/null
	ansible-galaxy collection install --force -p "$$tmp/installed" "$$tmp"/virtops-kvm-*.tar.gz 2>&1 | grep -v "is not part of the configured" || true
	export ANSIBLE_COLLECTIONS_PATH="$$tmp/installed"
	modules=$$(ansible-doc -t module -l virtops.kvm | awk '{print $$1}')
	[ -n "$$modules" ] || { echo "package: the installed collection lists no modules" >&2; exit 1; }
	ansible-doc -t module $$modules >/dev/null
	ansible localhost -i localhost, -c local -e ansible_python_interpreter=$(VENV)/bin/python -m virtops.kvm.host_info -a 'gather=cpu,numa' | grep -q '"node_count"'
	echo "package: built, installed, $$(echo $$modules | wc -w) modules documented, host_info ran from the installed copy"
	ansible-doc -t inventory virtops.kvm.libvirt >/dev/null
	ansible-doc -t filter virtops.kvm.kvm_guest_plan >/dev/null
	ansible-doc -t role virtops.kvm.kvm_host >/dev/null
	ansible-doc -t role virtops.kvm.kvm_guest >/dev/null
	$(CURDIR)/tests/packaging/check.sh $(COLL) "$$tmp"/virtops-kvm-*.tar.gz

## docs: the documentation site (antsibull-docs and Sphinx, warnings are errors) in tests/output/docs
docs: collection
	python docs/guides/render.py --check
	ANSIBLE_COLLECTIONS_PATH=$(VIRTOPS_BUILD) docs/docsite/build.sh $(CURDIR)/tests/output/docs

## bench: the benchmarks, side by side (not part of make test); writes docs/benchmarks.md (BENCH_ARGS="--only p2" for one part)
bench: collection
	$(HARNESS)/libvirtd.sh start
	trap '$(HARNESS)/libvirtd.sh stop' EXIT
	python benchmarks/run.py $(BENCH_ARGS)

## reliability-doc: regenerate docs/reliability.md from the tests' bad-input and fault cases
reliability-doc:
	python tests/reliability/render.py

clean:
	rm -rf $(VIRTOPS_BUILD) $(VIRTOPS_BUILD)-lab tests/output virtops-kvm-*.tar.gz
