#!/usr/bin/env bash
# Build (once) what the lab VM needs, all below $VIRTOPS_LAB_DIR (default /var/cache/virtops-kvm-tests/lab):
#   qemu/   QEMU 10 from bookworm-backports, downloaded with a private apt configuration and extracted
#           with dpkg-deb -x (the system QEMU is never replaced)
#   image/  a debootstrapped Debian with the generic kernel (igb, igbvf, vfio-pci), python3, pyroute2,
#           ssh, netplan, apparmor, libvirt with Debian's QEMU 7.2 and GRUB, as an MBR disk image (disk.img) that boots
#           through its own GRUB: /etc/default/grub there holds the lab's kernel command line
#   ssh/    the key the lab accepts for root
# Idempotent: a finished piece is reused. Exit status 0 means the lab can boot.
set -euo pipefail
. "$(dirname "$0")/lib.sh"


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

# The disk: one partition from 1 MiB (GRUB's core.img goes in the gap before it).
LAB_PART_OFFSET=1048576
LAB_DISK_SIZE=4G

# Unmount everything at or below $1, deepest first; fail if something stays mounted.
unmount_below() {
    local dir=$1 m
    mounts() { findmnt -rn -o TARGET | awk -v d="$dir" '$0 == d || index($0, d "/") == 1' | sort -r; }
    while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(mounts)
    if [ -n "$(mounts)" ]; then
        log "still mounted below $dir: $(mounts | tr '\n' ' ')"
        return 1
    fi
}

# Run a command inside the image tree at $1 (chroot), with a clean environment and no prompts.
lab_chroot() {
    local mnt=$1
    shift
    chroot "$mnt" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"
}

