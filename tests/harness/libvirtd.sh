#!/usr/bin/env bash
# Start or stop the libvirt daemons for the tests. With systemd, systemctl does it; without
# (containers, CI sandboxes), virtlogd and libvirtd are started by hand. "stop" stops only what
# "start" started, so a developer's running libvirtd is left alone.
set -euo pipefail
state=/run/virtops-kvm-tests.started
uri=qemu:///system

# libvirt's QEMU driver runs QEMU as libvirt-qemu (group kvm). A new Debian machine without udev
# running leaves /dev/kvm 0600 root:root; libvirt 9.0 then finds at every call that "KVM was enabled
# when probing qemu-system-x86_64, but it is not available now", throws its capabilities cache away
# and probes QEMU again: getCapabilities 7.9 s, defineXML 48 s instead of 0.01-0.02 s. Give /dev/kvm
# to group kvm (what udev's rule does on a normal host) before libvirtd starts. Guests still run TCG.
kvm_usable() {
  [ -c /dev/kvm ] || return 0
  getent group kvm >/dev/null || return 0
  local mode group
  mode=$(stat -c %a /dev/kvm)
  group=$(stat -c %G /dev/kvm)
  if [ "$group" = root ] && [ $(( 8#$mode & 8#060 )) -ne $(( 8#060 )) ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "libvirtd.sh: /dev/kvm is $mode root:root; as root run: chgrp kvm /dev/kvm; chmod 0660 /dev/kvm (libvirt calls take seconds otherwise)" >&2
      return 0
    fi
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
    echo "libvirtd.sh: /dev/kvm was $mode root:root, now 0660 root:kvm (QEMU's group can open it)"
  fi
}

wait_ready() {
  for _ in $(seq 1 60); do
    virsh -c "$uri" version >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "libvirtd.sh: libvirtd did not answer on $uri within 30 s" >&2
  return 1
}

case "${1:-}" in
  start)
    kvm_usable
    if virsh -c "$uri" version >/dev/null 2>&1; then
      echo "libvirtd.sh: libvirtd already running"
      exit 0
    fi
    if [ -d /run/systemd/system ]; then
      systemctl start virtlogd.socket libvirtd.service
      echo systemd > "$state"
    else
      mkdir -p /run/libvirt
      # by its socket, not by process name: a virtlogd of another PID namespace (make test-fresh's root, a
      # container) shows in pgrep here but serves another /run
      [ -S /run/libvirt/virtlogd-sock ] || virtlogd -d
      libvirtd -d
      echo manual > "$state"
    fi
    wait_ready
    echo "libvirtd.sh: libvirtd started ($(cat "$state"))"
    ;;
  stop)
    [ -f "$state" ] || { echo "libvirtd.sh: not started by the harness, left running"; exit 0; }
    how=$(cat "$state")
    rm -f "$state"
    if [ "$how" = systemd ]; then
      systemctl stop libvirtd.service
    else
      for daemon in libvirtd virtlogd; do
        # only a daemon of this PID namespace: pgrep alone would also find (and this would kill) the daemons
        # of a make test-fresh root or a container running beside this run
        pid=$(cat "/run/$daemon.pid" 2>/dev/null || pgrep -xo --ns $$ --nslist pid "$daemon" || true)
        if [ -n "$pid" ]; then
          kill "$pid" 2>/dev/null || true
        fi
      done
    fi
    echo "libvirtd.sh: libvirtd stopped"
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
