# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCI devices of a hypervisor: binding to vfio-pci (``vfio_pci``) and SR-IOV VFs (``sriov``).

Everything the logic touches comes in through a :class:`PciHost`: the host filesystem (sysfs,
/proc, /etc through :class:`HostFS`), a command runner (modprobe, update-initramfs), a network
backend (addresses, routes and VF settings through netlink) and a source of running guests. Unit
tests pass a temporary tree that behaves like sysfs and in-memory network/guest backends; a real
run passes pyroute2 and libvirt.
"""

from __future__ import annotations

import json
import os
import re
import time

from ansible_collections.virtops.kvm.plugins.module_utils._command import CommandRunner
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._host_info import PCI_DEVICES, pci_device, pci_netdevs
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import hostfs_for
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LibvirtClient, libvirt
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml

try:
    from pyroute2 import IPRoute
except ImportError:
    IPRoute = None

VFIO = "vfio-pci"
DRIVERS = "/sys/bus/pci/drivers"
ORIGINAL_DRIVERS = "/var/lib/virtops-kvm/vfio-pci-drivers.json"
MODPROBE_CONF = "/etc/modprobe.d/virtops-vfio-pci.conf"
MODULES_LOAD_CONF = "/etc/modules-load.d/virtops-vfio-pci.conf"
UDEV_RULE = "/etc/udev/rules.d/70-virtops-sriov-%s.rules"
MANAGED = "# Managed by virtops.kvm.%s; changes here are overwritten.\n"

_ADDRESS_RE = re.compile(r"^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$", re.IGNORECASE)
_IDS_RE = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{4})$", re.IGNORECASE)
_BRIDGE_CLASSES = ("0x0604", "0x0600")  # PCI-to-PCI bridges and host bridges are not endpoints


# -- input -------------------------------------------------------------------------------------
def looks_like_address(text):
    return ":" in text


def normalize_address(text):
    """``03:00.0`` or ``0000:03:00.0`` -> ``0000:03:00.0``; anything else is a ValidationError."""
    match = _ADDRESS_RE.match(text.strip())
    if not match:
        raise ValidationError("malformed PCI address %r: expected domain:bus:slot.function such as 0000:03:00.0" % text)
    domain, bus, slot, function = match.groups()
    return ("%s:%s:%s.%s" % (domain or "0000", bus, slot, function)).lower()


def normalize_ids(text):
    match = _IDS_RE.match(text.strip())
    if not match:
        raise ValidationError("ids entry %r is not in vendor:device form (four hex digits each, such as 8086:10ca; see lspci -nn)" % text)
    return ("%s:%s" % match.groups()).lower()


# -- backends ----------------------------------------------------------------------------------
class PciHost:
    """The backends the PCI logic works on. ``net`` and ``guests`` may be ``None`` (unavailable)."""

    def __init__(self, fs, *, runner=None, net=None, guests=None, sleep=time.sleep, clock=time.monotonic, check_mode=False):
        self.fs = fs
        self.runner = runner
        self.net = net
        self.guests = guests
        self.sleep = sleep
        self.clock = clock
        self.check_mode = check_mode
        self.warnings = []

    def device(self, address):
        dev = pci_device(self.fs, address)
        override = self.fs.read("%s/%s/driver_override" % (PCI_DEVICES, address))
        dev["driver_override"] = None if override in (None, "", "(null)") else override
        dev["ids"] = "%s:%s" % (dev["vendor_id"], dev["device_id"]) if dev["vendor_id"] and dev["device_id"] else None
        return dev

    def exists(self, address):
        return self.fs.isdir("%s/%s" % (PCI_DEVICES, address))

    def wait_for(self, predicate, timeout, interval=0.2):
        """Poll ``predicate`` until true or ``timeout`` seconds passed; returns its last value."""
        deadline = self.clock() + timeout
        while True:
            value = predicate()
            if value or self.clock() >= deadline:
                return value
            self.sleep(interval)


class NetlinkNet:
    """Addresses, default routes and SR-IOV VF settings through pyroute2 (imported on first use)."""

    def __init__(self):
        self._ipr = None

    def _ip(self):
        if self._ipr is None:
            if IPRoute is None:
                raise HostError("pyroute2 is required on the managed host for netlink (pip install pyroute2, or apt-get install python3-pyroute2)")
            self._ipr = IPRoute()
        return self._ipr

    def close(self):
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _index(self, ifname):
        found = self._ip().link_lookup(ifname=ifname)
        return found[0] if found else None

    def addresses(self, ifname):
        index = self._index(ifname)
        if index is None:
            return []
        return ["%s/%s" % (msg.get_attr("IFA_ADDRESS"), msg["prefixlen"]) for msg in self._ip().get_addr(index=index)
                if msg.get_attr("IFA_ADDRESS") and not msg.get_attr("IFA_ADDRESS").startswith("fe80:")]

    def default_route_ifnames(self):
        names = set()
        for family in (2, 10):
            for route in self._ip().get_default_routes(family=family):
                oif = route.get_attr("RTA_OIF")
                if oif is not None:
                    link = self._ip().get_links(oif)
                    if link:
                        names.add(link[0].get_attr("IFLA_IFNAME"))
        return names

    def vfs(self, ifname):
        """``{index: {mac, vlan, qos, spoofchk, trust, link_state, max_tx_rate}}`` as the kernel reports them."""
        index = self._index(ifname)
        if index is None:
            raise HostError("network interface %s disappeared" % ifname)
        link = self._ip().link("get", index=index, ext_mask=1)[0]
        result = {}
        vflist = link.get_attr("IFLA_VFINFO_LIST")
        for info in vflist.get_attrs("IFLA_VF_INFO") if vflist else []:
            mac = info.get_attr("IFLA_VF_MAC")
            vlan = info.get_attr("IFLA_VF_VLAN") or {}
            rate = info.get_attr("IFLA_VF_RATE") or {}
            spoof = info.get_attr("IFLA_VF_SPOOFCHK") or {}
            trust = info.get_attr("IFLA_VF_TRUST") or {}
            state = info.get_attr("IFLA_VF_LINK_STATE") or {}
            result[mac["vf"]] = {
                "mac": mac["mac"].lower(),
                "vlan": vlan.get("vlan"),
                "qos": vlan.get("qos"),
                "max_tx_rate": rate.get("max_tx_rate"),
                "spoofchk": _flag(spoof.get("spoofchk")),
                "trust": _flag(trust.get("trust")),
                "link_state": LINK_STATES.get(state.get("link_state")),
            }
        return result

    def set_vf(self, ifname, vf_index, settings):
        spec = {"vf": vf_index}
        if "mac" in settings:
            spec["mac"] = settings["mac"]
        if "vlan" in settings or "qos" in settings:
            spec["vlan"] = {"vlan": settings["vlan"], "qos": settings.get("qos") or 0}
        if "max_tx_rate" in settings:
            spec["rate"] = {"min_tx_rate": 0, "max_tx_rate": settings["max_tx_rate"]}
        for key in ("spoofchk", "trust"):
            if key in settings:
                spec[key] = 1 if settings[key] else 0
        if "link_state" in settings:
            spec["link_state"] = {v: k for k, v in LINK_STATES.items()}[settings["link_state"]]
        try:
            self._ip().link("set", index=self._index(ifname), vf=spec)
        except Exception as exc:  # pyroute2's NetlinkError carries the kernel's errno text
            raise HostError("setting %s on VF %d of %s failed: %s" % (", ".join(sorted(settings)), vf_index, ifname, exc)) from exc


LINK_STATES = {0: "auto", 1: "enable", 2: "disable"}


def _flag(value):
    if value is None or value in (-1, 0xFFFFFFFF):
        return None  # the driver does not report it
    return bool(value)


def libvirt_guests(client_factory):
    """A ``guests`` backend: ``[(name, xml)]`` of running domains, or ``None`` when libvirt is unreachable."""

    def guests():
        try:
            client = client_factory()
        except LibvirtError:
            return None
        try:
            return [(dom.name(), dom.XMLDesc(0)) for dom in client.conn.listAllDomains(1)]  # VIR_CONNECT_LIST_DOMAINS_ACTIVE
        finally:
            client.close()

    return guests


# -- who uses a device -------------------------------------------------------------------------
def _iface_flags_up(fs, netdev):
    flags = fs.read("/sys/class/net/%s/flags" % netdev)
    try:
        return bool(int(flags, 16) & 1)
    except (TypeError, ValueError):
        return False


def host_users(host, address, routes=None):
    """Reasons the host itself needs the device: an up NIC with addresses, the default route, mounts, the boot GPU."""
    fs = host.fs
    reasons = []
    base = "%s/%s" % (PCI_DEVICES, address)
    for netdev in pci_netdevs(fs, address):
        addresses = host.net.addresses(netdev) if host.net else []
        if _iface_flags_up(fs, netdev) and addresses:
            reasons.append("network interface %s is up with address %s" % (netdev, ", ".join(addresses)))
        if routes is None and host.net:
            routes = host.net.default_route_ifnames()
        if routes and netdev in routes:
            reasons.append("network interface %s carries the default route" % netdev)
    mounts = {line.split()[0]: line.split()[1] for line in fs.read_lines("/proc/mounts") if len(line.split()) > 1}
    for block in fs.listdir("/sys/block"):
        real = os.path.realpath(fs.path("/sys/block/%s" % block))
        if "/%s/" % address not in real:
            continue
        names = [block] + [entry for entry in fs.listdir("/sys/block/%s" % block) if entry.startswith(block)]
        for name in names:
            if "/dev/%s" % name in mounts:
                reasons.append("disk /dev/%s is mounted on %s" % (name, mounts["/dev/%s" % name]))
    if fs.read(base + "/boot_vga") == "1":
        reasons.append("it is the boot GPU (boot_vga=1)")
    return reasons


def guest_users(host, addresses, netdevs=()):
    """``{address: [guest names]}`` for running libvirt guests that hold one of the devices."""
    if host.guests is None:
        return {}
    guests = host.guests()
    if guests is None:
        host.warnings.append("libvirt is not reachable: could not check whether running guests use the VFs")
        return {}
    wanted = {}
    for address in addresses:
        domain, bus, rest = address.split(":")
        slot, function = rest.split(".")
        wanted[(int(domain, 16), int(bus, 16), int(slot, 16), int(function, 16))] = address
    by_netdev = dict(netdevs)
    users = {}
    for name, xml in guests:
        root = parse_xml(xml, what="domain %s" % name)
        for addr in root.iterfind("devices/*/source/address"):
            if addr.get("type", "pci") != "pci":
                continue
            try:
                key = tuple(int(addr.get(part, "0"), 0) for part in ("domain", "bus", "slot", "function"))
            except ValueError:
                continue
            if key in wanted:
                users.setdefault(wanted[key], []).append(name)
        for source in root.iterfind("devices/interface/source"):
            dev = source.get("dev")
            if dev in by_netdev:
                users.setdefault(by_netdev[dev], []).append(name)
    return users


# -- vfio-pci binding --------------------------------------------------------------------------
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
        if member == address or not pci_class.startswith(_BRIDGE_CLASSES):
            members.append(member)
    return members


def ensure_vfio_loaded(host):
    if not host.fs.isdir("%s/%s" % (DRIVERS, VFIO)):
        host.runner.run(["modprobe", VFIO], what="modprobe vfio-pci")
        if not host.wait_for(lambda: host.fs.isdir("%s/%s" % (DRIVERS, VFIO)), 10):
            raise HostError("modprobe vfio-pci succeeded but %s/%s did not appear" % (DRIVERS, VFIO))


def bind_vfio(host, address, timeout=10):
    """driver_override=vfio-pci, unbind from the current driver, probe; wait until vfio-pci holds it."""
    fs = host.fs
    base = "%s/%s" % (PCI_DEVICES, address)
    ensure_vfio_loaded(host)
    fs.write(base + "/driver_override", VFIO)
    current = fs.readlink_name(base + "/driver")
    if current and current != VFIO:
        fs.write("%s/%s/unbind" % (DRIVERS, current), address)
    if fs.readlink_name(base + "/driver") != VFIO:
        fs.write("/sys/bus/pci/drivers_probe", address)
    if not host.wait_for(lambda: fs.readlink_name(base + "/driver") == VFIO, timeout):
        raise HostError("%s did not bind to vfio-pci (driver is now %s); see dmesg" % (address, fs.readlink_name(base + "/driver")))


def unbind_vfio(host, address, original=None, timeout=10):
    """Clear driver_override, leave vfio-pci, probe (the kernel picks the default driver) or bind ``original``."""
    fs = host.fs
    base = "%s/%s" % (PCI_DEVICES, address)
    fs.write(base + "/driver_override", "\n")
    if fs.readlink_name(base + "/driver") == VFIO:
        fs.write("%s/%s/unbind" % (DRIVERS, VFIO), address)
    fs.write("/sys/bus/pci/drivers_probe", address)
    if original and fs.isdir("%s/%s" % (DRIVERS, original)):
        if not host.wait_for(lambda: fs.readlink_name(base + "/driver") is not None, timeout) and fs.readlink_name(base + "/driver") != original:
            fs.write("%s/%s/bind" % (DRIVERS, original), address)
        if not host.wait_for(lambda: fs.readlink_name(base + "/driver") == original, timeout):
            raise HostError("%s did not return to %s (driver is now %s); see dmesg" % (address, original, fs.readlink_name(base + "/driver")))


def _load_originals(fs):
    try:
        return json.loads(fs.read(ORIGINAL_DRIVERS) or "{}")
    except ValueError:
        return {}


def _on_vfio(dev):
    return dev["driver"] == VFIO and dev["driver_override"] in (None, VFIO)


def _devices_for_ids(host, ids):
    found = []
    for address in host.fs.listdir(PCI_DEVICES):
        dev = host.device(address)
        if dev["ids"] in ids:
            found.append(address)
    return found


def _persistent_files(fs, ids, softdeps, state):
    """Wanted content of the modprobe.d and modules-load.d files (``None`` = absent)."""
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


def _apply_files(host, wanted):
    """Write/remove files to match ``wanted``; returns ``(changed paths, before, after)``."""
    changed, before, after = [], {}, {}
    for path, content in sorted(wanted.items()):
        raw = None
        if host.fs.exists(path):
            with open(host.fs.path(path), encoding="utf-8") as handle:
                raw = handle.read()
        before[path], after[path] = raw, content
        if raw == content:
            continue
        changed.append(path)
        if host.check_mode:
            continue
        if content is None:
            host.fs.remove(path)
        else:
            host.fs.write_atomic(path, content)
    return changed, before, after


def update_initramfs(host):
    for argv in (["update-initramfs", "-u"], ["dracut", "-f"]):
        if host.runner.which(argv[0]):
            host.runner.run(argv, what=" ".join(argv))
            return argv[0]
    host.warnings.append("neither update-initramfs nor dracut was found: the initramfs was not rebuilt")
    return None


def vfio_pci(host, *, devices=(), ids=(), state="bound", group_policy="fail", force=False, persistent=False, initramfs=True):
    """Bind (``state=bound``) or release (``unbound``) PCI devices; returns the module result."""
    addresses = [normalize_address(a) for a in devices]
    id_list = sorted({normalize_ids(i) for i in ids})
    for address in addresses:
        if not host.exists(address):
            raise ValidationError("no PCI device %s on this host (see lspci -D)" % address)
    for address in _devices_for_ids(host, id_list):
        if address not in addresses:
            addresses.append(address)
    if state == "bound" and addresses and not iommu_enabled(host.fs):
        raise ValidationError("cannot bind %s to vfio-pci: the IOMMU is off (no /sys/kernel/iommu_groups); %s"
                              % (", ".join(addresses), iommu_hint(host.fs)))
    before_devs = {a: host.device(a) for a in addresses}
    groups = {}
    if state == "bound":
        queue = list(addresses)
        for address in queue:
            members = group_endpoints(host, address)
            groups[address] = members
            others = [m for m in members if m not in queue and not _on_vfio(host.device(m))]
            if others and group_policy == "fail":
                listing = ", ".join("%s (%s)" % (m, host.device(m)["driver"] or "no driver") for m in members)
                raise ValidationError("IOMMU group %s of %s has other endpoints not bound to vfio-pci: %s. A guest can only use the device "
                                      "when the whole group is on vfio-pci: add them to devices, or set group_policy=bind_all"
                                      % (before_devs[address]["iommu_group"], address, listing), group_members=members)
            for member in others:
                queue.append(member)
                before_devs[member] = host.device(member)
        addresses = queue
    else:
        for address in addresses:
            groups[address] = group_endpoints(host, address)

    originals = _load_originals(host.fs)
    to_change = [a for a in addresses if (not _on_vfio(before_devs[a])) == (state == "bound")
                 or (state == "unbound" and before_devs[a]["driver_override"] == VFIO)]
    if state == "bound" and not force:
        routes = host.net.default_route_ifnames() if host.net and any(pci_netdevs(host.fs, a) for a in to_change) else set()
        for address in to_change:
            reasons = host_users(host, address, routes)
            if reasons:
                raise ValidationError("refusing to take %s (driver %s) away from the host: %s. Set force=true to unbind it anyway"
                                      % (address, before_devs[address]["driver"], "; ".join(reasons)), address=address, in_use=reasons)

    after_driver = {}
    for address in addresses:
        dev = before_devs[address]
        if address not in to_change:
            after_driver[address] = dev["driver"]
        elif state == "bound":
            after_driver[address] = VFIO
        else:
            after_driver[address] = originals.get(address) or "(kernel default)"

    new_originals = dict(originals)
    if not host.check_mode:
        for address in to_change:
            if state == "bound":
                if before_devs[address]["driver"] and before_devs[address]["driver"] != VFIO:
                    new_originals[address] = before_devs[address]["driver"]
                bind_vfio(host, address)
            else:
                unbind_vfio(host, address, originals.get(address))
                new_originals.pop(address, None)
            after_driver[address] = host.fs.readlink_name("%s/%s/driver" % (PCI_DEVICES, address))
        if new_originals != originals:
            host.fs.write_atomic(ORIGINAL_DRIVERS, json.dumps(new_originals, indent=2, sort_keys=True) + "\n", mode=0o644)

    file_changes, files_before, files_after = [], {}, {}
    initramfs_tool = None
    if persistent:
        persist_ids = set(id_list) | {before_devs[a]["ids"] for a in addresses if before_devs[a]["ids"]}
        softdeps = {new_originals.get(a) or before_devs[a]["driver"] for a in addresses} - {None, VFIO}
        file_changes, files_before, files_after = _apply_files(host, _persistent_files(host.fs, persist_ids, softdeps, state))
        if file_changes and initramfs and not host.check_mode:
            initramfs_tool = update_initramfs(host)

    result_devices = []
    for address in addresses:
        dev = before_devs[address]
        result_devices.append({
            "address": address, "ids": dev["ids"], "iommu_group": dev["iommu_group"],
            "driver_before": dev["driver"], "driver_after": after_driver[address], "group_members": groups.get(address, [address]),
        })
    result = {
        "changed": bool(to_change or file_changes),
        "devices": result_devices,
        "files_changed": file_changes,
        "reboot_required": bool(file_changes),
        "initramfs_updated": initramfs_tool,
        "diff": {
            "before": {"drivers": {a: before_devs[a]["driver"] for a in addresses}, "files": files_before},
            "after": {"drivers": dict(after_driver), "files": files_after},
        },
    }
    if host.warnings:
        result["warnings"] = list(host.warnings)
    return result


# -- SR-IOV ------------------------------------------------------------------------------------
VF_FIELDS = ("mac", "vlan", "qos", "spoofchk", "trust", "link_state", "max_tx_rate")


def resolve_pf(host, device):
    """PCI address of ``device`` (an address or a netdev name); ValidationError when unknown."""
    if looks_like_address(device):
        address = normalize_address(device)
        if not host.exists(address):
            raise ValidationError("no PCI device %s on this host (see lspci -D)" % address)
        return address
    for address in host.fs.listdir(PCI_DEVICES):
        if device in pci_netdevs(host.fs, address):
            return address
    raise ValidationError("no PCI device or network interface named %r on this host" % device)


def vf_addresses(fs, pf):
    base = "%s/%s" % (PCI_DEVICES, pf)
    links = [(int(name[6:]), fs.readlink_name("%s/%s" % (base, name))) for name in fs.listdir(base) if re.match(r"virtfn\d+$", name)]
    return [address for _index, address in sorted(links)]


def predicted_vf_address(fs, pf, index):
    """The address VF ``index`` gets (PF routing ID + First VF Offset + index * VF Stride), or None."""
    base = "%s/%s" % (PCI_DEVICES, pf)
    offset, stride = fs.read_int(base + "/sriov_offset"), fs.read_int(base + "/sriov_stride")
    if offset is None or stride is None:
        return None
    domain, bus, rest = pf.split(":")
    slot, function = rest.split(".")
    rid = (int(bus, 16) << 8) + (int(slot, 16) << 3) + int(function) + offset + index * stride
    return "%s:%02x:%02x.%d" % (domain, rid >> 8, (rid >> 3) & 0x1F, rid & 7)


def _vf_ready(fs, pf, count):
    addresses = vf_addresses(fs, pf)
    if len(addresses) != count:
        return False
    autoprobe = fs.read("%s/%s/sriov_drivers_autoprobe" % (PCI_DEVICES, pf))
    if autoprobe == "0":
        return True
    for address in addresses:
        driver = fs.readlink_name("%s/%s/driver" % (PCI_DEVICES, address))
        if driver is None or (driver != VFIO and not fs.listdir("%s/%s/net" % (PCI_DEVICES, address))):
            return False
    return True


def _wanted_vf(spec):
    wanted = {key: spec[key] for key in VF_FIELDS if spec.get(key) is not None}
    if "mac" in wanted:
        wanted["mac"] = wanted["mac"].lower()
    if "qos" in wanted and "vlan" not in wanted:
        raise ValidationError("vfs[%d]: qos needs vlan" % spec["index"])
    return wanted


def _udev_rule(pf, num_vfs, wanted_vfs, vf_driver, fs):
    lines = [MANAGED % "sriov"]
    prefix = 'ACTION=="add", SUBSYSTEM=="net", KERNELS=="%s"' % pf
    if vf_driver == VFIO:
        lines.append('%s, ATTR{device/sriov_drivers_autoprobe}="0"\n' % prefix)
    lines.append('%s, ATTR{device/sriov_numvfs}="%d"\n' % (prefix, num_vfs))
    for index, wanted in sorted(wanted_vfs.items()):
        args = []
        for key in ("mac", "vlan", "qos", "spoofchk", "trust", "link_state", "max_tx_rate"):
            if key in wanted:
                value = wanted[key]
                if isinstance(value, bool):
                    value = "on" if value else "off"
                args += [key, str(value)]
        if args:
            lines.append('%s, RUN+="/usr/sbin/ip link set dev $name vf %d %s"\n' % (prefix, index, " ".join(args)))
    if vf_driver == VFIO:
        for index in range(num_vfs):
            vf = predicted_vf_address(fs, pf, index)
            if vf:
                lines.append('ACTION=="add", SUBSYSTEM=="pci", KERNEL=="%s", ATTR{driver_override}="vfio-pci", RUN+="/usr/sbin/modprobe vfio-pci", '
                             'RUN+="/bin/sh -c \'echo $kernel > /sys/bus/pci/drivers_probe\'"\n' % vf)
    return "".join(lines)


def _vf_report(host, pf_netdev, index, address, kernel):
    dev = host.device(address) if address else {}
    info = kernel.get(index, {})
    return {
        "index": index, "address": address, "netdev": (dev.get("netdevs") or [None])[0], "driver": dev.get("driver"),
        "mac": info.get("mac"), "vlan": info.get("vlan"), "qos": info.get("qos"), "trust": info.get("trust"), "spoofchk": info.get("spoofchk"),
        "link_state": info.get("link_state"), "max_tx_rate": info.get("max_tx_rate"),
    }


def sriov(host, device, *, num_vfs=None, vfs=(), vf_driver=None, persistent=False, force=False, timeout=60):
    """Converge the PF's VF count, per-VF settings, VF driver and boot-time rule; returns the module result."""
    fs = host.fs
    pf = resolve_pf(host, device)
    base = "%s/%s" % (PCI_DEVICES, pf)
    pf_dev = host.device(pf)
    total = fs.read_int(base + "/sriov_totalvfs")
    if total is None:
        raise ValidationError("%s (%s, driver %s) is not SR-IOV capable: it has no sriov_totalvfs (is the PF driver loaded?)"
                              % (pf, pf_dev["ids"], pf_dev["driver"] or "none"))
    current = fs.read_int(base + "/sriov_numvfs", 0)
    wanted_count = current if num_vfs is None else num_vfs
    if wanted_count < 0 or wanted_count > total:
        raise ValidationError("num_vfs=%d is more than %s supports (sriov_totalvfs=%d)" % (wanted_count, pf, total))
    wanted_vfs = {}
    for spec in vfs:
        if spec["index"] < 0 or spec["index"] >= wanted_count:
            raise ValidationError("vfs has index %d but %s will have %d VFs (indexes 0-%d)" % (spec["index"], pf, wanted_count, wanted_count - 1))
        if spec["index"] in wanted_vfs:
            raise ValidationError("vfs lists index %d twice" % spec["index"])
        wanted_vfs[spec["index"]] = _wanted_vf(spec)
    pf_netdev = (pf_dev["netdevs"] or [None])[0]
    if any(wanted_vfs.values()) and pf_netdev is None:
        raise ValidationError("per-VF settings are applied through the PF's network interface, but %s has none (driver %s)" % (pf, pf_dev["driver"]))

    before_vfs = vf_addresses(fs, pf)
    changes = []
    count_change = wanted_count != current
    if count_change and current > 0 and not force:
        netdevs = [(nd, a) for a in before_vfs for nd in pci_netdevs(fs, a)]
        users = guest_users(host, before_vfs, netdevs)
        reasons = ["VF %s is attached to running guest %s" % (a, ", ".join(names)) for a, names in sorted(users.items())]
        routes = host.net.default_route_ifnames() if host.net and netdevs else set()
        for address in before_vfs:
            reasons += ["VF %s: %s" % (address, r) for r in host_users(host, address, routes)]
        if reasons:
            raise ValidationError("changing %s from %d to %d VFs goes through 0 and destroys the existing VFs, but %s. "
                                  "Detach them first or set force=true" % (pf, current, wanted_count, "; ".join(reasons)), in_use=reasons)
    if count_change:
        changes.append("num_vfs")
        if not host.check_mode:
            if current > 0:
                fs.write(base + "/sriov_numvfs", 0)
            if wanted_count > 0:
                fs.write(base + "/sriov_numvfs", wanted_count)
                if not host.wait_for(lambda: _vf_ready(fs, pf, wanted_count), timeout):
                    raise HostError("wrote %d to %s/sriov_numvfs but after %ss the VFs are not all there with a driver: %s"
                                    % (wanted_count, pf, timeout, vf_addresses(fs, pf)))
                if host.runner and host.runner.which("udevadm"):  # let udev rename the VFs' interfaces before reporting them
                    host.runner.run(["udevadm", "settle", "--timeout=%d" % timeout], check=False)

    exists_now = not (host.check_mode and count_change)
    kernel = host.net.vfs(pf_netdev) if pf_netdev and host.net and exists_now and (wanted_vfs or wanted_count) else {}
    before_settings, after_settings = {}, {}
    for index, wanted in sorted(wanted_vfs.items()):
        have = kernel.get(index, {})
        diff = {key: value for key, value in wanted.items() if have.get(key) != value}
        if "qos" in diff or "vlan" in diff:
            diff.setdefault("vlan", wanted.get("vlan", have.get("vlan")))
            diff.setdefault("qos", wanted.get("qos", 0))
        before_settings[index] = {key: have.get(key) for key in wanted}
        after_settings[index] = dict(wanted)
        if diff:
            changes.append("vfs[%d]" % index)
            if not host.check_mode:
                host.net.set_vf(pf_netdev, index, diff)
    if not host.check_mode and any(c.startswith("vfs[") for c in changes):
        kernel = host.net.vfs(pf_netdev)
        for index, wanted in wanted_vfs.items():
            wrong = {key: kernel.get(index, {}).get(key) for key, value in wanted.items() if kernel.get(index, {}).get(key) != value}
            if wrong:
                raise HostError("VF %d of %s: the driver accepted %s but reports %s" % (index, pf_netdev, {k: wanted[k] for k in wrong}, wrong))

    vf_list = vf_addresses(fs, pf) if exists_now else [predicted_vf_address(fs, pf, i) for i in range(wanted_count)]
    drivers_before = {a: fs.readlink_name("%s/%s/driver" % (PCI_DEVICES, a)) for a in before_vfs}
    if vf_driver is not None:
        for address in vf_list:
            driver = fs.readlink_name("%s/%s/driver" % (PCI_DEVICES, address)) if address and exists_now else None
            on_vfio = driver == VFIO
            if (vf_driver == VFIO) != on_vfio or not exists_now:
                if not exists_now and vf_driver != VFIO:
                    continue
                changes.append("vf_driver %s" % address)
                if host.check_mode:
                    continue
                if vf_driver == VFIO:
                    bind_vfio(host, address)
                else:
                    unbind_vfio(host, address)

    rule_path = UDEV_RULE % pf
    rule = _udev_rule(pf, wanted_count, wanted_vfs, vf_driver, fs) if persistent else None
    rule_changes, rule_before, rule_after = _apply_files(host, {rule_path: rule})
    changes += rule_changes

    final = vf_addresses(fs, pf) if exists_now else vf_list
    kernel = host.net.vfs(pf_netdev) if pf_netdev and host.net and exists_now and final and not host.check_mode else kernel
    result = {
        "changed": bool(changes),
        "changes": changes,
        "pf": {"address": pf, "netdev": pf_netdev, "driver": pf_dev["driver"], "totalvfs": total,
               "numvfs": fs.read_int(base + "/sriov_numvfs", 0) if not host.check_mode else wanted_count},
        "vfs": [_vf_report(host, pf_netdev, i, a, kernel) for i, a in enumerate(final)],
        "rule": rule_path if persistent else None,
        "diff": {
            "before": {"num_vfs": current, "vfs": before_settings, "vf_drivers": drivers_before, "rule": rule_before[rule_path]},
            "after": {"num_vfs": wanted_count, "vfs": after_settings,
                      "vf_drivers": {a: (vf_driver if vf_driver == VFIO else "(kernel default)") if vf_driver else drivers_before.get(a) for a in final if a},
                      "rule": rule_after[rule_path]},
        },
    }
    if host.warnings:
        result["warnings"] = list(host.warnings)
    return result


