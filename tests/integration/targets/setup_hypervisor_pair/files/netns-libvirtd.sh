#!/usr/bin/env bash
# Two private libvirt hypervisors on this machine, for migration tests.
#
#   netns-libvirtd.sh up     tear down what a killed run left, then start hypervisors a and b
#   netns-libvirtd.sh down   stop them, kill their QEMUs, delete their namespaces and directories
#   netns-libvirtd.sh exec a CMD...   run CMD inside hypervisor a's network namespace
#   netns-libvirtd.sh qemu-without b FEATURE   give b's daemon a QEMU whose TCG lacks the x86 CPU FEATURE
#   netns-libvirtd.sh qemu-restore b           give b's daemon the machine's QEMU again
#   netns-libvirtd.sh cpu-map-without b MODEL  restart b's daemon with a libvirt CPU map that lacks MODEL
#   netns-libvirtd.sh cpu-map-restore b        restart b's daemon with the machine's CPU map
#   netns-libvirtd.sh restart b                restart b's daemon: it reads its configuration again
#
# Each hypervisor is a libvirtd in its own network namespace (virtops-test-mig-a, -b, joined by a
# veth pair: 10.254.77.1/24 and 10.254.77.2/24), its own mount namespace (its own /run/libvirt,
# /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /etc/libvirt, bind-mounted from
# $root/<name>; /etc/libvirt is $root/<name>/root/etc/libvirt, so modules with a root option, such as
# libvirt_config, edit it with root=$root/<name>/root) and its own UTS namespace (hostname virtops-test-mig-<name>). Each has its own
# host UUID, listens on TCP (no auth) on its veth address only, and receives migrations on that
# address, so the migration stream never leaves the veth pair. QEMU runs as root without a
# security driver, cgroups or virtlogd (the serial and stdio logs are plain files).
# The system libvirtd (qemu:///system) is not touched: its sockets and state are hidden from the
# private daemons by the mounts, which exist only inside their mount namespaces.
#
# Clients reach them at qemu+tcp://10.254.77.1/system and qemu+tcp://10.254.77.2/system from
# inside either network namespace (the migration target runs its modules through the python
# wrapper $root/python-a: $VIRTOPS_MIG_PYTHON, or python3, inside namespace a), or from here at
# qemu+unix:///system?socket=$root/<name>/run/libvirt-sock.
# An older QEMU on one hypervisor (qemu-without): TCG gained AVX2 in QEMU 7.2, so a host with QEMU
# 7.1 cannot run a guest whose CPU requires avx2. In that hypervisor's mount namespace only, the
# QEMU path libvirt uses becomes a wrapper that sets the feature off for every CPU model
# (-global x86_64-cpu.FEATURE=off: libvirt's probe of TCG's CPU reports it missing) and drops
# FEATURE=on from -cpu (a guest that asks for it does not get it, as from a QEMU without it).
# The real binary is bind-mounted into $root/<name>/qemu/usr/bin, next to links to /usr/share,
# /usr/lib and /usr/libexec, because QEMU finds its firmware and modules relative to its own path.
# libvirt probes QEMU again when the binary's ctime changes, so both commands take effect at the
# daemon's next use; QEMUs already running are not touched.
# An older libvirt on one hypervisor (cpu-map-without): libvirt learns CPU models from its CPU map
# (/usr/share/libvirt/cpu_map), and one released before a model cannot run a guest that uses it. The
# hypervisor's daemon is restarted (its guests keep running) with a copy of the map without the
# model bind-mounted over the map in its mount namespace only; cpu-map-restore restarts it with the
# machine's map.
# Restarts (restart, cpu-map-*) keep the configuration as it is: what a test wrote into it (TLS
# settings) stays; it is written fresh only by up.
# Storage: $root/<name>/lib/images is each host's /var/lib/libvirt/images (not shared, with a
# dir pool virtops-test-mig-images on it); $root/shared is the same directory on both hosts.
set -euo pipefail

