# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""vfio_pci: bind PCI devices to vfio-pci (or give them back), at runtime and at boot.

:func:`ensure_vfio_pci` plans everything first (devices, IOMMU groups, host-use checks, the
original drivers to record, the modprobe.d/modules-load.d content) and only then applies the plan;
check mode returns the plan. The recorded drivers and the persistent files are read, changed and
written under their file locks, so concurrent runs both land their change. Under a fake ``root``
no modprobe or initramfs rebuild runs on this machine.
"""

from __future__ import annotations

import json
import re
import time

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._host_facts import apply_files, encode_raw, locked_files
from ansible_collections.virtops.kvm.plugins.module_utils._pci import (
    MANAGED,
    PCI_DEVICES,
    VFIO,
    PciHost,
    bind_vfio,
    file_plan,
    host_users,
    normalize_address,
    normalize_ids,
    pci_netdevs,
    unbind_vfio,
)

ORIGINAL_DRIVERS = "/var/lib/virtops-kvm/vfio-pci-drivers.json"
MODPROBE_CONF = "/etc/modprobe.d/virtops-vfio-pci.conf"
MODULES_LOAD_CONF = "/etc/modules-load.d/virtops-vfio-pci.conf"
INITRAMFS_TOOLS = (["update-initramfs", "-u"], ["dracut", "-f"])
KERNEL_DEFAULT = "(kernel default)"


# -- IOMMU ---------------------------------------------------------------------------------------
def iommu_enabled(fs):
    return any(entry.isdigit() for entry in fs.listdir("/sys/kernel/iommu_groups"))


def iommu_hint(fs):
    cpuinfo = fs.read("/proc/cpuinfo") or ""
    param = "amd_iommu=on" if "AuthenticAMD" in cpuinfo else "intel_iommu=on"
    return "add %s iommu=pt to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub) and reboot" % param


def group_endpoints(host, address):
    """Addresses of the endpoints in ``address``'s IOMMU group (bridges excluded), itself included."""
    group = host.fs.readlink_name("%s/%s/iommu_group" % (PCI_DEVICES, address))
    if group is None:
        return [address]
    members = []
    for member in host.fs.listdir("/sys/kernel/iommu_groups/%s/devices" % group):
        pci_class = host.fs.read("%s/%s/class" % (PCI_DEVICES, member)) or ""
        if member == address or not pci_class.startswith(("0x0604", "0x0600")):
            members.append(member)
    return members


# -- state ---------------------------------------------------------------------------------------
def _load_originals(fs):
    try:
        return json.loads(fs.read(ORIGINAL_DRIVERS) or "{}")
    except ValueError:
        return {}


def _on_vfio(dev):
    return dev["driver"] == VFIO and dev["driver_override"] in (None, VFIO)


def _devices_for_ids(host, ids):
    return [address for address in host.fs.listdir(PCI_DEVICES) if host.device(address)["ids"] in ids]


def persistent_files(fs, ids, softdeps, state):
    """Wanted content of the modprobe.d and modules-load.d files (``None`` = absent), merged with what is there."""
    current_ids, current_deps = set(), set()
    for line in fs.read_lines(MODPROBE_CONF):
        match = re.match(r"options vfio-pci ids=(\S+)", line)
        if match:
            current_ids.update(match.group(1).split(","))
        match = re.match(r"softdep (\S+) pre: vfio-pci", line)
        if match:
            current_deps.add(match.group(1))
    wanted_ids = current_ids | set(ids) if state == "bound" else current_ids - set(ids)
    wanted_deps = current_deps | set(softdeps) if state == "bound" else current_deps
    if not wanted_ids:
        return {MODPROBE_CONF: None, MODULES_LOAD_CONF: None}
    lines = [MANAGED % "vfio_pci", "options vfio-pci ids=%s\n" % ",".join(sorted(wanted_ids))]
    lines += ["softdep %s pre: vfio-pci\n" % dep for dep in sorted(wanted_deps)]
    return {MODPROBE_CONF: "".join(lines), MODULES_LOAD_CONF: MANAGED % "vfio_pci" + "vfio-pci\n"}


