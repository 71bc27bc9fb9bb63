# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``domain_info`` module's logic: read-only facts about libvirt guests."""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils._domain import STATE_NAMES, state_of
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import connect, translated
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml, to_string

IP_SOURCES = {"lease": 0, "agent": 1, "arp": 2}  # VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_*
STATE_CHOICES = sorted(set(STATE_NAMES.values()))


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
        disks.append(dict(
            target=target.get("dev") if target is not None else None,
            bus=target.get("bus") if target is not None else None,
            source=src,
            format=driver.get("type") if driver is not None else None,
            type=disk.get("type"),
            device=disk.get("device", "disk"),
            readonly=disk.find("readonly") is not None,
        ))
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
        interfaces.append(dict(
            mac=mac.get("address").lower() if mac is not None and mac.get("address") else None,
            type=iface.get("type"),
            source=src,
            model=model.get("type") if model is not None else None,
            target=target.get("dev") if target is not None else None,
        ))
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
                entry = dict(address=addr.get("addr"), prefix=addr.get("prefix"), family="ipv6" if addr.get("type") == 1 else "ipv4",
                             source=source, interface=ifname)
                if entry not in found.setdefault(mac, []):
                    found[mac].append(entry)
    return found, errors


def describe_guest(client, dom, ip_sources=(), include_xml=False):
    """Facts about one guest (see the module's RETURN)."""
    name = dom.name()
    state, reason = state_of(dom)
    with translated("cannot read guest %s" % name):
        xml_text = dom.XMLDesc(0)  # never secrets (graphics passwords): this is a read-only report
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
        guest["xml"] = to_string(xml)
    return guest


def gather_domains(client, name=None, states=None, ip_sources=(), include_xml=False):
    """Facts about guest ``name`` (an unknown name is an error) or every guest, filtered by ``states``."""
    if name:
        dom = client.lookup_domain(name)
        if dom is None:
            raise ValidationError("guest %s does not exist" % name)
        doms = [dom]
    else:
        with translated("cannot list guests"):
            doms = client.conn.listAllDomains(0)
    guests = []
    for dom in sorted(doms, key=lambda d: d.name()):
        if states and state_of(dom)[0] not in states:
            continue
        guests.append(describe_guest(client, dom, ip_sources, include_xml))
    return guests


def run_domain_info(module):
    """The ``domain_info`` module's runner."""
    params = module.params
    with connect(module, read_only=not params["ip_sources"]) as client:
        guests = gather_domains(client, params["name"], params["state"], params["ip_sources"], params["include_xml"])
    return dict(changed=False, domains=guests)