root=${VIRTOPS_MIG_ROOT:-/tmp/virtops-test-mig}
cache=${VIRTOPS_TEST_CACHE:-/var/cache/virtops-kvm-tests}/netns-libvirt
names="a b"

addr_of() { case $1 in a) echo 10.254.77.1 ;; b) echo 10.254.77.2 ;; esac; }
uuid_of() { case $1 in a) echo 7e1a0c5e-77a1-4d6b-9a51-00000000000a ;; b) echo 7e1a0c5e-77a1-4d6b-9a51-00000000000b ;; esac; }
ns_of() { echo "virtops-test-mig-$1"; }

down_one() {
  local name=$1 ns pid
  ns=$(ns_of "$name")
  if ip netns list | grep -qw "$ns"; then
    # Everything in the namespace was started by this script: the daemon, its QEMUs.
    for pid in $(ip netns pids "$ns"); do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 40); do
      [ -z "$(ip netns pids "$ns")" ] && break
      sleep 0.25
    done
    for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns delete "$ns"
  fi
}

down() {
  local name
  for name in $names; do down_one "$name"; done
  ip link delete virtops-mig-a 2>/dev/null || true
  rm -rf "$root"
}

write_config() {
  local name=$1 dir=$2/root/etc/libvirt addr
  addr=$(addr_of "$name")
  mkdir -p "$dir/qemu" "$dir/storage" "$dir/secrets" "$dir/nwfilter"
  # Only the daemon configuration is copied: no guests, networks, pools or secrets of the system
  # daemon come along.
  cp /etc/libvirt/libvirt.conf "$dir/" 2>/dev/null || true
  cat > "$dir/libvirtd.conf" <<EOF
# private test hypervisor $name (netns-libvirtd.sh)
listen_tls = 0
listen_tcp = 1
listen_addr = "$addr"
auth_tcp = "none"
auth_unix_rw = "none"
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
host_uuid = "$(uuid_of "$name")"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  cat > "$dir/qemu.conf" <<EOF
# private test hypervisor $name (netns-libvirtd.sh)
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
migration_address = "$addr"
migration_host = "$addr"
EOF
}

up_one() {
  local name=$1 ns dir
  ns=$(ns_of "$name")
  dir="$root/$name"
  mkdir -p "$dir"/{run,lib/images,lib/qemu,log/qemu} "$cache/$name"
  [ -f "$dir/root/etc/libvirt/libvirtd.conf" ] || write_config "$name" "$dir"
  # The daemon: a new mount namespace (private propagation) inside the network namespace; the
  # bind mounts exist only there.
  # shellcheck disable=SC2016  # the script is expanded by the inner sh, with its own arguments
  ip netns exec "$ns" unshare --mount --uts --propagation private sh -ec '
    dir=$1; cache=$2; name=$3
    hostname "virtops-test-mig-$name"
    mount --bind "$dir/run" /run/libvirt
    mount --bind "$dir/lib" /var/lib/libvirt
    mount --bind "$cache" /var/cache/libvirt
    mount --bind "$dir/log" /var/log/libvirt
    mount --bind "$dir/root/etc/libvirt" /etc/libvirt
    if [ -d "$dir/cpu_map" ]; then mount --bind "$dir/cpu_map" /usr/share/libvirt/cpu_map; fi
    exec libvirtd --daemon --listen --pid-file "$dir/libvirtd.pid"
  ' sh "$dir" "$cache/$name" "$name"
}

wait_one() {
  local name=$1 sock
  sock="$root/$name/run/libvirt-sock"
  for _ in $(seq 1 240); do
    if virsh -c "qemu+unix:///system?socket=$sock" version >/dev/null 2>&1 \
       && ip netns exec "$(ns_of "$name")" virsh -c "qemu+tcp://$(addr_of "$name")/system" version >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  echo "netns-libvirtd: hypervisor $name did not answer within 120 s; log: $root/$name/log/libvirtd.log" >&2
  return 1
}