# -- plan ----------------------------------------------------------------------------------------
def _select(host, params):
    """Listed and ID-matched device addresses, validated."""
    addresses = [normalize_address(a) for a in params.get("devices") or ()]
    id_list = sorted({normalize_ids(i) for i in params.get("ids") or ()})
    for address in addresses:
        if not host.exists(address):
            raise ValidationError("no PCI device %s on this host (see lspci -D)" % address)
    for address in _devices_for_ids(host, id_list):
        if address not in addresses:
            addresses.append(address)
    return addresses, id_list


def _with_groups(host, addresses, before_devs, state, group_policy):
    """``(addresses, groups)``: with state=bound, every IOMMU group is completed (bind_all) or refused (fail)."""
    groups = {}
    if state != "bound":
        return addresses, {address: group_endpoints(host, address) for address in addresses}
    queue = list(addresses)
    for address in queue:
        members = group_endpoints(host, address)
        groups[address] = members
        others = [m for m in members if m not in queue and not _on_vfio(host.device(m))]
        if others and group_policy == "fail":
            listing = ", ".join("%s (%s)" % (m, host.device(m)["driver"] or "no driver") for m in members)
            raise ValidationError(
                "IOMMU group %s of %s has other endpoints not bound to vfio-pci: %s. A guest can only use the device "
                "when the whole group is on vfio-pci: add them to devices, or set group_policy=bind_all"
                % (before_devs[address]["iommu_group"], address, listing),
                group_members=members,
            )
        for member in others:
            queue.append(member)
            before_devs[member] = host.device(member)
    return queue, groups


def _refuse_host_devices(host, to_change, before_devs):
    routes = host.net.default_route_ifnames() if host.net and any(pci_netdevs(host.fs, a) for a in to_change) else set()
    for address in to_change:
        reasons = host_users(host, address, routes)
        if reasons:
            raise ValidationError(
                "refusing to take %s (driver %s) away from the host: %s. Set force=true to unbind it anyway"
                % (address, before_devs[address]["driver"], "; ".join(reasons)),
                address=address,
                in_use=reasons,
            )


def plan_vfio_pci(host, params):
    """Everything the run will do, validated; nothing is changed."""
    state = params.get("state") or "bound"
    addresses, id_list = _select(host, params)
    if state == "bound" and addresses and not iommu_enabled(host.fs):
        raise ValidationError("cannot bind %s to vfio-pci: the IOMMU is off (no /sys/kernel/iommu_groups); %s" % (", ".join(addresses), iommu_hint(host.fs)))
    before_devs = {a: host.device(a) for a in addresses}
    addresses, groups = _with_groups(host, addresses, before_devs, state, params.get("group_policy") or "fail")
    to_change = [
        a for a in addresses if (not _on_vfio(before_devs[a])) == (state == "bound") or (state == "unbound" and before_devs[a]["driver_override"] == VFIO)
    ]
    if state == "bound" and not params.get("force"):
        _refuse_host_devices(host, to_change, before_devs)

    originals = _load_originals(host.fs)
    new_originals = dict(originals)
    after_driver = {}
    for address in addresses:
        dev = before_devs[address]
        if address not in to_change:
            after_driver[address] = dev["driver"]
        elif state == "bound":
            after_driver[address] = VFIO
            if dev["driver"] and dev["driver"] != VFIO:
                new_originals[address] = dev["driver"]
        else:
            after_driver[address] = originals.get(address) or KERNEL_DEFAULT
            new_originals.pop(address, None)
    files = {}
    if params.get("persistent"):
        persist_ids = set(id_list) | {before_devs[a]["ids"] for a in addresses if before_devs[a]["ids"]}
        softdeps = {new_originals.get(a) or before_devs[a]["driver"] for a in addresses} - {None, VFIO}
        files = persistent_files(host.fs, persist_ids, softdeps, state)
    file_changes, files_before, files_after = file_plan(host.fs, files)
    return {
        "state": state,
        "addresses": addresses,
        "groups": groups,
        "before": before_devs,
        "to_change": to_change,
        "originals": originals,
        "new_originals": new_originals,
        "after_driver": after_driver,
        "files": files,
        "file_changes": file_changes,
        "files_before": files_before,
        "files_after": files_after,
    }