# --install-grub LOOP MNT, run by build_image in a private mount namespace (every mount ends with it): GRUB onto
# the disk attached (with partition scanning) as LOOP, from inside the image. No udev runs here, so /dev in this
# namespace is a tmpfs with the nodes made by hand from sysfs: the disk, its partition (the kernel may add it a
# moment after losetup -P; partx -a asks again) and the /dev/disk/by-uuid link update-grub looks for (without it
# grub.cfg says root=/dev/loopNp1). The partition is mounted through /dev/loopNp1 so that grub-probe, inside
# the chroot, finds the same path in the same /dev.
install_grub() {
    local loop=$1 mnt=$2 name=${1#/dev/} node
    for _ in $(seq 50); do
        [ -e "/sys/block/$name/${name}p1/dev" ] && break
        partx -a "$loop" 2>/dev/null || true
        sleep 0.1
    done
    [ -e "/sys/block/$name/${name}p1/dev" ] || { echo "the kernel shows no partition on $loop" >&2; return 1; }
    mount -t tmpfs -o mode=755,size=1m tmpfs /dev
    for node in "$name" "$name/${name}p1"; do
        mknod -m 600 "/dev/${node#*/}" b "$(cut -d: -f1 "/sys/block/$node/dev")" "$(cut -d: -f2 "/sys/block/$node/dev")"
    done
    mknod -m 666 /dev/null c 1 3
    mknod -m 666 /dev/zero c 1 5
    mknod -m 666 /dev/urandom c 1 9
    mkdir -p /dev/disk/by-uuid
    ln -s "../../${name}p1" "/dev/disk/by-uuid/$(blkid -p -s UUID -o value "/dev/${name}p1")"
    mount "/dev/${name}p1" "$mnt"
    mount --bind /dev "$mnt/dev"
    mount -t proc proc "$mnt/proc"
    mount -t sysfs sysfs "$mnt/sys"
    # grub.cfg from /etc/default/grub, as update-grub in the VM writes it; boot.img and core.img on the disk
    lab_chroot "$mnt" update-grub
    lab_chroot "$mnt" grub-install --target=i386-pc "/dev/$name"
    cp "$mnt/boot/grub/grub.cfg" "$LAB/grub.cfg"
    if ! grep -q -E "^[[:space:]]*linux[[:space:]].* root=UUID=[-0-9a-f]+ .*console=ttyS0 intel_iommu=on iommu=pt" "$mnt/boot/grub/grub.cfg"; then
        echo "update-grub wrote no boot entry with root=UUID and the lab's command line, see $LAB/grub.cfg" >&2
        return 1
    fi
}

build_image() {
    if [ -f "$LAB/image/version" ] && [ "$(cat "$LAB/image/version")" = "$LAB_IMAGE_VERSION" ] && [ -f "$LAB_IMAGE" ]; then
        return 0
    fi
    command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; return 1; }
    command -v sfdisk >/dev/null || { log "sfdisk is not installed (apt-get install fdisk)"; return 1; }
    root=$LAB/rootfs mnt=$LAB/mnt disk=$LAB/image/disk.img.tmp loop=
    # what a failed run left mounted goes first; nothing is removed while anything is mounted below it
    unmount_below "$root" || return 1
    rm -rf "$root" "$LAB/image"
    mkdir -p "$root" "$mnt" "$LAB/image"
    cleanup() {
        unmount_below "$root" || true
        [ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true
    }
    trap cleanup EXIT
    log "debootstrap $LAB_SUITE into $root"
    # three tries: one lost download from the archive ("Couldn't download packages") must not cost the lab
    local attempt
    for attempt in 1 2 3; do
        debootstrap --variant=minbase \
            --include=systemd-sysv,udev,kmod,linux-image-amd64,initramfs-tools,python3,python3-pyroute2,openssh-server,iproute2,netplan.io,apparmor,pciutils \
            "$LAB_SUITE" "$root" "$LAB_MIRROR" >"$LAB/debootstrap.log" 2>&1 && break
        if [ "$attempt" -eq 3 ]; then
            log "debootstrap failed three times, see $LAB/debootstrap.log"
            return 1
        fi
        log "debootstrap attempt $attempt failed ($(grep -m1 '^E:' "$LAB/debootstrap.log" || echo 'see its log')); trying again"
        unmount_below "$root" || return 1
        rm -rf "$root"
        mkdir -p "$root"
        sleep 10
    done

    echo virtops-lab >"$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 virtops-lab\n' >"$root/etc/hosts"
    echo 'LABEL=virtops-lab / ext4 defaults,errors=remount-ro 0 1' >"$root/etc/fstab"
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

    # GRUB (its own boot loader, so kernel_cmdline's drop-in and update-grub decide the next boot), libvirt and
    # QEMU (nested guests under TCG: microvm units, passthrough of a VF), installed from the archive in a chroot
    # where no service starts
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mount -t proc proc "$root/proc"
    echo 'grub-pc grub-pc/install_devices_empty boolean true' | lab_chroot "$root" debconf-set-selections
    for attempt in 1 2 3; do
        lab_chroot "$root" apt-get -q -y --no-install-recommends install grub-pc libvirt-daemon-system libvirt-clients \
            python3-libvirt python3-lxml dnsmasq-base iptables qemu-system-x86 >"$LAB/apt-install.log" 2>&1 && break
        if [ "$attempt" -eq 3 ]; then
            log "installing GRUB, libvirt and QEMU in the image failed three times, see $LAB/apt-install.log"
            return 1
        fi
        log "installing GRUB, libvirt and QEMU in the image: attempt $attempt failed; trying again"
        sleep 10
    done
    unmount_below "$root/proc"
    rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"
    # the image's initramfs was made with MODULES=most (a chroot has no hardware to look at); inside the lab,
    # update-initramfs (vfio_pci's persistent binding runs it) takes only what the lab's hardware needs (with
    # MODULES=most that one step took about 3.5 min under TCG)
    echo MODULES=dep >"$root/etc/initramfs-tools/conf.d/virtops-lab.conf"
    # libvirt's own default network (virbr0, 192.168.122.0/24) stays defined but does not start: the lab's
    # targets create and start only their own networks
    rm -f "$root/etc/libvirt/qemu/networks/autostart/default.xml"
    # the kernel command line every lab target expects, from GRUB's own configuration; no menu, serial console
    cat >"$root/etc/default/grub" <<'GRUB'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_TIMEOUT_STYLE=hidden
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT="quiet systemd.show_status=false"
GRUB_CMDLINE_LINUX="console=ttyS0 intel_iommu=on iommu=pt"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_RECOVERY=true
GRUB_DISABLE_OS_PROBER=true
GRUB

    chroot "$root" systemctl enable systemd-networkd ssh libvirtd >/dev/null 2>&1
    # no password, no getty on tty1 (serial console only), quick boot
    chroot "$root" passwd -d root >/dev/null
    chroot "$root" systemctl mask systemd-networkd-wait-online.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true
    install -d -m 700 "$root/root/.ssh"
    install -m 600 "$LAB_KEY.pub" "$root/root/.ssh/authorized_keys"
    echo 'UseDNS no' >"$root/etc/ssh/sshd_config.d/lab.conf"
    rm -f "$root"/var/cache/apt/archives/*.deb

    # an MBR disk with one bootable Linux partition from 1 MiB to the end, its file system made in place
    rm -f "$disk"
    truncate -s "$LAB_DISK_SIZE" "$disk"
    echo "start=$(( LAB_PART_OFFSET / 512 )), type=83, bootable" | sfdisk -q "$disk" >/dev/null
    local part_kib=$(( ($(stat -c %s "$disk") - LAB_PART_OFFSET) / 1024 ))
    # GRUB 2.06 reads ext4 with these features; the label is what fstab mounts
    mkfs.ext4 -q -L virtops-lab -O ^metadata_csum_seed,^orphan_file -E offset="$LAB_PART_OFFSET" -d "$root" "$disk" "${part_kib}k"
    rm -rf "$root"

    # GRUB is installed from inside the image onto the whole disk, in a mount namespace of its own
    loop=$(losetup -P -f --show "$disk")
    if ! unshare --mount --propagation private -- "$0" --install-grub "$loop" "$mnt"; then
        log "installing GRUB on the disk failed, see $LAB/grub.log"
        return 1
    fi
    losetup -d "$loop"
    loop=
    grep -m1 -E '^[[:space:]]*linux[[:space:]]' "$LAB/grub.cfg" | sed 's/^[[:space:]]*/lab: grub.cfg: /' >&2
    trap - EXIT
    mv "$disk" "$LAB_IMAGE"
    echo "$LAB_IMAGE_VERSION" >"$LAB/image/version"
}

# Every mount the build makes (debootstrap's, the chroot's /proc, the disk's) is in a mount namespace of its own
# and ends with it: none is left behind by a failed run, and none is copied into the mount namespaces other
# processes of this machine create meanwhile (libvirt's per-guest ones would keep the disk busy).
if [ -z "${LAB_BUILD_NAMESPACE:-}" ]; then
    LAB_BUILD_NAMESPACE=1 exec unshare --mount --propagation private -- "$0" "$@"
fi
if [ "${1:-}" = --install-grub ]; then
    install_grub "$2" "$3" >"$LAB/grub.log" 2>&1
    exit
fi

mkdir -p "$LAB"
exec 9>"$LAB/.build.lock"
flock 9

start=$(date +%s)
build_qemu
build_key
build_image
log "lab build ready in $(( $(date +%s) - start ))s"
