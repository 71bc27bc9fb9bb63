# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``virtops.kvm.libvirt`` inventory plugin: the guests of many hypervisors as Ansible hosts."""

from __future__ import annotations

DOCUMENTATION = r"""
name: libvirt
short_description: Guests of libvirt hypervisors as inventory hosts
version_added: 0.1.0
description:
  - Lists every guest of every libvirt URI in O(uris) as an inventory host, through read-only
    connections.
  - Each host gets the variable C(hypervisor) (the host the URI names, or this machine's host name for
    a local URI) and is put in a group of that name, in a group named after its state (C(running),
    C(paused), C(shut_off), C(blocked), C(shutting_down), C(crashed), C(pmsuspended), C(no_state)) and
    in the groups that the C(virtops.kvm.kvm_guest) role recorded in the domain's C(<metadata>).
  - "The role's record is an element in the namespace C(https://virtops.dev/kvm/inventory/1):
    C(<inv:inventory xmlns:inv=\"https://virtops.dev/kvm/inventory/1\"><inv:group name=\"kvm_guests\"/>
    <inv:var name=\"ansible_user\">\"debian\"</inv:var><inv:port-forward host=\"2222\" guest=\"22\"
    address=\"127.0.0.1\"/></inv:inventory>). A variable's text is JSON; a variable whose text is not
    JSON is skipped with a warning. The live XML's record is read, else the persistent one's."
  - C(ansible_host) (and C(ansible_port) for a port forward) come from the first of O(address_sources)
    that has an answer. Addresses reported for the guest that are loopback, link-local, multicast or
    unspecified are never used.
  - Recorded variables are set on the host and win over the discovered C(ansible_host) and
    C(ansible_port); C(hypervisor) and the C(libvirt_*) variables always describe what libvirt
    reports. O(compose) is applied last.
  - A guest defined on more than one hypervisor (the same UUID, for example during or after a
    migration) is listed once, from the hypervisor where it is active. Two different guests with the
    same name are listed once, from the first URI, with a warning.
  - A hypervisor that cannot be reached is a warning naming it, and the guests of the others are
    still listed, unless O(strict_connect) is set.
  - Inventory source files must end in C(.libvirt.yml) or C(.libvirt.yaml).
requirements:
  - libvirt-python (the C(python3-libvirt) package) on the controller
  - lxml (the C(python3-lxml) package) on the controller
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin; it marks the file as an inventory source for it.
    required: true
    type: str
    choices: [virtops.kvm.libvirt]
  uris:
    description:
      - libvirt connection URIs, each one hypervisor (V(qemu:///system), V(qemu+ssh://root@hv1/system),
        V(qemu+tls://hv2/system)).
      - A remote URI must authenticate without a prompt (ssh keys, TLS certificates).
    type: list
    elements: str
    default: [qemu:///system]
  read_only:
    description:
      - Open the connections read-only (C(virConnectOpenReadOnly)); the plugin never changes anything.
      - libvirt refuses the guest agent's addresses on a read-only connection, so the V(agent) source
        in O(address_sources) needs V(false).
    type: bool
    default: true
  address_sources:
    description:
      - Where C(ansible_host) comes from, tried in this order; the first source with an answer wins.
      - V(port_forward) is a TCP port forward to O(guest_port), recorded in the metadata or declared by
        the domain XML's C(<interface type='user'><portForward>) (passt); it gives C(ansible_host) (the
        forward's address, V(127.0.0.1) for all addresses on this machine, the hypervisor's name for
        all addresses on a remote one) and C(ansible_port). A forward bound to a loopback address of a
        remote hypervisor cannot be reached from here and is skipped.
      - V(lease) is the DHCP lease of a libvirt network, V(agent) what the QEMU guest agent reports
        (needs O(read_only=false)), V(arp) the hypervisor's ARP table. These are asked only of active
        guests.
    type: list
    elements: str
    choices: [port_forward, lease, agent, arp]
    default: [port_forward, lease, arp]
  guest_port:
    description: The guest's TCP port (its SSH server) that a V(port_forward) address source looks for.
    type: int
    default: 22
  include_inactive:
    description: Whether guests that are defined but not running (shut off) are listed.
    type: bool
    default: true
  filters:
    description: Which guests are listed; a guest must pass every filter that is set.
    type: dict
    default: {}
    suboptions:
      names:
        description: Shell-style patterns (C(fnmatch)); a guest whose name matches one of them is listed.
        type: list
        elements: str
      exclude_names:
        description: Shell-style patterns; a guest whose name matches one of them is not listed.
        type: list
        elements: str
      states:
        description: States (the group names above); only guests in one of them are listed.
        type: list
        elements: str
        choices: [running, paused, shut_off, blocked, shutting_down, crashed, pmsuspended, no_state]
  strict_connect:
    description:
      - Fail the inventory source when a hypervisor cannot be reached or its guests cannot be listed,
        instead of warning and listing the others.
      - Ansible then reports the source as not parsed; with C(ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED=true)
        that stops the run.
    type: bool
    default: false
notes:
  - With O(cache) on, the listing is served from the cache until O(cache_timeout) passes or the cache is
    refreshed (C(ansible-inventory --flush-cache), the C(refresh_inventory) meta task); no hypervisor is
    contacted then.
  - Addresses from O(address_sources) are what the hypervisor sees; an address on a NAT network of a
    remote hypervisor may not be reachable from the controller.
seealso:
  - name: libvirt domain metadata
    description: The C(<metadata>) element of a libvirt domain.
    link: https://libvirt.org/formatdomain.html#general-metadata
"""

