# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The ``domain_info`` module's logic: read-only facts about libvirt guests.

:func:`ensure_domain_info` is the entry point; it only reads, over the read-only client the
module asks :func:`run_module` for (a read-write one only when the guest agent is asked for
addresses, which libvirt allows on no read-only connection).
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils._domain_snapshot import list_snapshots
from ansible_collections.virtops.kvm.plugins.module_utils._domain_state import mask_in_place, state_of
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import (
    VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
    VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
    VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
    translated,
)
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml, to_string

IP_SOURCES = {
    "lease": VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
    "agent": VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
    "arp": VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
}


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def disks_of(xml):
    disks = []
    for disk in xml.findall("devices/disk"):
        source = disk.find("source")
        src = None
        if source is not None:
            if source.get("pool") and source.get("volume"):
                src = "%s/%s" % (source.get("pool"), source.get("volume"))
            else:
                src = source.get("file") or source.get("dev") or source.get("dir") or source.get("name")
        target = disk.find("target")
        driver = disk.find("driver")
        disks.append(
            dict(
                target=target.get("dev") if target is not None else None,
                bus=target.get("bus") if target is not None else None,
                source=src,
                format=driver.get("type") if driver is not None else None,
                type=disk.get("type"),
                device=disk.get("device", "disk"),
                readonly=disk.find("readonly") is not None,
            )
        )
    return disks


def interfaces_of(xml):
    interfaces = []
    for iface in xml.findall("devices/interface"):
        source = iface.find("source")
        src = None
        if source is not None:
            src = source.get("network") or source.get("bridge") or source.get("dev") or source.get("name") or source.get("path")
        mac = iface.find("mac")
        model = iface.find("model")
        target = iface.find("target")
        interfaces.append(
            dict(
                mac=mac.get("address").lower() if mac is not None and mac.get("address") else None,
                type=iface.get("type"),
                source=src,
                model=model.get("type") if model is not None else None,
                target=target.get("dev") if target is not None else None,
            )
        )
    return interfaces


def firmware_of(xml):
    os_el = xml.find("os")
    if os_el is None:
        return None
    if os_el.get("firmware"):
        return os_el.get("firmware")
    loader = os_el.find("loader")
    if loader is not None and (loader.get("type") == "pflash" or "OVMF" in (loader.text or "") or "edk2" in (loader.text or "")):
        return "efi"
    return "bios"


def addresses_of(client, dom, sources):
    """``({mac: [address...]}, {source: error})`` from the requested sources (running guests only)."""
    found = {}
    errors = {}
    for source in sources:
        try:
            with translated("cannot read %s addresses of %s" % (source, dom.name())):
                result = dom.interfaceAddresses(IP_SOURCES[source], 0) or {}
        except LibvirtError as exc:
            errors[source] = exc.msg
            continue
        for ifname, data in result.items():
            mac = (data.get("hwaddr") or "").lower() or None
            for addr in data.get("addrs") or []:
                entry = dict(
                    address=addr.get("addr"), prefix=addr.get("prefix"), family="ipv6" if addr.get("type") == 1 else "ipv4", source=source, interface=ifname
                )
                if entry not in found.setdefault(mac, []):
                    found[mac].append(entry)
    return found, errors


def describe_guest(client, dom, ip_sources=(), include_xml=False):
    """Facts about one guest (see the module's RETURN)."""
    name = dom.name()
    state, reason = state_of(dom)
    with translated("cannot read guest %s" % name):
        xml_text = dom.XMLDesc(0)  # without VIR_DOMAIN_XML_SECURE: no graphics passwords, no disk cookies
        persistent = bool(dom.isPersistent())
        autostart = bool(dom.autostart()) if persistent else False
        _state, max_kib, cur_kib, vcpus_now, _cpu_time = dom.info()
    xml = parse_xml(xml_text, "libvirt's XML of %s" % name)
    vcpu = xml.find("vcpu")
    vcpu_max = _int(vcpu.text) if vcpu is not None else vcpus_now
    vcpu_current = _int(vcpu.get("current")) if vcpu is not None and vcpu.get("current") else vcpu_max
    if dom.isActive():
        vcpu_current = vcpus_now
    os_type = xml.find("os/type")
    cpu = xml.find("cpu")
    guest = dict(
        name=name,
        uuid=dom.UUIDString(),
        state=state,
        state_reason=reason,
        persistent=persistent,
        autostart=autostart,
        vcpus=dict(current=vcpu_current, maximum=vcpu_max),
        memory=dict(current_kib=cur_kib, maximum_kib=max_kib),
        machine=os_type.get("machine") if os_type is not None else None,
        arch=os_type.get("arch") if os_type is not None else None,
        firmware=firmware_of(xml),
        cpu=dict(mode=cpu.get("mode") if cpu is not None else None, model=cpu.findtext("model") if cpu is not None else None),
        disks=disks_of(xml),
        interfaces=interfaces_of(xml),
    )
    if ip_sources:
        addresses, errors = ({}, {}) if not dom.isActive() else addresses_of(client, dom, ip_sources)
        for iface in guest["interfaces"]:
            iface["addresses"] = addresses.get(iface["mac"], [])
        guest["ip_errors"] = errors
    if include_xml:
        # masked again: a last-applied intent an older domain module stored in <metadata> may hold a password
        guest["xml"] = to_string(mask_in_place(xml))
    return guest


def gather_domains(client, name=None, states=None, ip_sources=(), include_xml=False, *, include_snapshots=False, names=None):
    """Facts about guest ``name`` (an unknown name is an error), the guests of ``names`` that exist, or every guest, filtered by ``states``."""
    if name:
        dom = client.lookup_domain(name)
        if dom is None:
            raise ValidationError("guest %s does not exist" % name)
        doms = [dom]
    elif names is not None:
        doms = [dom for dom in (client.lookup_domain(one) for one in dict.fromkeys(names)) if dom is not None]
    else:
        with translated("cannot list guests"):
            doms = client.conn.listAllDomains(0)
    guests = []
    for dom in sorted(doms, key=lambda d: d.name()):
        if states and state_of(dom)[0] not in states:
            continue
        guest = describe_guest(client, dom, ip_sources, include_xml)
        if include_snapshots:
            guest["snapshots"] = list_snapshots(dom)
        guests.append(guest)
    return guests


def needs_read_write(params):
    """Whether the run needs a read-write connection: only the guest agent's addresses do."""
    return "agent" in (params.get("ip_sources") or [])


def ensure_domain_info(backends, params, check_mode):
    """The ``domain_info`` module: facts, never a change (``check_mode`` changes nothing either)."""
    del check_mode  # nothing to skip: this module only reads
    guests = gather_domains(
        backends.libvirt, params.get("name"), params.get("state"), params.get("ip_sources") or [], params.get("include_xml"),
        include_snapshots=params.get("include_snapshots"),
    )  # fmt: skip
    return dict(changed=False, domains=guests, warnings=[])
