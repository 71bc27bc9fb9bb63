# shellcheck shell=bash disable=SC2034
# (the variables are used by the scripts that source this file)
# Shared settings of the lab VM scripts (sourced, not run).
# Everything the lab builds or writes lives below $VIRTOPS_LAB_DIR, outside the checkout.
VIRTOPS_TEST_CACHE=${VIRTOPS_TEST_CACHE:-/var/cache/virtops-kvm-tests}
LAB=${VIRTOPS_LAB_DIR:-$VIRTOPS_TEST_CACHE/lab}
LAB_SUITE=${VIRTOPS_LAB_SUITE:-bookworm}
LAB_MIRROR=${VIRTOPS_LAB_MIRROR:-http://deb.debian.org/debian}
LAB_QEMU=$LAB/qemu/usr/bin/qemu-system-x86_64
LAB_IMAGE=$LAB/image/disk.img
LAB_KEY=$LAB/ssh/id_ed25519
LAB_RUN=$LAB/run
LAB_STATUS=${VIRTOPS_LAB_STATUS:-$LAB/status}
LAB_INVENTORY=$LAB/inventory.ini
LAB_PORT=${VIRTOPS_LAB_PORT:-10022}
LAB_BOOT_TIMEOUT=${VIRTOPS_LAB_BOOT_TIMEOUT:-240}
# Bump when the image recipe changes so cached images are rebuilt.
LAB_IMAGE_VERSION=3

log() { printf 'lab: %s\n' "$*" >&2; }

# Private apt configuration: the backports source is used only to download QEMU 10, never to install it.
lab_apt_opts() {
    printf '%s\n' -o "Dir::Etc::SourceList=$LAB/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o "Dir::State::Lists=$LAB/apt/lists" -o "Dir::Cache=$LAB/apt" \
        -o APT::Sandbox::User=root
}