# -- apply ---------------------------------------------------------------------------------------
def initramfs_command(host):
    """The command that rebuilds the initramfs here (update-initramfs or dracut), or ``None``."""
    for argv in INITRAMFS_TOOLS:
        if host.confined:
            if any(host.fs.exists("%s/%s" % (d, argv[0])) for d in ("/usr/sbin", "/sbin", "/usr/bin")):
                return argv
        elif host.runner.which(argv[0]):
            return argv
    return None


def update_initramfs(host):
    """Rebuild the initramfs; under a fake root only warn with the command to run inside that system."""
    argv = initramfs_command(host)
    if argv is None:
        host.warnings.append("neither update-initramfs nor dracut was found: the initramfs was not rebuilt")
        return None
    if host.confined:
        host.warnings.append(
            "the initramfs below %s was not rebuilt: with a root other than / the module runs no command on this machine. "
            "Run '%s' inside that system (for example chroot %s %s) before it boots" % (host.fs.root, " ".join(argv), host.fs.root, " ".join(argv))
        )
        return None
    host.runner.run(argv, what=" ".join(argv))
    return argv[0]


def apply_vfio_pci(host, plan):
    """Carry the plan out; returns the tool that rebuilt the initramfs (or ``None``)."""
    for address in plan["to_change"]:
        if plan["state"] == "bound":
            bind_vfio(host, address)
        else:
            unbind_vfio(host, address, plan["originals"].get(address))
        plan["after_driver"][address] = host.fs.readlink_name("%s/%s/driver" % (PCI_DEVICES, address))
    if plan["new_originals"] != plan["originals"]:
        host.fs.write_atomic(ORIGINAL_DRIVERS, encode_raw(json.dumps(plan["new_originals"], indent=2, sort_keys=True) + "\n"), mode=0o644)
    apply_files(host.fs, {path: plan["files"][path] for path in plan["file_changes"]})
    return plan["file_changes"]


def _result(plan, initramfs_tool, warnings):
    devices = []
    for address in plan["addresses"]:
        dev = plan["before"][address]
        devices.append(
            {
                "address": address,
                "ids": dev["ids"],
                "iommu_group": dev["iommu_group"],
                "driver_before": dev["driver"],
                "driver_after": plan["after_driver"][address],
                "group_members": plan["groups"].get(address, [address]),
            }
        )
    return {
        "changed": bool(plan["to_change"] or plan["file_changes"]),
        "devices": devices,
        "files_changed": plan["file_changes"],
        "reboot_required": bool(plan["file_changes"]),
        "initramfs_updated": initramfs_tool,
        "warnings": warnings,
        "diff": {
            "before": {"drivers": {a: plan["before"][a]["driver"] for a in plan["addresses"]}, "files": plan["files_before"]},
            "after": {"drivers": dict(plan["after_driver"]), "files": plan["files_after"]},
        },
    }


def ensure_vfio_pci(backends, params, check_mode, *, sleep=time.sleep):
    """The module's entry point: bind (``state=bound``) or release (``unbound``) PCI devices.

    ``sleep`` is how the run waits for the kernel (tests pass one that returns at once).
    """
    host = PciHost.from_backends(backends, check_mode, sleep=sleep)
    initramfs_tool = None
    with locked_files(host.fs, [ORIGINAL_DRIVERS, MODPROBE_CONF, MODULES_LOAD_CONF]):
        plan = plan_vfio_pci(host, params)
        if not check_mode:
            changed_files = apply_vfio_pci(host, plan)
            if changed_files and params.get("update_initramfs", True):
                initramfs_tool = update_initramfs(host)
    return _result(plan, initramfs_tool, list(host.warnings))
