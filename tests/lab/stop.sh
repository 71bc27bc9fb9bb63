#!/usr/bin/env bash
# Stop the lab VM started by start.sh (its pid file only) and mark the lab as not running.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

pidfile=$LAB_RUN/qemu.pid
if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && grep -q virtops-lab "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
fi
rm -f "$LAB_RUN/overlay.qcow2"
if [ -f "$LAB_STATUS" ]; then
    printf 'stopped\n' >"$LAB_STATUS"
fi
log "stopped"