# -- module runners ----------------------------------------------------------------------------
def _host_for(module, with_guests=False):
    def client_factory():
        if libvirt is None:
            raise LibvirtError("libvirt-python is not installed")
        return LibvirtClient.open(module.params["uri"], read_only=True)

    return PciHost(hostfs_for(module, module.params.get("root")), runner=CommandRunner(module), net=NetlinkNet(),
                   guests=libvirt_guests(client_factory) if with_guests else None, check_mode=module.check_mode)


def _finish(module, result):
    diff = result.pop("diff")
    if module._diff:  # pylint: disable=protected-access
        result["diff"] = diff
    return result


def run_vfio_pci(module):
    host = _host_for(module)
    try:
        p = module.params
        result = vfio_pci(host, devices=p["devices"] or (), ids=p["ids"] or (), state=p["state"], group_policy=p["group_policy"],
                          force=p["force"], persistent=p["persistent"], initramfs=p["update_initramfs"])
    finally:
        host.net.close()
    return _finish(module, result)


def run_sriov(module):
    host = _host_for(module, with_guests=True)
    try:
        p = module.params
        result = sriov(host, p["device"], num_vfs=p["num_vfs"], vfs=p["vfs"] or (), vf_driver=p["vf_driver"], persistent=p["persistent"],
                       force=p["force"], timeout=p["timeout"])
    finally:
        host.net.close()
    return _finish(module, result)
