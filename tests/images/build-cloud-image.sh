#!/usr/bin/env bash
# Build a Debian 12 cloud-style image (no image is downloaded: debootstrap from the archive).
#
# The image boots with SeaBIOS from an MBR disk (extlinux), runs cloud-init (NoCloud datasource:
# the seed ISO virtops.kvm.cloud_init_seed builds), openssh-server and qemu-guest-agent, takes its
# address by DHCP on every NIC (systemd-networkd; cloud-init's network-config is not used) and grows
# its root file system to the disk it is given.
#
# Output (cached, keyed on this script's hash; a second call with the same script is a no-op):
#   $VIRTOPS_TEST_CACHE/cloud-image/debian-12.qcow2
#   $VIRTOPS_TEST_CACHE/cloud-image/debian-12.qcow2.sha256   (sha256 of the qcow2, hex only)
#   $VIRTOPS_TEST_CACHE/cloud-image/KEY                      (the script hash the image was built from)
# Needs (Debian packages): debootstrap qemu-utils e2fsprogs fdisk mount extlinux syslinux-common
set -euo pipefail

cache=${VIRTOPS_TEST_CACHE:-/var/cache/virtops-kvm-tests}
out="$cache/cloud-image"
image="$out/debian-12.qcow2"
mirror=${VIRTOPS_IMAGE_MIRROR:-http://deb.debian.org/debian}
key=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)

log() { echo "build-cloud-image: $*" >&2; }

if [ -s "$image" ] && [ -s "$image.sha256" ] && [ "$(cat "$out/KEY" 2>/dev/null)" = "$key" ]; then
  echo "cloud image: cached in $image"
  exit 0
fi

for tool in debootstrap qemu-img mkfs.ext4 sfdisk losetup extlinux; do
  command -v "$tool" >/dev/null || { log "$tool is missing (apt-get install debootstrap qemu-utils e2fsprogs fdisk mount extlinux syslinux-common)"; exit 1; }
done
mbr=""
for candidate in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/EXTLINUX/mbr.bin; do
  [ -f "$candidate" ] && { mbr=$candidate; break; }
done
[ -n "$mbr" ] || { log "syslinux mbr.bin is missing (apt-get install syslinux-common)"; exit 1; }

mkdir -p "$out"
# one build at a time per cache (the integration target, molecule and make demo may start together)
exec 9>"$out/.lock"
flock 9
if [ -s "$image" ] && [ "$(cat "$out/KEY" 2>/dev/null)" = "$key" ]; then
  echo "cloud image: cached in $image"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/virtops-cloud-image.XXXXXX")
mnt="$work/mnt"
loop=""
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
  [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
root="$work/root"

packages=systemd-sysv,udev,linux-image-cloud-amd64,initramfs-tools,cloud-init,python3-cffi-backend
packages=$packages,openssh-server,qemu-guest-agent,sudo,iproute2,dbus
packages=$packages,cloud-guest-utils,e2fsprogs,fdisk,netbase,ca-certificates,locales
log "debootstrap bookworm ($packages)"
# a mirror sometimes drops one download ("Couldn't download packages: sed"): try three times
for attempt in 1 2 3; do
  debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 && break
  if [ "$attempt" -eq 3 ]; then
    tail -20 "$work/debootstrap.log" >&2
    log "debootstrap failed three times"
    exit 1
  fi
  log "debootstrap attempt $attempt failed ($(grep -m1 '^E:' "$work/debootstrap.log" || echo 'see its log')); trying again"
  rm -rf "$root"
  sleep 10
done

# dbus: systemd-logind needs it, and logind is what powers the guest off on an ACPI power-button press
# (libvirt's graceful shutdown); minbase has neither
# a generic image: no machine id, no host keys, no hostname (cloud-init sets them per guest)
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
echo localhost > "$root/etc/hostname"
cat > "$root/etc/fstab" <<'EOF'
/dev/vda1 / ext4 defaults,errors=remount-ro 0 1
EOF
# every NIC by DHCP (systemd-networkd), whatever its name and however many the guest has: cloud-init's
# own fallback configures only the first NIC, and a guest on a libvirt network plus a user-mode port
# forward needs both. cloud-init's network configuration is therefore off in this image.
mkdir -p "$root/etc/systemd/network"
cat > "$root/etc/systemd/network/80-virtops-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
# boot does not wait for every NIC to be online (a NIC without a DHCP server would hold it for 2 min)
chroot "$root" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
# only the NoCloud seed exists here: no probing of cloud metadata services
cat > "$root/etc/cloud/cloud.cfg.d/90_virtops.cfg" <<'EOF'
datasource_list: [NoCloud, None]
network: {config: disabled}
# the guest's own name resolves (sudo looks it up); C.UTF-8 is the locale every Debian has (cloud-init's
# default en_US.UTF-8 is not generated in a minbase image and its locale module then fails)
manage_etc_hosts: true
locale: C.UTF-8
EOF
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root/tmp"/*

kernel=$(find "$root/boot" -maxdepth 1 -name "vmlinuz-*" -printf "%f\n" | sort -V | tail -1)
initrd=initrd.img-${kernel#vmlinuz-}
[ -f "$root/boot/$initrd" ] || { log "no initramfs for $kernel in the image"; exit 1; }
mkdir -p "$root/boot/extlinux"
cat > "$root/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
TIMEOUT 1
LABEL debian
  LINUX /boot/$kernel
  INITRD /boot/$initrd
  APPEND root=/dev/vda1 ro console=tty0 console=ttyS0,115200n8
EOF

log "disk image"
raw="$work/disk.raw"
truncate -s 2G "$raw"
echo 'start=2048, type=83, bootable' | sfdisk --quiet "$raw"
loop=$(losetup --find --show -o 1048576 "$raw")
mkfs.ext4 -q -O ^64bit,^metadata_csum -L root -d "$root" "$loop"
mkdir -p "$mnt"
mount "$loop" "$mnt"
extlinux --install "$mnt/boot/extlinux" >/dev/null
umount "$mnt"
losetup -d "$loop"
loop=""
dd if="$mbr" of="$raw" bs=440 count=1 conv=notrunc status=none

log "qcow2"
qemu-img convert -c -O qcow2 "$raw" "$work/debian-12.qcow2"
sha256sum "$work/debian-12.qcow2" | cut -d' ' -f1 > "$work/debian-12.qcow2.sha256"
chmod 644 "$work/debian-12.qcow2" "$work/debian-12.qcow2.sha256"
mv "$work/debian-12.qcow2" "$image"
mv "$work/debian-12.qcow2.sha256" "$image.sha256"
echo "$key" > "$out/KEY"
chmod 755 "$cache" "$out"
echo "cloud image: built $image ($(du -h "$image" | cut -f1), sha256 $(cat "$image.sha256"))"
