#!/usr/bin/env bash
# Build (once) what the lab VM needs, all below $VIRTOPS_LAB_DIR (default /var/cache/virtops-kvm-tests/lab):
#   qemu/   QEMU 10 from bookworm-backports, downloaded with a private apt configuration and extracted
#           with dpkg-deb -x (the system QEMU is never replaced)
#   image/  a debootstrapped Debian with the generic kernel (igb, igbvf, vfio-pci), python3, pyroute2,
#           ssh, netplan, apparmor, as an ext4 disk image plus its kernel and initrd for direct boot
#   ssh/    the key the lab accepts for root
# Idempotent: a finished piece is reused. Exit status 0 means the lab can boot.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

mkdir -p "$LAB"
exec 9>"$LAB/.build.lock"
flock 9

build_qemu() {
    if [ -x "$LAB_QEMU" ] && "$LAB_QEMU" --version >/dev/null 2>&1; then
        return 0
    fi
    log "downloading QEMU from $LAB_SUITE-backports into $LAB/qemu"
    rm -rf "$LAB/apt" "$LAB/debs" "$LAB/qemu.tmp"
    mkdir -p "$LAB/apt/lists/partial" "$LAB/apt/archives/partial" "$LAB/debs" "$LAB/qemu.tmp"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $LAB_MIRROR $LAB_SUITE-backports main" >"$LAB/apt/sources.list"
    mapfile -t opts < <(lab_apt_opts)
    apt-get -q "${opts[@]}" update >/dev/null
    (cd "$LAB/debs" && apt-get -q "${opts[@]}" download qemu-system-x86 qemu-system-data qemu-system-common seabios >/dev/null)
    for deb in "$LAB"/debs/*.deb; do
        dpkg-deb -x "$deb" "$LAB/qemu.tmp"
    done
    if ! "$LAB/qemu.tmp/usr/bin/qemu-system-x86_64" --version >/dev/null; then
        log "the downloaded QEMU does not run here: $(ldd "$LAB/qemu.tmp/usr/bin/qemu-system-x86_64" | grep 'not found' | tr '\n' ' ')"
        return 1
    fi
    rm -rf "$LAB/qemu"
    mv "$LAB/qemu.tmp" "$LAB/qemu"
}

build_key() {
    if [ ! -f "$LAB_KEY" ]; then
        mkdir -p "$(dirname "$LAB_KEY")"
        chmod 700 "$(dirname "$LAB_KEY")"
        ssh-keygen -q -t ed25519 -N '' -C virtops-lab -f "$LAB_KEY"
    fi
}

build_image() {
    if [ -f "$LAB/image/version" ] && [ "$(cat "$LAB/image/version")" = "$LAB_IMAGE_VERSION" ] && [ -f "$LAB_IMAGE" ]; then
        return 0
    fi
    command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; return 1; }
    local root=$LAB/rootfs
    rm -rf "$root" "$LAB/image"
    mkdir -p "$root" "$LAB/image"
    log "debootstrap $LAB_SUITE into $root"
    debootstrap --variant=minbase \
        --include=systemd-sysv,udev,kmod,linux-image-amd64,initramfs-tools,python3,python3-pyroute2,openssh-server,iproute2,netplan.io,apparmor,pciutils,qemu-system-x86 \
        "$LAB_SUITE" "$root" "$LAB_MIRROR" >"$LAB/debootstrap.log" 2>&1 || { log "debootstrap failed, see $LAB/debootstrap.log"; return 1; }

    echo virtops-lab >"$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 virtops-lab\n' >"$root/etc/hosts"
    echo '/dev/vda / ext4 defaults,errors=remount-ro 0 1' >"$root/etc/fstab"
    # management NIC: the virtio NIC (ssh forwarded from the host's loopback), configured through netplan
    mkdir -p "$root/etc/netplan"
    cat >"$root/etc/netplan/10-lab.yaml" <<'NETPLAN'
network:
  version: 2
  renderer: networkd
  ethernets:
    mgmt:
      match:
        driver: virtio_net
      dhcp4: true
NETPLAN
    chmod 600 "$root/etc/netplan/10-lab.yaml"
    chroot "$root" systemctl enable systemd-networkd ssh >/dev/null 2>&1
    # no password, no getty on tty1 (serial console only), quick boot
    chroot "$root" passwd -d root >/dev/null
    chroot "$root" systemctl mask systemd-networkd-wait-online.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true
    install -d -m 700 "$root/root/.ssh"
    install -m 600 "$LAB_KEY.pub" "$root/root/.ssh/authorized_keys"
    echo 'UseDNS no' >"$root/etc/ssh/sshd_config.d/lab.conf"
    rm -f "$root"/var/cache/apt/archives/*.deb

    cp -L "$root/vmlinuz" "$LAB_KERNEL"
    cp -L "$root/initrd.img" "$LAB_INITRD"
    rm -f "$LAB_IMAGE"
    mkfs.ext4 -q -L virtops-lab -d "$root" "$LAB_IMAGE" 3G
    rm -rf "$root"
    echo "$LAB_IMAGE_VERSION" >"$LAB/image/version"
}

start=$(date +%s)
build_qemu
build_key
build_image
log "lab build ready in $(( $(date +%s) - start ))s"
