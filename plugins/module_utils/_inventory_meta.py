# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What a guest records for the inventory, and how an inventory finds the address to reach it.

Shared by the ``virtops.kvm.libvirt`` inventory plugin (which reads) and the kvm_guest role's
helper (which writes). The record lives in the domain's ``<metadata>`` under :data:`NAMESPACE`::

    <inv:inventory xmlns:inv="https://virtops.dev/kvm/inventory/1">
      <inv:group name="kvm_guests"/>
      <inv:var name="ansible_user">"debian"</inv:var>
      <inv:port-forward host="2222" guest="22" address="127.0.0.1"/>
    </inv:inventory>

A variable's text is JSON; one that is not is reported and skipped, never guessed at. A
port-forward says that TCP port ``host`` on the hypervisor (bound to ``address``, all addresses when
it is missing) reaches port ``guest`` inside the guest.

The address an inventory uses comes from sources tried in the user's order (:data:`ADDRESS_SOURCES`):
a port forward (the metadata's, then the domain XML's ``<interface type='user'><portForward>``), or
what libvirt reports through ``interfaceAddresses`` from the DHCP lease, the guest agent or the
hypervisor's ARP table. An address that is loopback, link-local, multicast or unspecified is never
taken from those reports: from outside the guest it reaches the wrong machine or none.
"""

from __future__ import annotations

import ipaddress
import json
import keyword

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import (
    VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
    VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
    VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
    translated,
)
from ansible_collections.virtops.kvm.plugins.module_utils._xml import etree, parse_xml, to_string

NAMESPACE = "https://virtops.dev/kvm/inventory/1"
PREFIX = "inv"
ROOT = "inventory"

ADDRESS_SOURCES = ("port_forward", "lease", "agent", "arp")
# The guest agent is left out by default: libvirt refuses it on a read-only connection.
DEFAULT_ADDRESS_SOURCES = ("port_forward", "lease", "arp")
INTERFACE_ADDRESS_SOURCES = {
    "lease": VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
    "agent": VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
    "arp": VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
}
LOOPBACK_V4 = "127.0.0.1"
LOOPBACK_V6 = "::1"
_WILDCARDS = ("", "0.0.0.0", "::")


def _tag(element):
    """``(namespace, local name)`` of an element; comments and processing instructions give ``(None, None)``."""
    if not isinstance(element.tag, str):
        return None, None
    qname = etree.QName(element)
    return qname.namespace, qname.localname


def _port(value, what):
    try:
        port = int(str(value).strip())
    except (TypeError, ValueError):
        raise ValidationError("%s is %r, not a port number" % (what, value)) from None
    if not 1 <= port <= 65535:
        raise ValidationError("%s is %d, outside 1-65535" % (what, port))
    return port


def valid_variable_name(name):
    """Whether ``name`` can be an Ansible variable (a Python identifier that is not a keyword)."""
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def inventory_element(domain):
    """The ``inv:inventory`` element of a parsed domain XML (``<domain>``), or None."""
    metadata = domain.find("metadata")
    if metadata is None:
        return None
    return metadata.find("{%s}%s" % (NAMESPACE, ROOT))


def parse_inventory(element):
    """``{groups, vars, port_forwards, warnings}`` from an ``inv:inventory`` element (None: all empty).

    Children in the namespace are read; children without a namespace are read the same way (a
    fragment written without prefixes). A group without a name, a variable whose name cannot be a
    variable or whose text is not JSON, and a port-forward with bad ports are skipped with a warning.
    """
    result = dict(groups=[], vars={}, port_forwards=[], warnings=[])
    if element is None:
        return result
    warnings = result["warnings"]
    for child in element:
        namespace, name = _tag(child)
        if name is None or namespace not in (NAMESPACE, None):
            continue
        if name == "group":
            group = (child.get("name") or "").strip()
            if not group:
                warnings.append("an inventory group without a name was skipped")
            elif group not in result["groups"]:
                result["groups"].append(group)
        elif name == "var":
            var = child.get("name")
            if not valid_variable_name(var):
                warnings.append("inventory variable name %r is not a valid variable name: skipped" % var)
                continue
            try:
                result["vars"][var] = json.loads(child.text or "")
            except ValueError as exc:
                warnings.append('inventory variable %s is not valid JSON (%s): skipped; write strings quoted, like "debian"' % (var, exc))
        elif name == "port-forward":
            try:
                forward = dict(
                    host=_port(child.get("host"), "port-forward host"),
                    guest=_port(child.get("guest"), "port-forward guest"),
                    address=(child.get("address") or "").strip(),
                )
            except ValidationError as exc:
                warnings.append("inventory %s: skipped" % exc.msg)
                continue
            result["port_forwards"].append(forward)
    return result


def parse_inventory_text(text, what="inventory metadata"):
    """:func:`parse_inventory` of an ``inv:inventory`` element given as XML text."""
    root = parse_xml(text, what)
    namespace, name = _tag(root)
    if name != ROOT or namespace not in (NAMESPACE, None):
        raise ValidationError("%s is <%s>, not <%s:%s xmlns:%s=%r>" % (what, root.tag, PREFIX, ROOT, PREFIX, NAMESPACE))
    return parse_inventory(root)


def render_inventory(groups=(), variables=None, port_forwards=(), namespaced=True):
    """The ``inv:inventory`` element as text, for a domain's ``<metadata>``.

    ``namespaced=False`` gives the same element without the namespace, which is the form
    ``virDomainSetMetadata`` (``virsh metadata --key inv --uri NAMESPACE --set``) takes: libvirt
    puts the element and its children into the namespace itself and refuses a fragment that
    already declares the prefix. Variable values are written as JSON.
    """

    def qname(local):
        return "{%s}%s" % (NAMESPACE, local) if namespaced else local

    root = etree.Element(qname(ROOT), nsmap={PREFIX: NAMESPACE} if namespaced else None)
    for group in groups:
        if not group or not str(group).strip():
            raise ValidationError("an inventory group name is empty")
        etree.SubElement(root, qname("group"), name=str(group))
    for name in sorted(variables or {}):
        if not valid_variable_name(name):
            raise ValidationError("inventory variable name %r is not a valid variable name" % (name,))
        try:
            text = json.dumps(variables[name], sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValidationError("inventory variable %s cannot be written as JSON: %s" % (name, exc)) from exc
        etree.SubElement(root, qname("var"), name=name).text = text
    for forward in port_forwards:
        attrs = dict(host=str(_port(forward.get("host"), "port-forward host")), guest=str(_port(forward.get("guest"), "port-forward guest")))
        if forward.get("address"):
            attrs["address"] = str(forward["address"])
        etree.SubElement(root, qname("port-forward"), **attrs)
    return to_string(root, pretty=False)


def _ranges_to_guest(port_forward_el, guest_port):
    """Host ports of one ``<portForward>`` that reach ``guest_port`` (libvirt's <range start end to exclude>)."""
    ports = []
    excluded = set()
    for rng in port_forward_el.findall("range"):
        try:
            start = int(rng.get("start"))
            end = int(rng.get("end") or start)
            to = int(rng.get("to")) if rng.get("to") else None
        except (TypeError, ValueError):
            continue
        if rng.get("exclude") == "yes":
            excluded.update(range(start, end + 1))
            continue
        first_guest = start if to is None else to
        if first_guest <= guest_port <= first_guest + (end - start):
            ports.append(start + (guest_port - first_guest))
    return [port for port in ports if port not in excluded]


def domain_port_forwards(domain, guest_port=None):
    """TCP port forwards of a parsed domain's user-mode interfaces, as ``[{host, guest, address}]``.

    With ``guest_port``, only the host ports that reach that guest port (each range counted).
    """
    found = []
    for iface in domain.findall("devices/interface"):
        if iface.get("type") != "user":
            continue
        for forward in iface.findall("portForward"):
            if (forward.get("proto") or "tcp") != "tcp":
                continue
            address = (forward.get("address") or "").strip()
            if guest_port is None:
                for rng in forward.findall("range"):
                    if rng.get("exclude") == "yes" or not rng.get("start"):
                        continue
                    try:
                        start = int(rng.get("start"))
                        found.append(dict(host=start, guest=int(rng.get("to") or start), address=address))
                    except ValueError:
                        continue
            else:
                found.extend(dict(host=port, guest=guest_port, address=address) for port in _ranges_to_guest(forward, guest_port))
    return found


def forward_endpoint(forward, remote_host=None):
    """``(address, port)`` from which the controller reaches a port forward, or None if it cannot.

    ``remote_host`` is the hypervisor's name when the libvirt URI names a remote host (None for
    this machine). A forward bound to all addresses is reached at the hypervisor (or 127.0.0.1
    here); one bound to a loopback address only from the hypervisor itself, so a remote one is
    skipped.
    """
    address = (forward.get("address") or "").strip()
    if address in _WILDCARDS:
        if remote_host:
            return remote_host, forward["host"]
        return (LOOPBACK_V6 if address == "::" else LOOPBACK_V4), forward["host"]
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = address == "localhost"
    if loopback and remote_host:
        return None
    return address, forward["host"]


def usable_address(text):
    """Whether an address reported for a guest can reach it from outside (not loopback, link-local...)."""
    try:
        addr = ipaddress.ip_address(str(text).split("%", maxsplit=1)[0])
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified)