EXAMPLES = r"""
# inventory/kvm.libvirt.yml: every guest of two hypervisors
plugin: virtops.kvm.libvirt
uris:
  - qemu+ssh://root@hv1.example.com/system
  - qemu+ssh://root@hv2.example.com/system

# running guests only, reached through their port forward or their DHCP lease, cached for an hour
plugin: virtops.kvm.libvirt
uris: [qemu:///system]
filters:
  states: [running]
  exclude_names: ['scratch-*']
address_sources: [port_forward, lease]
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/ansible-inventory
cache_timeout: 3600

# the guest agent's addresses (a read-write connection), groups by a recorded variable
plugin: virtops.kvm.libvirt
uris: [qemu:///system]
read_only: false
address_sources: [agent, lease]
keyed_groups:
  - key: guest_role | default('none')
    prefix: role
compose:
  ansible_user: ansible_user | default('debian')
"""

import fnmatch
import urllib.parse

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._inventory_meta import (
    ADDRESS_SOURCES,
    guest_address,
    inventory_element,
    parse_inventory,
)
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import (
    VIR_CONNECT_LIST_DOMAINS_ACTIVE,
    VIR_DOMAIN_XML_INACTIVE,
    VIR_ERR_NO_DOMAIN,
    libvirt,
    open_client,
    translated,
)
from ansible_collections.virtops.kvm.plugins.module_utils._xml import etree, parse_xml

# Group names of libvirt's domain states, by the name of libvirt's constant (libvirt-domain.h).
STATE_GROUPS = {
    "VIR_DOMAIN_NOSTATE": "no_state",
    "VIR_DOMAIN_RUNNING": "running",
    "VIR_DOMAIN_BLOCKED": "blocked",
    "VIR_DOMAIN_PAUSED": "paused",
    "VIR_DOMAIN_SHUTDOWN": "shutting_down",
    "VIR_DOMAIN_SHUTOFF": "shut_off",
    "VIR_DOMAIN_CRASHED": "crashed",
    "VIR_DOMAIN_PMSUSPENDED": "pmsuspended",
}
FILTER_KEYS = ("names", "exclude_names", "states")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
CACHE_FORMAT = 1


def _plain(value):
    """``value`` as a plain str (option values carry Ansible's tags; libvirt and the cache want text)."""
    return "%s" % value


def _quiet_libvirt(_ctx, _error):
    """libvirt's error callback: errors are raised as exceptions, not printed on stderr as well."""


def state_group(state):
    """The group name of a libvirt state number (``no_state`` for one this libvirt does not know)."""
    for constant, group in STATE_GROUPS.items():
        if getattr(libvirt, constant, None) == state:
            return group
    return "no_state"


def uri_host(uri):
    """The host a libvirt URI names, or None when it names none or this machine (a local URI)."""
    try:
        host = urllib.parse.urlsplit(uri).hostname
    except ValueError:
        return None
    if not host or host.lower() in LOCAL_HOSTS:
        return None
    return host


def guest_rank(guest):
    """Which listing of one guest (same UUID on two hypervisors) wins: running > other active > inactive."""
    if guest["state"] == "running":
        return 2
    return 1 if guest["active"] else 0


