# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts about a hypervisor host, read from sysfs/procfs (through HostFS) and libvirt.

Each gatherer takes the accessor (and, for libvirt, a client factory) and returns plain data.
A field that cannot be read is ``None``; only libvirt facts that the user asked for explicitly can
fail the module.
"""

from __future__ import annotations

import re

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import hostfs_for
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LibvirtClient, libvirt
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml

SUBSETS = ("cpu", "kvm", "numa", "hugepages", "iommu", "sriov", "apparmor", "ksm", "libvirt")

PCI_DEVICES = "/sys/bus/pci/devices"
HUGEPAGES = "/sys/kernel/mm/hugepages"
NODES = "/sys/devices/system/node"
KSM = "/sys/kernel/mm/ksm"
_KSM_FIELDS = (
    "run", "pages_to_scan", "sleep_millisecs", "merge_across_nodes", "pages_shared", "pages_sharing",
    "pages_unshared", "pages_volatile", "full_scans", "max_page_sharing", "use_zero_pages",
)


# -- /proc/cpuinfo -----------------------------------------------------------------------------
def _cpuinfo_first(fs):
    """Key/values of the first processor block of /proc/cpuinfo."""
    info = {}
    for line in fs.read_lines("/proc/cpuinfo"):
        if not line.strip():
            if info:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info


def gather_cpu(fs):
    info = _cpuinfo_first(fs)
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


def _can_read_write(st, uid, gids):
    mode = st.st_mode
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(mode & 0o200) and bool(mode & 0o400)
    if st.st_gid in gids:
        return bool(mode & 0o020) and bool(mode & 0o040)
    return bool(mode & 0o002) and bool(mode & 0o004)


def gather_kvm(fs, cpu=None):
    """The kvm-ok question: can QEMU use hardware acceleration here, and if not, why."""
    cpu = cpu or gather_cpu(fs)
    module = "kvm_intel" if cpu["virtualization_flag"] == "vmx" else "kvm_amd" if cpu["virtualization_flag"] == "svm" else None
    if module is None:
        for candidate in ("kvm_intel", "kvm_amd"):
            if fs.isdir("/sys/module/%s" % candidate):
                module = candidate
    nested = fs.read("/sys/module/%s/parameters/nested" % module) if module else None
    present = fs.is_char_device("/dev/kvm")
    st = fs.stat("/dev/kvm") if present else None
    user = qemu_user(fs)
    usable = None
    if present and user:
        users, groups = _users(fs), _groups(fs)
        if user in users:
            uid, gid = users[user]
            gids = {gid} | {g_id for _name, (g_id, members) in groups.items() if user in members}
            usable = _can_read_write(st, uid, gids)
    if cpu["virtualization_flag"] is None and not present:
        ok, reason = False, "the CPU reports neither vmx nor svm and /dev/kvm does not exist: enable virtualization in firmware, or use TCG (domain type qemu)"
    elif not present:
        ok, reason = False, "/dev/kvm does not exist: load %s (modprobe %s)" % (module or "kvm_intel or kvm_amd", module or "kvm_intel")
    elif usable is False:
        ok, reason = False, ("/dev/kvm exists but %s cannot open it read-write: "
                             "add %s to the group owning /dev/kvm (usually kvm) or fix the udev rule" % (user, user))
    elif cpu["virtualization_flag"] is None:
        ok, reason = True, "/dev/kvm exists although /proc/cpuinfo shows no vmx/svm flag (nested or paravirtual host); KVM acceleration can be used"
    else:
        ok, reason = True, "KVM acceleration can be used"
    return {
        "ok": ok,
        "reason": reason,
        "device_present": present,
        "device_mode": "%04o" % (st.st_mode & 0o7777) if st else None,
        "qemu_user": user,
        "usable_by_qemu_user": usable,
        "module": module,
        "module_loaded": fs.isdir("/sys/module/%s" % module) if module else False,
        "nested": _yes_no(nested),
    }


def _yes_no(value):
    if value is None:
        return None
    return value.strip() in ("Y", "y", "1")


# -- NUMA and hugepages ------------------------------------------------------------------------
def _size_kb(dirname):
    match = re.match(r"hugepages-(\d+)kB$", dirname)
    return int(match.group(1)) if match else None


def _pool(fs, base, with_reserved):
    pool = {
        "total": fs.read_int(base + "/nr_hugepages"),
        "free": fs.read_int(base + "/free_hugepages"),
        "surplus": fs.read_int(base + "/surplus_hugepages"),
    }
    if with_reserved:
        pool["reserved"] = fs.read_int(base + "/resv_hugepages")
    return pool


def node_ids(fs):
    ids = []
    for entry in fs.listdir(NODES):
        match = re.match(r"node(\d+)$", entry)
        if match:
            ids.append(int(match.group(1)))
    return sorted(ids)


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


def default_hugepage_size_kb(fs):
    for line in fs.read_lines("/proc/meminfo"):
        match = re.match(r"Hugepagesize:\s+(\d+) kB", line)
        if match:
            return int(match.group(1))
    return None


def hugetlbfs_mounts(fs):
    mounts = []
    for line in fs.read_lines("/proc/mounts"):
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "hugetlbfs":
            options = dict(o.partition("=")[::2] for o in parts[3].split(","))
            mounts.append({"path": parts[1], "pagesize": options.get("pagesize")})
    return mounts


def gather_hugepages(fs):
    pools = {}
    for entry in fs.listdir(HUGEPAGES):
        size = _size_kb(entry)
        if size is None:
            continue
        pool = _pool(fs, "%s/%s" % (HUGEPAGES, entry), with_reserved=True)
        pool["size_kb"] = size
        pool["nodes"] = {}
        for node in node_ids(fs):
            base = "%s/node%d/hugepages/%s" % (NODES, node, entry)
            if fs.isdir(base):
                pool["nodes"][str(node)] = _pool(fs, base, with_reserved=False)
        pools["%dkB" % size] = pool
    return {"default_size_kb": default_hugepage_size_kb(fs), "pools": pools, "mounts": hugetlbfs_mounts(fs)}


# -- PCI: IOMMU and SR-IOV ---------------------------------------------------------------------
def pci_netdevs(fs, address):
    """Network interfaces of a PCI device: ``net/*``, and ``virtioN/net/*`` for virtio NICs."""
    base = "%s/%s" % (PCI_DEVICES, address)
    names = fs.listdir(base + "/net")
    for entry in fs.listdir(base):
        if re.match(r"virtio\d+$", entry):
            names += fs.listdir("%s/%s/net" % (base, entry))
    return names


def pci_device(fs, address):
    base = "%s/%s" % (PCI_DEVICES, address)
    vendor, device = fs.read(base + "/vendor"), fs.read(base + "/device")
    return {
        "address": address,
        "vendor_id": vendor[2:] if vendor and vendor.startswith("0x") else vendor,
        "device_id": device[2:] if device and device.startswith("0x") else device,
        "class": fs.read(base + "/class"),
        "driver": fs.readlink_name(base + "/driver"),
        "iommu_group": _int_or_none(fs.readlink_name(base + "/iommu_group")),
        "netdevs": pci_netdevs(fs, address),
    }


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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
        devices.append({
            "address": address,
            "netdevs": dev["netdevs"],
            "driver": dev["driver"],
            "totalvfs": total,
            "numvfs": fs.read_int(base + "/sriov_numvfs"),
            "vfs": [fs.readlink_name("%s/%s" % (base, link)) for link in fs.listdir(base) if re.match(r"virtfn\d+$", link)],
        })
    return {"devices": devices}


# -- AppArmor and KSM --------------------------------------------------------------------------
def gather_apparmor(fs):
    enabled = _yes_no(fs.read("/sys/module/apparmor/parameters/enabled"))
    return {"enabled": bool(enabled), "kernel_module": fs.isdir("/sys/module/apparmor")}


def gather_ksm(fs):
    if not fs.isdir(KSM):
        return {"available": False}
    facts = {"available": True}
    for field in _KSM_FIELDS:
        facts[field] = fs.read_int("%s/%s" % (KSM, field))
    return facts


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
        "host_maxphysaddr": {"mode": maxphys.get("mode"), "bits": _int_or_none(maxphys.get("bits"))} if maxphys is not None else None,
        "domain_types": sorted(guests.get(host_arch, {}).get("domain_types", [])),
        "guests": guests,
        "hpb_machine_types": sorted(m for m in machines if m.endswith("-hpb")),
    }


# -- the runner --------------------------------------------------------------------------------
def gather(fs, subsets, client_factory=None, libvirt_required=False):
    """All requested facts. ``client_factory()`` opens libvirt; failures are fatal only if required."""
    facts = {}
    cpu = gather_cpu(fs) if "cpu" in subsets or "kvm" in subsets else None
    if "cpu" in subsets:
        facts["cpu"] = cpu
    if "kvm" in subsets:
        facts["kvm"] = gather_kvm(fs, cpu)
    if "numa" in subsets:
        facts["numa"] = gather_numa(fs)
    if "hugepages" in subsets:
        facts["hugepages"] = gather_hugepages(fs)
    if "iommu" in subsets:
        facts["iommu"] = gather_iommu(fs)
    if "sriov" in subsets:
        facts["sriov"] = gather_sriov(fs)
    if "apparmor" in subsets:
        facts["apparmor"] = gather_apparmor(fs)
    if "ksm" in subsets:
        facts["ksm"] = gather_ksm(fs)
    if "libvirt" in subsets:
        facts["libvirt"] = None
        try:
            client = client_factory()
            try:
                facts["libvirt"] = gather_libvirt(client)
            finally:
                client.close()
        except LibvirtError as exc:
            if libvirt_required:
                raise LibvirtError(
                    "libvirt facts were requested (gather: libvirt) but %s. Start libvirtd or fix uri." % exc.msg,
                    code=exc.code,
                ) from exc
            facts["libvirt_error"] = exc.msg
    return facts


def run_host_info(module):
    """Module runner: ``gather`` and ``root`` from the params, libvirt opened on ``uri`` if asked."""
    requested = module.params["gather"]
    subsets = set(SUBSETS) if "all" in requested else set(requested)
    libvirt_required = "libvirt" in requested

    def client_factory():
        if libvirt is None:
            raise LibvirtError("libvirt-python is not installed on the managed host (pip install libvirt-python, or apt-get install python3-libvirt)")
        return LibvirtClient.open(module.params["uri"], read_only=True)

    facts = gather(hostfs_for(module, module.params["root"]), subsets, client_factory, libvirt_required)
    return {"changed": False, "host": facts}