# The guest fixture's initramfs with a second cpio archive appended: the kernel unpacks both, so
# this /init replaces the fixture's. It prints the fixture's ready line, then a counter and the
# boot id every second, which is how a test sees that a migrated guest kept running (the count
# goes on, the boot id stays). The fixture itself is not changed.
counter_initrd() {
  local fixture=${VIRTOPS_TEST_CACHE:-/var/cache/virtops-kvm-tests}/guest/initrd.img work
  [ -s "$fixture" ] || { echo "netns-libvirtd: $fixture is missing (tests/harness/build-guest.sh)" >&2; return 1; }
  work=$(mktemp -d)
  cat > "$work/init" <<'SH'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules-order); do insmod "/lib/modules/$m" 2>/dev/null; done
boot=$(cat /proc/sys/kernel/random/boot_id)
echo "VIRTOPS-GUEST-READY boot=$boot"
n=0
while true; do
  n=$((n + 1))
  echo "VIRTOPS-COUNTER n=$n boot=$boot"
  sleep 1
done
SH
  chmod 755 "$work/init"
  (cd "$work" && echo init | cpio -o -H newc --quiet | gzip -1) > "$work/overlay.cpio.gz"
  cat "$fixture" "$work/overlay.cpio.gz" > "$root/shared/counter-initrd.img"
  chmod 644 "$root/shared/counter-initrd.img"
  rm -rf "$work"
}

up() {
  local name
  down
  mkdir -p "$root/shared"
  chmod 755 "$root"
  for name in $names; do
    ip netns add "$(ns_of "$name")"
    ip -n "$(ns_of "$name")" link set lo up
  done
  ip link add virtops-mig-a netns "$(ns_of a)" type veth peer name virtops-mig-b netns "$(ns_of b)"
  for name in $names; do
    ip -n "$(ns_of "$name")" addr add "$(addr_of "$name")/24" dev "virtops-mig-$name"
    ip -n "$(ns_of "$name")" link set "virtops-mig-$name" up
  done
  for name in $names; do up_one "$name"; done
  for name in $names; do wait_one "$name"; done
  for name in $names; do
    virsh -q -c "qemu+unix:///system?socket=$root/$name/run/libvirt-sock" \
      pool-create-as virtops-test-mig-images dir --target /var/lib/libvirt/images >/dev/null
  done
  counter_initrd
  # python inside namespace a, for ansible_python_interpreter ($VIRTOPS_MIG_PYTHON or python3).
  cat > "$root/python-a" <<EOF
#!/bin/sh
exec ip netns exec $(ns_of a) ${VIRTOPS_MIG_PYTHON:-$(command -v python3)} "\$@"
EOF
  chmod 755 "$root/python-a"
  echo "netns-libvirtd: hypervisors a ($(addr_of a)) and b ($(addr_of b)) are up under $root"
}

pid_of() {
  local pid
  pid=$(cat "$root/$1/libvirtd.pid" 2>/dev/null) || { echo "netns-libvirtd: hypervisor $1 is not up" >&2; return 1; }
  echo "$pid"
}

qemu_without() {
  local name=$1 feature=$2 dir pid qemu real d
  case $feature in
    '' | *[!a-z0-9_.-]*)
      echo "netns-libvirtd: qemu-without needs a CPU feature name (such as avx2)" >&2
      return 2
      ;;
  esac
  dir="$root/$name"
  pid=$(pid_of "$name")
  qemu=$(command -v qemu-system-x86_64)
  real="$dir/qemu$qemu"
  mkdir -p "$(dirname "$real")"
  : > "$real"
  for d in share lib libexec; do ln -sfn "/usr/$d" "$dir/qemu/usr/$d"; done
  ln -sfn /etc "$dir/qemu/etc"
  {
    echo '#!/bin/sh'
    echo "# hypervisor $name's QEMU: TCG without $feature (netns-libvirtd.sh qemu-without)"
    echo "feature=$feature"
    cat <<'SH'
prev=
for arg do
  shift
  if [ "$prev" = -cpu ]; then
    arg=$(printf '%s\n' "$arg" | sed -e "s/,$feature=on//g; s/,+$feature//g")
  fi
  set -- "$@" "$arg"
  prev=$arg
done
SH
    echo "exec $real -global x86_64-cpu.\$feature=off \"\$@\""
  } > "$dir/qemu-wrapper"
  chmod 755 "$dir/qemu-wrapper"
  # shellcheck disable=SC2016  # expanded by the inner sh
  nsenter --mount --target "$pid" sh -ec '
    qemu=$1; real=$2; wrapper=$3
    mountpoint -q "$real" || mount --bind "$qemu" "$real"
    if mountpoint -q "$qemu"; then umount "$qemu"; fi
    mount --bind "$wrapper" "$qemu"
  ' sh "$qemu" "$real" "$dir/qemu-wrapper"
  echo "netns-libvirtd: hypervisor $name runs a QEMU without $feature"
}