def merge_guests(guests):
    """One guest per name, in listing order, and the warnings about names that clash."""
    chosen = {}
    warnings = []
    for guest in guests:
        name = guest["name"]
        known = chosen.get(name)
        if known is None:
            chosen[name] = guest
        elif known["uuid"] != guest["uuid"]:
            warnings.append(
                "guest %s on hypervisor %s (%s) and guest %s on hypervisor %s (%s) are different guests with one name: only the one on %s is listed"
                % (name, known["hypervisor"], known["uuid"], name, guest["hypervisor"], guest["uuid"], known["hypervisor"])
            )
        elif guest_rank(guest) > guest_rank(known):
            chosen[name] = guest
    return list(chosen.values()), warnings


def check_config(options):
    """The validated settings the listing needs, from the plugin's options (AnsibleParserError if wrong)."""
    uris = [_plain(uri) for uri in options["uris"] or []]
    if not uris or any(not uri.strip() for uri in uris):
        raise AnsibleParserError("uris must list at least one libvirt URI, and none may be empty (got %r)" % (uris,))
    sources = [_plain(source) for source in options["address_sources"] or []]
    unknown = [source for source in sources if source not in ADDRESS_SOURCES]
    if unknown:
        raise AnsibleParserError("address_sources has %s; the sources are %s" % (", ".join(unknown), ", ".join(ADDRESS_SOURCES)))
    if len(set(sources)) != len(sources):
        raise AnsibleParserError("address_sources names a source twice: %s" % ", ".join(sources))
    if "agent" in sources and options["read_only"]:
        raise AnsibleParserError(
            "address_sources has agent, but libvirt refuses the guest agent's addresses on a read-only connection: set read_only: false, or drop agent"
        )
    filters = options["filters"] or {}
    if not isinstance(filters, dict):
        raise AnsibleParserError("filters must be a dictionary with %s, got %r" % (", ".join(FILTER_KEYS), filters))
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise AnsibleParserError("filters has unknown keys %s; the filters are %s" % (", ".join(map(str, unknown)), ", ".join(FILTER_KEYS)))
    checked = {}
    for key in FILTER_KEYS:
        value = filters.get(key)
        if value is None:
            checked[key] = None
            continue
        if isinstance(value, str) or not isinstance(value, list):
            raise AnsibleParserError("filters.%s must be a list, got %r" % (key, value))
        checked[key] = [_plain(item) for item in value]
    bad_states = sorted(set(checked["states"] or []) - set(STATE_GROUPS.values()))
    if bad_states:
        raise AnsibleParserError("filters.states has %s; the states are %s" % (", ".join(bad_states), ", ".join(STATE_GROUPS.values())))
    port = options["guest_port"]
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise AnsibleParserError("guest_port is %r, not a port number (1-65535)" % (port,))
    return dict(
        uris=uris,
        read_only=bool(options["read_only"]),
        address_sources=sources,
        guest_port=port,
        include_inactive=bool(options["include_inactive"]),
        filters=checked,
        strict_connect=bool(options["strict_connect"]),
    )


def wanted(name, state, filters):
    """Whether a guest passes the filters."""
    if filters["names"] is not None and not any(fnmatch.fnmatchcase(name, pattern) for pattern in filters["names"]):
        return False
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in filters["exclude_names"] or []):
        return False
    return filters["states"] is None or state in filters["states"]


def read_guest(dom, uri, hypervisor, config):
    """One guest as the plain record the inventory (and its cache) holds, and warnings about it.

    None when the guest is filtered out.
    """
    name = dom.name()
    with translated("cannot read the state of guest %s" % name):
        state = state_group(dom.state()[0])
    if not wanted(name, state, config["filters"]):
        return None, []
    with translated("cannot read the XML of guest %s" % name):
        active = bool(dom.isActive())
        domain = parse_xml(dom.XMLDesc(0), "libvirt's XML of guest %s" % name)
        record = inventory_element(domain)
        if record is None and active and dom.isPersistent():
            record = inventory_element(parse_xml(dom.XMLDesc(VIR_DOMAIN_XML_INACTIVE), "libvirt's persistent XML of guest %s" % name))
        uuid = dom.UUIDString()
    meta = parse_inventory(record)
    address, source, errors = guest_address(
        dom, domain, config["address_sources"], guest_port=config["guest_port"], remote_host=uri_host(uri), recorded_forwards=meta["port_forwards"]
    )
    guest = dict(
        name=name,
        uuid=uuid,
        uri=uri,
        hypervisor=hypervisor,
        state=state,
        active=active,
        groups=meta["groups"],
        vars=meta["vars"],
        address=address,
        address_source=source,
        address_errors=errors,
    )
    return guest, ["guest %s on %s: %s" % (name, hypervisor, text) for text in meta["warnings"]]


