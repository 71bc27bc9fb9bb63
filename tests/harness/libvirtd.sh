#!/usr/bin/env bash
# Start or stop the libvirt daemons for the tests. With systemd, systemctl does it; without
# (containers, CI sandboxes), virtlogd and libvirtd are started by hand. "stop" stops only what
# "start" started, so a developer's running libvirtd is left alone.
set -euo pipefail
state=/run/virtops-kvm-tests.started
uri=qemu:///system

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
    if virsh -c "$uri" version >/dev/null 2>&1; then
      echo "libvirtd.sh: libvirtd already running"
      exit 0
    fi
    if [ -d /run/systemd/system ]; then
      systemctl start virtlogd.socket libvirtd.service
      echo systemd > "$state"
    else
      mkdir -p /run/libvirt
      pgrep -x virtlogd >/dev/null || virtlogd -d
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
        pid=$(cat "/run/$daemon.pid" 2>/dev/null || pgrep -xo "$daemon" || true)
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