def pick_interface_address(interfaces):
    """The address to use from ``interfaceAddresses``' answer: the first usable IPv4, else the first usable IPv6."""
    candidates = []
    for data in (interfaces or {}).values():
        for addr in (data or {}).get("addrs") or []:
            text = addr.get("addr")
            if text and usable_address(text):
                candidates.append(text)
    for text in candidates:
        if ipaddress.ip_address(text.split("%")[0]).version == 4:
            return text
    return candidates[0] if candidates else None


def select_address(sources, finders):
    """The first answer of ``finders[source]()`` for ``source`` in ``sources`` that is not None.

    Returns ``({ansible_host, ansible_port?}, source, errors)`` (``({}, None, errors)`` when none
    answers); ``errors`` maps a source to why it failed (a :class:`LibvirtError` from its finder).
    Sources after the first answer are not asked: a guest agent that does not answer costs time.
    """
    errors = {}
    for source in sources:
        try:
            found = finders[source]()
        except LibvirtError as exc:
            errors[source] = exc.msg
            continue
        if found:
            address, port = found
            result = dict(ansible_host=address)
            if port is not None:
                result["ansible_port"] = port
            return result, source, errors
    return {}, None, errors


def guest_address(dom, domain, sources, *, guest_port=22, remote_host=None, recorded_forwards=()):
    """How to reach a guest: :func:`select_address` over the libvirt domain ``dom`` (``domain`` is its parsed XML).

    ``recorded_forwards`` are the metadata's port forwards; they come before the domain XML's.
    Interface addresses are asked only of an active guest.
    """
    active = bool(dom.isActive())

    def port_forward():
        forwards = [fwd for fwd in recorded_forwards if fwd["guest"] == guest_port] + domain_port_forwards(domain, guest_port)
        for forward in forwards:
            endpoint = forward_endpoint(forward, remote_host)
            if endpoint:
                return endpoint
        return None

    def interface(source):
        def find():
            if not active:
                return None
            with translated("cannot read the %s addresses of guest %s" % (source, dom.name())):
                answer = dom.interfaceAddresses(INTERFACE_ADDRESS_SOURCES[source], 0)
            address = pick_interface_address(answer)
            return (address, None) if address else None

        return find

    finders = dict(port_forward=port_forward, **{source: interface(source) for source in INTERFACE_ADDRESS_SOURCES})
    return select_address(sources, finders)
