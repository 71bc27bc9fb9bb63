#!/usr/bin/env bash
# make test-fresh: run the whole `make test` (through .ci/run) inside a freshly debootstrapped
# Debian 12 root, so a dependency that only this machine happens to have shows up as a failure.
#
# The root holds what debootstrap gives and an export of the checkout's HEAD (git archive: what is
# committed is what is tested); everything else is installed by the project's own scripts. The
# debootstrap result is cached as a tarball under $VIRTOPS_TEST_CACHE/fresh and unpacked into a
# pristine directory on every run. The root runs in its own namespaces, so nothing in it clashes
# with this machine's own libvirtd and tests:
#   network  own network namespace, reaching the package archives through pasta (user-mode
#            networking, no host firewall rule); libvirt's bridges, dnsmasq, iptables rules and
#            the lab VM's forwarded port stay inside it
#   mount    the root as / (pivot_root; the host's tree is not in the namespace at all), its own
#            /run (libvirtd's sockets and pid files), /dev (a tmpfs with the device nodes a
#            machine has, /dev/kvm 0600 root:root as on a new machine), /proc, /sys, devpts
#   pid      libvirtd.sh's pgrep sees only the root's daemons; when the run ends, everything it
#            started (libvirtd, guests, the lab VM) ends with it
# Shared with the host, because they are the host kernel's: loop devices, cgroups, hugepages, KSM.
#
# Usage: test-fresh.sh            (prints the wall time; exits with make test's status)
#        VIRTOPS_FRESH_COMMAND='ls -l /dev' runs that instead of .ci/run (to check the root itself)
#        VIRTOPS_FRESH_KEEP_GOING=0 to stop at the first failing layer (default: make -k, so one
#        run reports every layer)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
suite=bookworm
mirror=${VIRTOPS_FRESH_MIRROR:-http://deb.debian.org/debian}
cache=${VIRTOPS_TEST_CACHE:-/var/cache/virtops-kvm-tests}/fresh
# Bump when the debootstrap recipe changes so the cached tarball is rebuilt.
base_version=1
base=$cache/$suite-base-v$base_version.tar
root=$cache/root
out=$top/tests/output/fresh

log() { printf 'test-fresh: %s\n' "$*" >&2; }

# ---- inside the private mount and pid namespaces (re-executed by the outer part) ----
if [ "${1:-}" = --inside ]; then
  root=$2
  # the root a mount point of its own: `ip netns` makes / a slave mount, which needs one
  mount --bind "$root" "$root"
  mount -t proc proc "$root/proc"
  # a sysfs of this network namespace (/sys/class/net lists the root's interfaces, not the host's)
  mount -t sysfs sysfs "$root/sys"
  mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
  mount -t tmpfs -o mode=0755,nosuid,size=64m dev "$root/dev"
  node() {  # name mode group: the host's device numbers, the fresh machine's permissions
    local name=$1 mode=$2 group=$3 host=/dev/$1
    [ -e "$host" ] || return 0
    local type=c
    [ -b "$host" ] && type=b
    mkdir -p "$(dirname "$root/dev/$name")"
    mknod -m "$mode" "$root/dev/$name" "$type" $((16#$(stat -c %t "$host"))) $((16#$(stat -c %T "$host")))
    chgrp "$group" "$root/dev/$name"  # numeric: the root's static gids (0 root, 6 disk)
  }
  for spec in "null 666 0" "zero 666 0" "full 666 0" "random 666 0" "urandom 666 0" "tty 666 0" \
    "kvm 600 0" "net/tun 666 0" "fuse 666 0" "loop-control 660 6" "hwrng 600 0" "vhost-net 600 0" \
    "vhost-vsock 600 0" "userfaultfd 600 0"; do
    # shellcheck disable=SC2086  # three words
    node $spec
  done
  # loop devices: the kernel creates loopN when its node is opened, so give the nodes up front
  for n in $(seq 0 63); do
    mknod -m 660 "$root/dev/loop$n" b 7 "$n"
    chgrp 6 "$root/dev/loop$n"
  done
  ln -s /proc/self/fd "$root/dev/fd"
  ln -s /proc/self/fd/0 "$root/dev/stdin"
  ln -s /proc/self/fd/1 "$root/dev/stdout"
  ln -s /proc/self/fd/2 "$root/dev/stderr"
  mkdir "$root/dev/pts" "$root/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
  ln -s pts/ptmx "$root/dev/ptmx"
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
  mount -t tmpfs -o mode=0755,nosuid,nodev,size=256m run "$root/run"
  mkdir -p "$root/run/lock"
  chmod 1777 "$root/run/lock"
  # The root becomes this namespace's / (pivot_root), and the host's tree is detached: a chroot is not
  # enough. libvirt's per-guest /dev (qemu.conf namespaces) adds devices from inside the guest's mount
  # namespace (setns), which puts a process at the namespace's real /, not at a chroot: under chroot
  # it wrote into the host's devtmpfs (the host's /dev/kvm chgrp'd to the root's kvm gid, the host's
  # /dev/ptmx replaced by a symlink) and the guest's own /dev lacked the device (an rng backend's
  # /dev/urandom: "Could not open '/dev/urandom'").
  mkdir -p "$root/.host"
  cd "$root"
  pivot_root . .host
  umount -l /.host
  rmdir /.host
  keep_going=--keep-going
  [ "${VIRTOPS_FRESH_KEEP_GOING:-1}" = 1 ] || keep_going=
  exec /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb MAKEFLAGS="$keep_going" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "cd /root/virtops-kvm && ${VIRTOPS_FRESH_COMMAND:-exec .ci/run}"
fi

# ---- outside: prepare the root and the namespaces ----
[ "$(id -u)" -eq 0 ] || { log "needs root (debootstrap, mounts, namespaces)"; exit 1; }
if [ -d /run/systemd/system ]; then
  log "note: systemd-nspawn would also do; this script uses plain namespaces + pivot_root so it runs where PID 1 is not systemd"
fi
missing=()
for tool in debootstrap:debootstrap pasta:passt unshare:util-linux ip:iproute2 git:git; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing on this machine (to build and connect the root): ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$cache" "$out"
if [ ! -s "$base" ]; then
  log "debootstrap $suite (cached as $base for the next runs)"
  rm -rf "$cache/build"
  debootstrap "$suite" "$cache/build" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { log "debootstrap failed, see $cache/debootstrap.log"; exit 1; }
  rm -f "$cache/build/etc/resolv.conf" "$cache/build"/var/cache/apt/archives/*.deb
  tar -C "$cache/build" -cpf "$base.part" . && mv "$base.part" "$base"
  rm -rf "$cache/build"
fi

log "pristine root from $base"
rm -rf "$root"
mkdir -p "$root"
tar -C "$root" -xpf "$base"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The network's trust anchors are the site's, not the project's: where HTTPS goes through an
# intercepting proxy, the host's CA bundle is what lets pip reach PyPI (a new machine at the same
# site has it too). Only the bundle and pip's pointer to it are copied, no package index or wheels.
# The site's extra certificates (those in this machine's bundle that the root's does not have) also
# go to /usr/local/share/ca-certificates, or the first apt install that runs update-ca-certificates
# rebuilds the bundle without them.
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
  python3 - /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" "$root/usr/local/share/ca-certificates" <<'PY'
import re, sys
def certs(path):
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", handle.read(), re.S)
    except FileNotFoundError:
        return []
known = set(certs(sys.argv[2]))
for number, cert in enumerate(c for c in certs(sys.argv[1]) if c not in known):
    with open("%s/site-%d.crt" % (sys.argv[3], number), "w", encoding="ascii") as handle:
        handle.write(cert + "\n")
PY
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
fi
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n' "$(hostname)" >"$root/etc/hosts"
head=$(git -C "$top" rev-parse --short HEAD)
if [ -n "$(git -C "$top" status --porcelain --untracked-files=no)" ]; then
  log "the checkout has uncommitted changes: they are NOT in the root (it tests HEAD $head)"
fi
mkdir -p "$root/root/virtops-kvm"
git -C "$top" archive --format=tar HEAD | tar -C "$root/root/virtops-kvm" -xf -

ns=virtops-fresh-$$
pasta_pid=
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  if [ -n "$pasta_pid" ]; then kill "$pasta_pid" 2>/dev/null || true; fi
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$ns"
# user-mode networking for the namespace (apt and PyPI); no port of the root is forwarded to the host
pasta --config-net -q --runas 0:0 -t none -u none -T none -U none -P "$cache/pasta.pid" -l "$cache/pasta.log" \
  --netns "/run/netns/$ns" 2>/dev/null
pasta_pid=$(cat "$cache/pasta.pid")

log "running ${VIRTOPS_FRESH_COMMAND:-.ci/run (make test)} of $head in the root; output in $out/run.log"
start=$(date +%s)
rc=0
nsenter --net="/run/netns/$ns" -- unshare --mount --propagation private --pid --fork --kill-child \
  "$here/test-fresh.sh" --inside "$root" 2>&1 | tee "$out/run.log" || rc=$?
wall=$(( $(date +%s) - start ))

# what the run left for reading: its tests/output and the mirror's (integration logs)
cp -a "$root/root/virtops-kvm/tests/output/." "$out/" 2>/dev/null || true
for mirror_out in "$root"/tmp/virtops-kvm-build-*/ansible_collections/virtops/kvm/tests/output; do
  [ -d "$mirror_out" ] && cp -a "$mirror_out/." "$out/"
done
summary="make test in a fresh $suite root (HEAD $head): exit $rc, wall time $((wall / 60)) min $((wall % 60)) s"
printf '%s\n' "$summary" | tee "$out/summary.txt"
exit "$rc"
