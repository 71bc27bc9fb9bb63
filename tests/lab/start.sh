#!/usr/bin/env bash
# Start the lab VM (building it first if needed) and write $LAB_STATUS: "ready", or why it cannot run.
# Prints the status file's path. Always exits 0 when it could write a status (a lab that cannot run
# makes its targets skip with the reason, never fail the whole run); exits 1 only on usage errors.
#
# Boots a copy-on-write overlay of the cached image under QEMU 10 (TCG) through the image's own GRUB (the
# kernel command line is the image's /etc/default/grub plus what kernel_cmdline wrote): q35 with intel-iommu, an igb NIC
# (SR-IOV PF, 7 VFs), a virtio management NIC with ssh forwarded to 127.0.0.1:$LAB_PORT, two NUMA nodes.
# Writes $LAB/inventory.ini and $LAB/lab.json (ssh settings, PCI addresses of the PF and management NIC).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

mkdir -p "$LAB" "$LAB_RUN"
status() { printf '%s\n' "$1" >"$LAB_STATUS"; log "status: $1"; echo "$LAB_STATUS"; }
ssh_lab() {
    ssh -q -i "$LAB_KEY" -p "$LAB_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 \
        -o BatchMode=yes root@127.0.0.1 "$@"
}

"$(dirname "$0")/stop.sh" >/dev/null 2>&1 || true
printf 'starting\n' >"$LAB_STATUS"

t0=$(date +%s)
if ! "$(dirname "$0")/build.sh" >"$LAB/build.log" 2>&1; then
    status "lab image or QEMU 10 could not be built here: $(tail -1 "$LAB/build.log")"
    exit 0
fi
t_build=$(( $(date +%s) - t0 ))

if ss -ltn 2>/dev/null | grep -q "127.0.0.1:$LAB_PORT "; then
    status "port 127.0.0.1:$LAB_PORT is already in use (set VIRTOPS_LAB_PORT)"
    exit 0
fi

rm -f "$LAB_RUN/overlay.qcow2" "$LAB_RUN/console.log"
qemu-img create -q -f qcow2 -b "$LAB_IMAGE" -F raw "$LAB_RUN/overlay.qcow2"

t1=$(date +%s)
mkdir -p "$LAB/qemu/usr/lib/x86_64-linux-gnu/qemu"  # only the modules of this build, never the system QEMU's
# intel-iommu first (it must exist before the devices it translates); one TCG thread to spare the host.
# The system QEMU 7.2's loadable modules (/usr/lib/x86_64-linux-gnu/qemu) would be found first and refused by
# QEMU 10 ("Only modules from the same build"): hide them in a private mount namespace for this process only.
# shellcheck disable=SC2016  # $1 and $@ belong to the inner sh
if ! unshare --mount --propagation private -- sh -c 'mount --bind "$1" /usr/lib/x86_64-linux-gnu/qemu && shift && exec "$@"' sh \
    "$LAB/qemu/usr/lib/x86_64-linux-gnu/qemu" "$LAB_QEMU" -L "$LAB/qemu/usr/share/qemu" -L "$LAB/qemu/usr/share/seabios" \
    -name virtops-lab -machine q35,kernel-irqchip=split -accel tcg,thread=single -cpu max -smp 2 -m 1024 \
    -object memory-backend-ram,id=m0,size=512M -object memory-backend-ram,id=m1,size=512M \
    -numa node,nodeid=0,cpus=0,memdev=m0 -numa node,nodeid=1,cpus=1,memdev=m1 \
    -device intel-iommu,intremap=on,caching-mode=on \
    -drive file="$LAB_RUN/overlay.qcow2",if=virtio,format=qcow2 -boot order=c \
    -netdev user,id=mgmt,hostfwd=tcp:127.0.0.1:"$LAB_PORT"-:22 -device virtio-net-pci,netdev=mgmt,romfile= \
    -netdev user,id=sriov,restrict=on -device igb,netdev=sriov,romfile= \
    -display none -vga none -serial file:"$LAB_RUN/console.log" -monitor none \
    -daemonize -pidfile "$LAB_RUN/qemu.pid" 2>"$LAB_RUN/qemu.err"; then
    status "QEMU 10 did not start: $(tr '\n' ' ' <"$LAB_RUN/qemu.err")"
    exit 0
fi

deadline=$(( $(date +%s) + LAB_BOOT_TIMEOUT ))
until ssh_lab true 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ] || ! kill -0 "$(cat "$LAB_RUN/qemu.pid" 2>/dev/null)" 2>/dev/null; then
        status "the lab VM did not answer ssh within ${LAB_BOOT_TIMEOUT}s (console: $LAB_RUN/console.log)"
        exit 0
    fi
    sleep 2
done
t_ssh=$(( $(date +%s) - t1 ))

# What the targets need to know about the lab's PCI layout.
facts=$(ssh_lab 'python3 - <<"PY"
import json, os, subprocess
base = "/sys/bus/pci/devices"
pf = next((a for a in sorted(os.listdir(base)) if os.path.exists(os.path.join(base, a, "sriov_totalvfs"))), None)
route = json.loads(subprocess.run(["ip", "-j", "route", "show", "default"], capture_output=True, text=True, check=False).stdout or "[]")
mgmt_netdev = route[0]["dev"] if route else None
mgmt = os.path.basename(os.path.realpath("/sys/class/net/%s/device" % mgmt_netdev)) if mgmt_netdev else None
if mgmt and not os.path.isdir(os.path.join(base, mgmt)):  # virtio: the netdev hangs below virtioN, the PCI device is its parent
    mgmt = os.path.basename(os.path.dirname(os.path.realpath("/sys/class/net/%s/device" % mgmt_netdev)))
pf_net = os.path.join(base, pf or "-", "net")
print(json.dumps({"pf": pf, "pf_netdev": os.listdir(pf_net)[0] if os.path.isdir(pf_net) else None, "mgmt": mgmt, "mgmt_netdev": mgmt_netdev,
                  "iommu": bool(os.listdir("/sys/kernel/iommu_groups")), "kernel": os.uname().release}))
PY')
if [ -z "$facts" ] || ! python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["pf"] and d["mgmt"] and d["iommu"]' "$facts" 2>/dev/null; then
    status "the lab VM booted but lacks an SR-IOV PF, its management NIC or the IOMMU: $facts"
    exit 0
fi

python3 - "$facts" >"$LAB/lab.json" <<PY
import json, sys
facts = json.loads(sys.argv[1])
facts.update(host="127.0.0.1", port=$LAB_PORT, key="$LAB_KEY", python="/usr/bin/python3", build_seconds=$t_build, boot_to_ssh_seconds=$t_ssh)
print(json.dumps(facts, indent=2))
PY
cat >"$LAB_INVENTORY" <<INV
[lab]
virtops-lab ansible_host=127.0.0.1 ansible_port=$LAB_PORT ansible_user=root ansible_ssh_private_key_file=$LAB_KEY ansible_python_interpreter=/usr/bin/python3 ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'
INV
log "build/check ${t_build}s, boot to ssh ${t_ssh}s; facts: $facts"
status ready
