# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The shared PCI reader: devices in sysfs, who uses them, and the vfio-pci (re)binding both
``vfio_pci`` and ``sriov`` need.

Everything goes through a :class:`PciHost` built from the run's backends: the host filesystem
(sysfs, /proc, /etc through HostFS), the command runner (modprobe), netlink (``None`` under a fake
root) and a source of running guests. Unit tests pass a temporary tree that behaves like sysfs and
in-memory netlink/guest stand-ins.
"""

from __future__ import annotations

import os
import re
import time

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._host_facts import mounts, read_raw
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import VIR_CONNECT_LIST_DOMAINS_ACTIVE, libvirt, translated
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml

PCI_DEVICES = "/sys/bus/pci/devices"
DRIVERS = "/sys/bus/pci/drivers"
VFIO = "vfio-pci"
MANAGED = "# Managed by virtops.kvm.%s; changes here are overwritten.\n"

_ADDRESS_RE = re.compile(r"^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$", re.IGNORECASE)
_IDS_RE = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{4})$", re.IGNORECASE)
_BRIDGE_CLASSES = ("0x0604", "0x0600")  # PCI-to-PCI bridges and host bridges are not endpoints


# -- input -------------------------------------------------------------------------------------
def looks_like_address(text):
    return ":" in text


def normalize_address(text):
    """``03:00.0`` or ``0000:03:00.0`` -> ``0000:03:00.0``; anything else is a ValidationError."""
    match = _ADDRESS_RE.match(str(text).strip())
    if not match:
        raise ValidationError("malformed PCI address %r: expected domain:bus:slot.function in hex, such as 0000:03:00.0" % (text,))
    domain, bus, slot, function = match.groups()
    return ("%s:%s:%s.%s" % (domain or "0000", bus, slot, function)).lower()


def normalize_ids(text):
    """``8086:10CA`` -> ``8086:10ca``; anything but four hex digits, colon, four hex digits is a ValidationError."""
    match = _IDS_RE.match(str(text).strip())
    if not match:
        raise ValidationError("ids entry %r is not in vendor:device form (four hex digits each, such as 8086:10ca; see lspci -nn)" % (text,))
    return ("%s:%s" % match.groups()).lower()


# -- reading sysfs -----------------------------------------------------------------------------
def pci_netdevs(fs, address):
    """Network interfaces of a PCI device: ``net/*``, and ``virtioN/net/*`` for virtio NICs."""
    base = "%s/%s" % (PCI_DEVICES, address)
    names = fs.listdir(base + "/net")
    for entry in fs.listdir(base):
        if re.match(r"virtio\d+$", entry):
            names += fs.listdir("%s/%s/net" % (base, entry))
    return names


def int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _hex_id(value):
    return value[2:] if value and value.startswith("0x") else value


def pci_device(fs, address):
    base = "%s/%s" % (PCI_DEVICES, address)
    return {
        "address": address,
        "vendor_id": _hex_id(fs.read(base + "/vendor")),
        "device_id": _hex_id(fs.read(base + "/device")),
        "class": fs.read(base + "/class"),
        "driver": fs.readlink_name(base + "/driver"),
        "iommu_group": int_or_none(fs.readlink_name(base + "/iommu_group")),
        "netdevs": pci_netdevs(fs, address),
    }


def vf_addresses(fs, pf):
    """Addresses of the VFs of ``pf`` in VF index order (from its ``virtfnN`` links)."""
    base = "%s/%s" % (PCI_DEVICES, pf)
    links = [(int(name[6:]), fs.readlink_name("%s/%s" % (base, name))) for name in fs.listdir(base) if re.match(r"virtfn\d+$", name)]
    return [address for _index, address in sorted(links)]


# -- backends ----------------------------------------------------------------------------------
class PciHost:
    """The backends the PCI logic works on. ``net`` (netlink) and ``guests`` may be ``None``.

    ``confined`` (a fake root) means no command with a host effect runs: modprobe and the like are
    refused or skipped with a warning by the callers.
    """

    def __init__(self, fs, *, runner=None, net=None, guests=None, sleep=time.sleep, clock=time.monotonic, check_mode=False, confined=False):
        self.fs = fs
        self.runner = runner
        self._net = net  # a netlink accessor, or a callable giving one on first use
        self.guests = guests
        self.sleep = sleep
        self.clock = clock
        self.check_mode = check_mode
        self.confined = confined
        self.warnings = []

    @classmethod
    def from_backends(cls, backends, check_mode, with_guests=False, sleep=time.sleep):
        guests = libvirt_guests(lambda: backends.libvirt) if with_guests else None
        return cls(
            backends.hostfs,
            runner=backends.commands,
            net=lambda: backends.netlink,
            guests=guests,
            sleep=sleep,
            check_mode=check_mode,
            confined=backends.confined,
        )

    @property
    def net(self):
        """The netlink accessor (``None`` under a fake root), opened on first use."""
        if callable(self._net):
            self._net = self._net()
        return self._net

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


def libvirt_guests(client):
    """A ``guests`` backend: ``[(name, xml)]`` of running domains, or ``None`` when libvirt is unreachable.

    ``client()`` gives the run's LibvirtClient (opened on first use).
    """

    def guests():
        if libvirt is None:
            return None
        try:
            with translated("cannot list the running guests"):
                conn = client().conn
                return [(dom.name(), dom.XMLDesc(0)) for dom in conn.listAllDomains(VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
        except LibvirtError:
            return None

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
        addresses = host.net.addresses_of(netdev) if host.net else []
        if _iface_flags_up(fs, netdev) and addresses:
            reasons.append("network interface %s is up with address %s" % (netdev, ", ".join(addresses)))
        if routes is None and host.net:
            routes = host.net.default_route_ifnames()
        if routes and netdev in routes:
            reasons.append("network interface %s carries the default route" % netdev)
    mounted = {m["source"]: m["path"] for m in mounts(fs)}
    for block in fs.listdir("/sys/block"):
        real = os.path.realpath(fs.path("/sys/block/%s" % block))
        if "/%s/" % address not in real:
            continue
        names = [block] + [entry for entry in fs.listdir("/sys/block/%s" % block) if entry.startswith(block)]
        for name in names:
            if "/dev/%s" % name in mounted:
                reasons.append("disk /dev/%s is mounted on %s" % (name, mounted["/dev/%s" % name]))
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
def ensure_vfio_loaded(host):
    if host.fs.isdir("%s/%s" % (DRIVERS, VFIO)):
        return
    if host.confined:
        raise HostError(
            "vfio-pci is not loaded below %s (no %s/%s), and with a root other than / the module does not run modprobe "
            "on this machine: load it in that system, or run with root=/" % (host.fs.root, DRIVERS, VFIO)
        )
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


# -- configuration files -----------------------------------------------------------------------
def file_plan(fs, wanted):
    """``(changed paths, before, after)`` for ``wanted`` (``{path: content or None}``) against the files now."""
    changed, before, after = [], {}, {}
    for path, content in sorted(wanted.items()):
        before[path], after[path] = read_raw(fs, path), content
        if before[path] != content:
            changed.append(path)
    return changed, before, after
