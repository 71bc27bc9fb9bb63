#!/usr/bin/env bash
# Build the test guest: a Debian cloud kernel plus a busybox initramfs that boots by direct
# kernel boot under TCG in a few seconds. The result is cached; a second call is a no-op.
#
# What the guest does (see init below):
#   - prints "VIRTOPS-GUEST-READY boot=<boot id>" on ttyS0 at every boot;
#   - handles the ACPI power button (busybox acpid) unless the kernel command line has
#     virtops.acpi=ignore, which is how tests exercise the shutdown-timeout path;
#   - prints "VIRTOPS-DEVICES blk=<disks> net=<nics>" every second, so hotplug tests can see
#     what the guest sees.
# Output: $VIRTOPS_TEST_CACHE/guest/{vmlinuz,initrd.img,VERSION}
set -euo pipefail

cache=${VIRTOPS_TEST_CACHE:-/var/cache/virtops-kvm-tests}
out="$cache/guest"
recipe_version=4

if [ -f "$out/VERSION" ] && [ "$(cat "$out/VERSION")" = "$recipe_version" ] \
   && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ]; then
  echo "guest fixture: cached in $out"
  exit 0
fi

for tool in dpkg-deb depmod cpio; do
  command -v "$tool" >/dev/null || { echo "build-guest: $tool is missing (apt-get install cpio kmod)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "build-guest: /bin/busybox is missing (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"

kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$kpkg" ] || { echo "build-guest: cannot resolve linux-image-cloud-amd64 (run apt-get update)" >&2; exit 1; }
(cd "$work" && apt-get download "$kpkg" >/dev/null 2>&1) \
  || { echo "build-guest: apt-get download $kpkg failed" >&2; exit 1; }
dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
kver=$(ls "$work/k/lib/modules")
depmod -b "$work/k" "$kver"

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc/acpi/PWRF,lib/modules}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"

# Modules the guest needs, in dependency order, resolved from modules.dep.
wanted="virtio_pci virtio_blk virtio_net virtio_scsi virtio_console virtio_rng virtio_balloon
        virtiofs sd_mod sr_mod ata_piix button evdev"
moddir="$work/k/lib/modules/$kver"
: > "$root/etc/modules-order"
declare -A seen=()
add_module() {
  local path=$1 dep
  [ -n "${seen[$path]:-}" ] && return 0
  seen[$path]=1
  # modules.dep lists a module's dependencies as words on one line
  # shellcheck disable=SC2013
  for dep in $(awk -F':' -v m="$path" '$1 == m {print $2}' "$moddir/modules.dep"); do
    add_module "$dep"
  done
  local base
  base=$(basename "$path")
  case "$base" in
    *.xz) xz -dc "$moddir/$path" > "$root/lib/modules/${base%.xz}"; base=${base%.xz} ;;
    *.zst) zstd -qdc "$moddir/$path" > "$root/lib/modules/${base%.zst}"; base=${base%.zst} ;;
    *) cp "$moddir/$path" "$root/lib/modules/$base" ;;
  esac
  echo "$base" >> "$root/etc/modules-order"
}
for m in $wanted; do
  path=$(awk -F':' -v m="$m" '{n=$1; sub(/.*\//, "", n); sub(/\.ko.*/, "", n); gsub(/-/, "_", n); if (n == m) {print $1; exit}}' "$moddir/modules.dep")
  if [ -n "$path" ]; then
    add_module "$path"
  elif ! grep -q "/$m.ko" "$moddir/modules.builtin"; then
    echo "build-guest: module $m is neither built in nor a module of $kver" >&2
    exit 1
  fi
done

cat > "$root/etc/acpi/PWRF/00000080" <<'SH'
#!/bin/sh
echo "VIRTOPS-GUEST-POWEROFF" > /dev/console
sync
poweroff -f
SH
chmod 755 "$root/etc/acpi/PWRF/00000080"

cat > "$root/init" <<'SH'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules-order); do insmod "/lib/modules/$m" 2>/dev/null; done
sleep 1
echo "VIRTOPS-GUEST-READY boot=$(cat /proc/sys/kernel/random/boot_id)"
if grep -q 'virtops.acpi=ignore' /proc/cmdline; then
  echo "VIRTOPS-GUEST-ACPI ignored"
else
  acpid -d -c /etc/acpi >/dev/null 2>&1 &
  echo "VIRTOPS-GUEST-ACPI handled"
fi
while true; do
  echo "VIRTOPS-DEVICES blk=$(ls /sys/block | tr '\n' ',') net=$(ls /sys/class/net | tr '\n' ',')"
  sleep 1
done
SH
chmod 755 "$root/init"

mkdir -p "$out"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.img.tmp"
cp "$work/k/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
chmod 644 "$out/initrd.img.tmp" "$out/vmlinuz.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$recipe_version" > "$out/VERSION"
chmod 755 "$cache" "$out"
echo "guest fixture: built $out (kernel $kver)"