# A new daemon in place of the running one (its guests keep running; it reconnects to them), in a
# new mount namespace: a QEMU given by qemu-without is gone with the old one.
restart_one() {
  local name=$1 pid
  pid=$(pid_of "$name")
  kill "$pid"
  for _ in $(seq 1 80); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "netns-libvirtd: hypervisor $name's daemon ($pid) did not stop within 20 s" >&2
    return 1
  fi
  up_one "$name"
  wait_one "$name"
}

cpu_map_without() {
  local name=$1 model=$2 dir map=/usr/share/libvirt/cpu_map
  case $model in
    '' | *[!A-Za-z0-9_.-]*)
      echo "netns-libvirtd: cpu-map-without needs a CPU model name (such as Nehalem)" >&2
      return 2
      ;;
  esac
  [ -f "$map/x86_$model.xml" ] || { echo "netns-libvirtd: libvirt has no CPU model $model ($map/x86_$model.xml)" >&2; return 2; }
  dir="$root/$name"
  rm -rf "$dir/cpu_map"
  cp -a "$map" "$dir/cpu_map"
  rm "$dir/cpu_map/x86_$model.xml"
  sed -i "\\|<include filename='x86_$model.xml'/>|d" "$dir/cpu_map/index.xml"
  restart_one "$name"
  echo "netns-libvirtd: hypervisor $name's libvirt does not know the CPU model $model"
}

cpu_map_restore() {
  rm -rf "$root/$1/cpu_map"
  restart_one "$1"
  echo "netns-libvirtd: hypervisor $1's libvirt has the machine's CPU map"
}

qemu_restore() {
  local name=$1 pid qemu
  pid=$(pid_of "$name")
  qemu=$(command -v qemu-system-x86_64)
  # QEMUs started through the wrapper keep the real binary's bind mount busy: it stays, unused.
  # shellcheck disable=SC2016  # expanded by the inner sh
  nsenter --mount --target "$pid" sh -ec 'if mountpoint -q "$1"; then umount "$1"; fi' sh "$qemu"
  echo "netns-libvirtd: hypervisor $name runs the machine's QEMU"
}

case "${1:-}" in
  up) up ;;
  down) down; echo "netns-libvirtd: hypervisors down" ;;
  exec)
    name=${2:?exec needs a or b}
    shift 2
    exec ip netns exec "$(ns_of "$name")" "$@"
    ;;
  qemu-without) qemu_without "${2:?qemu-without needs a or b}" "${3:-}" ;;
  qemu-restore) qemu_restore "${2:?qemu-restore needs a or b}" ;;
  cpu-map-without) cpu_map_without "${2:?cpu-map-without needs a or b}" "${3:-}" ;;
  cpu-map-restore) cpu_map_restore "${2:?cpu-map-restore needs a or b}" ;;
  restart) restart_one "${2:?restart needs a or b}"; echo "netns-libvirtd: hypervisor $2's daemon restarted" ;;
  *)
    echo "usage: $0 up|down|exec a|b CMD...|qemu-without a|b FEATURE|qemu-restore a|b|cpu-map-without a|b MODEL|cpu-map-restore a|b|restart a|b" >&2
    exit 2
    ;;
esac
