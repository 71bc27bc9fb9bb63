# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""host_info: facts about a hypervisor host, read from sysfs/procfs (through HostFS) and libvirt.

Each gatherer takes the accessor (and, for libvirt, the run's client) and returns plain data.
A field that cannot be read is ``None``; only libvirt facts that the user asked for explicitly can
fail the module. The facts other host modules need live in the shared ``_host_facts`` and ``_pci``.
"""

from __future__ import annotations

import re

from ansible_collections.virtops.kvm.plugins.module_utils import _libvirt
from ansible_collections.virtops.kvm.plugins.module_utils._domain_info import gather_domains
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._host_facts import (
    NODES,
    cpuinfo_first,
    gather_apparmor,
    gather_hugepages,
    gather_ksm,
    node_ids,
    tristate,
)
from ansible_collections.virtops.kvm.plugins.module_utils._pci import PCI_DEVICES, int_or_none, pci_device, vf_addresses
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml

SUBSETS = ("cpu", "kvm", "numa", "hugepages", "iommu", "sriov", "apparmor", "ksm", "libvirt")
# groups read only when named: not part of "all"
EXTRA_SUBSETS = ("domains",)
KVM_DEVICE = "/dev/kvm"
KVM_FIX = 'chgrp kvm /dev/kvm && chmod 0660 /dev/kvm, and keep it so at boot with a udev rule (KERNEL=="kvm", GROUP="kvm", MODE="0660"), then restart libvirtd'
SLOW_LIBVIRT = (
    "This is also why libvirt calls are slow here: libvirt 9.0 sees that KVM was available when it probed QEMU but is not "
    "usable now, throws its QEMU capabilities cache away and probes QEMU again on every call "
    "(measured: defineXML 48 s instead of 0.02 s, getCapabilities 7.9 s instead of 0.01 s)."
)


# -- /proc/cpuinfo (cpuinfo_first is in _host_facts) ---------------------------------------------
def gather_cpu(fs):
    info = cpuinfo_first(fs)
    flags = set(info.get("flags", "").split())
    phys = virt = None
    match = re.match(r"(\d+) bits physical, (\d+) bits virtual", info.get("address sizes", ""))
    if match:
        phys, virt = int(match.group(1)), int(match.group(2))
    virt_flag = "vmx" if "vmx" in flags else "svm" if "svm" in flags else None
    return {
        "vendor": info.get("vendor_id"),
        "model_name": info.get("model name"),
        "virtualization_flag": virt_flag,
        "address_bits": {"physical": phys, "virtual": virt},
    }


# -- kvm-ok ------------------------------------------------------------------------------------
def _users(fs):
    users = {}
    for line in fs.read_lines("/etc/passwd"):
        parts = line.split(":")
        if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
            users[parts[0]] = (int(parts[2]), int(parts[3]))
    return users


def _groups(fs):
    groups = {}
    for line in fs.read_lines("/etc/group"):
        parts = line.split(":")
        if len(parts) >= 4 and parts[2].isdigit():
            groups[parts[0]] = (int(parts[2]), [m for m in parts[3].split(",") if m])
    return groups


def _qemu_conf_value(fs, key):
    for line in fs.read_lines("/etc/libvirt/qemu.conf"):
        match = re.match(r'\s*%s\s*=\s*"([^"]*)"' % re.escape(key), line)
        if match:
            return match.group(1)
    return None


def qemu_user(fs):
    """The user QEMU runs as under qemu:///system: qemu.conf's ``user``, else the distro default."""
    configured = _qemu_conf_value(fs, "user")
    if configured:
        return configured.lstrip("+")
    users = _users(fs)
    for candidate in ("libvirt-qemu", "qemu"):
        if candidate in users:
            return candidate
    return None


def qemu_gids(fs, user):
    """``(gids, group name)`` QEMU runs with: the user's primary and supplementary groups and qemu.conf's ``group``."""
    users, groups = _users(fs), _groups(fs)
    if user not in users:
        return None, None
    uid, gid = users[user]
    gids = {gid} | {g_id for _name, (g_id, members) in groups.items() if user in members}
    configured = (_qemu_conf_value(fs, "group") or "").lstrip("+")
    names = {g_id: name for name, (g_id, _members) in groups.items()}
    if configured in groups:
        gids.add(groups[configured][0])
    elif configured.isdigit():
        gids.add(int(configured))
    return (uid, gids), configured or names.get(gid, str(gid))


def _can_read_write(st, uid, gids):
    mode = st.st_mode
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(mode & 0o200) and bool(mode & 0o400)
    if st.st_gid in gids:
        return bool(mode & 0o020) and bool(mode & 0o040)
    return bool(mode & 0o002) and bool(mode & 0o004)


def _kvm_module(fs, cpu):
    flag = cpu["virtualization_flag"]
    module = "kvm_intel" if flag == "vmx" else "kvm_amd" if flag == "svm" else None
    if module is None:
        for candidate in ("kvm_intel", "kvm_amd"):
            if fs.isdir("/sys/module/%s" % candidate):
                module = candidate
    return module


def kvm_device(fs):
    """Owner, group and mode of /dev/kvm, whether the QEMU user can open it read-write (a tri-state), and that user."""
    present = fs.is_char_device(KVM_DEVICE)
    st = fs.stat(KVM_DEVICE) if present else None
    user = qemu_user(fs)
    ids, group = qemu_gids(fs, user) if user else (None, None)
    owners = {uid: name for name, (uid, _gid) in _users(fs).items()}
    group_names = {gid: name for name, (gid, _members) in _groups(fs).items()}
    return {
        "device_present": present,
        "device_owner": owners.get(st.st_uid, str(st.st_uid)) if st else None,
        "device_group": group_names.get(st.st_gid, str(st.st_gid)) if st else None,
        "device_mode": "%04o" % (st.st_mode & 0o7777) if st else None,
        "qemu_user": user,
        "qemu_group": group,
        "usable_by_qemu_user": _can_read_write(st, *ids) if st and ids else None,
    }


def _kvm_verdict(cpu, device, module):
    """``(ok, reason, slow_libvirt_cause)`` for the kvm-ok question."""
    user = device["qemu_user"]
    if cpu["virtualization_flag"] is None and not device["device_present"]:
        return False, "the CPU reports neither vmx nor svm and /dev/kvm does not exist: enable virtualization in firmware, or use TCG (domain type qemu)", None
    if not device["device_present"]:
        return False, "/dev/kvm does not exist: load %s (modprobe %s)" % (module or "kvm_intel or kvm_amd", module or "kvm_intel"), None
    if device["usable_by_qemu_user"] is False:
        reason = "/dev/kvm exists but %s (the user QEMU runs as, group %s) cannot open it read-write: it is owner %s, group %s, mode %s. Fix: %s." % (
            user,
            device["qemu_group"],
            device["device_owner"],
            device["device_group"],
            device["device_mode"],
            KVM_FIX,
        )
        return False, reason + " " + SLOW_LIBVIRT, SLOW_LIBVIRT
    if cpu["virtualization_flag"] is None:
        return True, "/dev/kvm exists although /proc/cpuinfo shows no vmx/svm flag (nested or paravirtual host); KVM acceleration can be used", None
    return True, "KVM acceleration can be used", None


def gather_kvm(fs, cpu=None):
    """The kvm-ok question: can QEMU use hardware acceleration here, and if not, why (and what it costs)."""
    cpu = cpu or gather_cpu(fs)
    module = _kvm_module(fs, cpu)
    device = kvm_device(fs)
    ok, reason, slow = _kvm_verdict(cpu, device, module)
    facts = {"ok": ok, "reason": reason, "slow_libvirt_cause": slow}
    facts.update(device)
    facts.update(
        {
            "module": module,
            "module_loaded": fs.isdir("/sys/module/%s" % module) if module else False,
            "nested": tristate(fs.read("/sys/module/%s/parameters/nested" % module) if module else None),
        }
    )
    return facts


# -- NUMA ----------------------------------------------------------------------------------------
def gather_numa(fs):
    nodes = []
    for node in node_ids(fs):
        mem_total = mem_free = None
        for line in fs.read_lines("%s/node%d/meminfo" % (NODES, node)):
            match = re.match(r"Node \d+ (MemTotal|MemFree):\s+(\d+) kB", line)
            if match and match.group(1) == "MemTotal":
                mem_total = int(match.group(2))
            elif match:
                mem_free = int(match.group(2))
        nodes.append({"id": node, "cpus": fs.read("%s/node%d/cpulist" % (NODES, node)), "memory_total_kb": mem_total, "memory_free_kb": mem_free})
    return {"node_count": len(nodes), "nodes": nodes}


# -- PCI: IOMMU and SR-IOV ---------------------------------------------------------------------
def gather_iommu(fs):
    groups = {}
    for entry in fs.listdir("/sys/kernel/iommu_groups"):
        if entry.isdigit():
            groups[entry] = [pci_device(fs, addr) for addr in fs.listdir("/sys/kernel/iommu_groups/%s/devices" % entry)]
    cmdline = fs.read("/proc/cmdline") or ""
    return {
        "enabled": bool(groups) or bool(fs.listdir("/sys/class/iommu")),
        "units": fs.listdir("/sys/class/iommu"),
        "kernel_cmdline": [arg for arg in cmdline.split() if arg.split("=")[0] in ("intel_iommu", "amd_iommu", "iommu")],
        "group_count": len(groups),
        "groups": dict(sorted(groups.items(), key=lambda item: int(item[0]))),
    }


def gather_sriov(fs):
    devices = []
    for address in fs.listdir(PCI_DEVICES):
        base = "%s/%s" % (PCI_DEVICES, address)
        total = fs.read_int(base + "/sriov_totalvfs")
        if total is None:
            continue
        dev = pci_device(fs, address)
        flags = fs.read("/sys/class/net/%s/flags" % dev["netdevs"][0]) if dev["netdevs"] else None
        devices.append(
            {
                "address": address,
                "netdevs": dev["netdevs"],
                # the first netdev's administrative state (IFF_UP); libvirt hands out VFs as interfaces only then
                "up": bool(int(flags, 16) & 0x1) if flags else None,
                "driver": dev["driver"],
                "totalvfs": total,
                "numvfs": fs.read_int(base + "/sriov_numvfs"),
                "vfs": vf_addresses(fs, address),
            }
        )
    return {"devices": devices}


# -- libvirt -----------------------------------------------------------------------------------
def _version(number):
    if number is None:
        return None
    return "%d.%d.%d" % (number // 1000000, (number // 1000) % 1000, number % 1000)


def gather_libvirt(client):
    """libvirt/QEMU versions, domain types, machine types and host CPU facts from capabilities."""
    conn = client.conn
    caps = parse_xml(client.call("cannot read capabilities", conn.getCapabilities), what="capabilities")
    host_cpu = caps.find("host/cpu")
    maxphys = host_cpu.find("maxphysaddr") if host_cpu is not None else None
    guests = {}
    machines = set()
    for guest in caps.findall("guest"):
        arch = guest.find("arch")
        if arch is None or guest.findtext("os_type") != "hvm":
            continue
        entry = guests.setdefault(arch.get("name"), {"domain_types": [], "machines": [], "machine_aliases": {}})
        for domain in arch.findall("domain"):
            entry["domain_types"].append(domain.get("type"))
        for machine in arch.findall("machine"):
            name = machine.text
            if machine.get("canonical"):
                entry["machine_aliases"][name] = machine.get("canonical")
            if name not in entry["machines"]:
                entry["machines"].append(name)
            machines.add(name)
        entry["machines"].sort()
    hv_version = None
    try:
        hv_version = _version(conn.getVersion())
    except Exception:  # pylint: disable=broad-exception-caught
        hv_version = None
    host_arch = caps.findtext("host/cpu/arch")
    return {
        "uri": client.uri,
        "libvirt_version": _version(conn.getLibVersion()),
        "hypervisor": conn.getType(),
        "hypervisor_version": hv_version,
        "host_arch": host_arch,
        "host_cpu_model": host_cpu.findtext("model") if host_cpu is not None else None,
        "host_maxphysaddr": {"mode": maxphys.get("mode"), "bits": int_or_none(maxphys.get("bits"))} if maxphys is not None else None,
        "domain_types": sorted(guests.get(host_arch, {}).get("domain_types", [])),
        "guests": guests,
        "hpb_machine_types": sorted(m for m in machines if m.endswith("-hpb")),
        "networks": _networks(client, conn.listAllNetworks),
        "pools": _pools(client, conn.listAllStoragePools),
    }


def _networks(client, list_all):
    """Every libvirt network: name, active, autostart and the bridge it puts guests on."""
    found = []
    for net in client.call("cannot list networks", list_all):
        bridge = None
        if net.isActive():
            bridge = parse_xml(client.call("cannot read network %s" % net.name(), net.XMLDesc), what="network").find("bridge")
        found.append(
            {
                "name": net.name(),
                "active": bool(net.isActive()),
                "autostart": bool(net.autostart()),
                "bridge": bridge.get("name") if bridge is not None else None,
            }
        )
    return sorted(found, key=lambda net: net["name"])


def _pools(client, list_all):
    """Every storage pool: name, active, autostart."""
    found = [
        {"name": pool.name(), "active": bool(pool.isActive()), "autostart": bool(pool.autostart())}
        for pool in client.call("cannot list storage pools", list_all)
    ]
    return sorted(found, key=lambda pool: pool["name"])


# -- the runner --------------------------------------------------------------------------------
_GATHERERS = {
    "numa": gather_numa,
    "hugepages": gather_hugepages,
    "iommu": gather_iommu,
    "sriov": gather_sriov,
    "apparmor": gather_apparmor,
    "ksm": gather_ksm,
}


def _libvirt_facts(client_factory, libvirt_required):
    """``(facts or None, error text or None)``; an unreachable libvirt fails only when it was asked for by name."""
    try:
        return gather_libvirt(client_factory()), None
    except LibvirtError as exc:
        if libvirt_required:
            raise LibvirtError("libvirt facts were requested (gather: libvirt) but %s. Start libvirtd or fix uri." % exc.msg, code=exc.code) from exc
        return None, exc.msg


def gather(fs, subsets, client_factory=None, libvirt_required=False, domain_names=None):
    """All requested facts. ``client_factory()`` gives the libvirt client; failures are fatal only if required.

    ``domain_names`` limits the ``domains`` group to the guests of those names that exist.
    """
    facts = {}
    cpu = gather_cpu(fs) if "cpu" in subsets or "kvm" in subsets else None
    if "cpu" in subsets:
        facts["cpu"] = cpu
    if "kvm" in subsets:
        facts["kvm"] = gather_kvm(fs, cpu)
    for name, gatherer in _GATHERERS.items():
        if name in subsets:
            facts[name] = gatherer(fs)
    if "libvirt" in subsets:
        facts["libvirt"], error = _libvirt_facts(client_factory, libvirt_required)
        if error is not None:
            facts["libvirt_error"] = error
    if "domains" in subsets:
        # as domain_info with include_xml reports them: a role that needs the host and its guests reads both in one call
        try:
            facts["domains"] = gather_domains(client_factory(), include_xml=True, names=domain_names)
        except LibvirtError as exc:
            raise LibvirtError("the guests were requested (gather: domains) but %s. Start libvirtd or fix uri." % exc.msg, code=exc.code) from exc
    return facts


def ensure_host_info(backends, params, check_mode):
    """The module's entry point (read-only): the facts ``params['gather']`` names."""
    del check_mode  # nothing is changed either way
    requested = params.get("gather") or ["all"]
    subsets = (set(SUBSETS) | set(requested) - {"all"}) if "all" in requested else set(requested)

    def client_factory():
        if _libvirt.libvirt is None:
            raise LibvirtError("libvirt-python is not installed on the managed host (pip install libvirt-python, or apt-get install python3-libvirt)")
        return backends.libvirt

    domain_names = params.get("domain_names")
    if domain_names is not None and "domains" not in subsets:
        raise ValidationError("domain_names limits the guests that gather: domains reads; add domains to gather, or leave domain_names out")
    facts = gather(backends.hostfs, subsets, client_factory, libvirt_required="libvirt" in requested, domain_names=domain_names)
    warnings = []
    if facts.get("kvm", {}).get("slow_libvirt_cause"):
        warnings.append(facts["kvm"]["reason"])
    return {"changed": False, "host": facts, "warnings": warnings}