def list_hypervisor(uri, config):
    """``(guests, warnings)`` of one URI; LibvirtError when it cannot be reached or listed."""
    with open_client(uri, read_only=config["read_only"]) as client:
        hypervisor = uri_host(uri) or client.call("cannot read the host name of %s" % uri, client.conn.getHostname)
        flags = 0 if config["include_inactive"] else VIR_CONNECT_LIST_DOMAINS_ACTIVE
        domains = client.call("cannot list the guests of %s" % uri, client.conn.listAllDomains, flags)
        guests, warnings = [], []
        for dom in sorted(domains, key=lambda d: d.name()):
            try:
                guest, notes = read_guest(dom, uri, hypervisor, config)
            except (LibvirtError, ValidationError) as exc:
                if getattr(exc, "code", None) != VIR_ERR_NO_DOMAIN:  # gone since it was listed: nothing to say
                    warnings.append("guest %s on %s is not listed: %s" % (dom.name(), hypervisor, exc.msg))
                continue
            warnings.extend(notes)
            if guest is not None:
                guests.append(guest)
        return guests, warnings


def list_guests(config):
    """``(guests, warnings)`` of every URI; with strict_connect an unreachable one raises AnsibleParserError."""
    guests, warnings = [], []
    for uri in config["uris"]:
        try:
            found, notes = list_hypervisor(uri, config)
        except (LibvirtError, ValidationError) as exc:
            message = "hypervisor %s cannot be reached or listed: %s" % (uri, exc.msg)
            if config["strict_connect"]:
                raise AnsibleParserError("%s (strict_connect is on)" % message) from exc
            warnings.append("%s; its guests are not in the inventory" % message)
            continue
        guests.extend(found)
        warnings.extend(notes)
    merged, clashes = merge_guests(guests)
    return merged, warnings + clashes


def host_vars(guest):
    """The variables a guest's host gets (recorded variables, then what libvirt reports)."""
    variables = dict(guest["address"])
    variables.update(guest["vars"])
    variables.update(
        hypervisor=guest["hypervisor"],
        libvirt_uri=guest["uri"],
        libvirt_name=guest["name"],
        libvirt_uuid=guest["uuid"],
        libvirt_state=guest["state"],
        libvirt_address_source=guest["address_source"],
    )
    return variables


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "virtops.kvm.libvirt"

    def verify_file(self, path):
        """Only ``*.libvirt.yml`` / ``*.libvirt.yaml`` files are this plugin's sources."""
        return super().verify_file(path) and path.endswith((".libvirt.yml", ".libvirt.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache=cache)
        if libvirt is None:
            raise AnsibleParserError("the virtops.kvm.libvirt inventory needs libvirt-python on the controller (pip install libvirt-python)")
        if etree is None:
            raise AnsibleParserError("the virtops.kvm.libvirt inventory needs lxml on the controller (pip install lxml)")
        self._read_config_data(path)
        config = check_config(
            {key: self.get_option(key) for key in ("uris", "read_only", "address_sources", "guest_port", "include_inactive", "filters", "strict_connect")}
        )

        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        guests = None
        if use_cache:
            try:
                cached = self._cache[cache_key]
            except KeyError:
                update_cache = True
            else:
                if isinstance(cached, dict) and cached.get("format") == CACHE_FORMAT:
                    guests = cached["guests"]
                else:
                    update_cache = True
        if guests is None:
            libvirt.registerErrorHandler(_quiet_libvirt, None)
            guests, warnings = list_guests(config)
            for warning in warnings:
                self.display.warning("virtops.kvm.libvirt: %s" % warning)
            for guest in guests:
                for source, error in sorted(guest["address_errors"].items()):
                    self.display.vvv("virtops.kvm.libvirt: guest %s on %s: no %s address: %s" % (guest["name"], guest["hypervisor"], source, error))
        self._populate(guests)
        if update_cache:
            self._cache[cache_key] = dict(format=CACHE_FORMAT, guests=guests)

    def _add_to_group(self, group, host):
        name = self.inventory.add_group(self._sanitize_group_name(group))
        self.inventory.add_child(name, host)

    def _populate(self, guests):
        strict = self.get_option("strict")
        for guest in guests:
            host = self.inventory.add_host(guest["name"])
            variables = host_vars(guest)
            for key, value in variables.items():
                self.inventory.set_variable(host, key, value)
            for group in [guest["state"], guest["hypervisor"], *guest["groups"]]:
                self._add_to_group(group, host)
            self._set_composite_vars(self.get_option("compose"), variables, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), variables, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, host, strict=strict)
