# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""libvirt virtual networks: three-way merge of the user's XML, live updates, restarts.

The user's XML is merged into libvirt's persistent definition with the shared engine
(:func:`three_way_merge`), knowing the intent applied last time, which is kept in the network's
``<metadata>``. When the merged definition differs from the running network only in sections
libvirt can change live (DHCP hosts and ranges, DNS hosts/TXT/SRV records, port groups), those
entries are deleted/added on the running network with ``virNetworkUpdate`` (live):
dnsmasq re-reads its files, the bridge and the guests are not touched. Then the merged definition
is stored with ``virNetworkDefineXML``. Any other difference between the running network and the
definition applies at the next start (``pending_restart``, ``apply: next_boot``) or now with
``apply: restart``.

Live updates are applied one by one; when one fails, the ones already applied are undone in
reverse order, so the running network equals its definition again, and the message says so.
Addresses in the intent (``<ip>``, DHCP ranges and hosts, DNS hosts, routes) are checked with
:mod:`ipaddress` while planning, so check mode fails where libvirt would.
"""

from __future__ import annotations

import copy
import ipaddress

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError, VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import VIR_CONNECT_LIST_DOMAINS_ACTIVE, VIR_NETWORK_XML_INACTIVE, libvirt
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt_objects import inactive_xml, validate_object_name
from ansible_collections.virtops.kvm.plugins.module_utils._xml import (
    canonical,
    parse_named_root,
    parse_xml,
    read_last_applied,
    strip_last_applied,
    three_way_merge,
    to_string,
    write_last_applied,
    xml_equal,
)

STATES = ("present", "active", "inactive", "absent")
APPLY = ("next_boot", "restart")

# Sections libvirt updates live: (name, parent path relative to <network>, child tag, libvirt's
# VIR_NETWORK_SECTION_* suffix, whether the parent is an indexed <ip> element).
LIVE_SECTIONS = (
    ("ip-dhcp-host", "dhcp", "host", "IP_DHCP_HOST", True),
    ("ip-dhcp-range", "dhcp", "range", "IP_DHCP_RANGE", True),
    ("portgroup", None, "portgroup", "PORTGROUP", False),
    ("dns-host", "dns", "host", "DNS_HOST", False),
    ("dns-txt", "dns", "txt", "DNS_TXT", False),
    ("dns-srv", "dns", "srv", "DNS_SRV", False),
)
_SECTION_SUFFIX = {name: suffix for name, _parent, _tag, suffix, _indexed in LIVE_SECTIONS}
# An update is (command, section, parent index, element XML, description); command is "add" or "delete".
_UNDO = {"add": "delete", "delete": "add"}

# Attributes of the live XML that describe the running object, not its configuration.
_RUNTIME_ATTRS = ("connections",)


def prepare_intent(name, xml_text):
    """Parse the user's network XML; its <name> must match ``name`` (added when missing); addresses are checked."""
    root = parse_named_root(xml_text, "network", name)
    validate_addresses(root, name)
    return root


# ---------------------------------------------------------------------------- address checks


def _address(value, what, version=None):
    try:
        addr = ipaddress.ip_address((value or "").strip())
    except ValueError:
        raise ValidationError("%s %r is not an IP address" % (what, value)) from None
    if version is not None and addr.version != version:
        raise ValidationError("%s %r is not an IPv%d address like the network's" % (what, value, version))
    return addr


def _prefix(value, what, version):
    limit = 32 if version == 4 else 128
    if value is None or not str(value).strip().isdigit() or int(value) > limit:
        raise ValidationError("%s %r is not a prefix length (0 to %d for IPv%d)" % (what, value, limit, version))
    return int(value)


def _ip_network(ip, where):
    """(version, ipaddress network or None) of an ``<ip>`` element, every attribute checked."""
    family = (ip.get("family") or "").lower()
    if family not in ("", "ipv4", "ipv6"):
        raise ValidationError("%s: family %r is neither ipv4 nor ipv6" % (where, ip.get("family")))
    if ip.get("address") is None:
        raise ValidationError("%s: <ip> needs an address attribute" % where)
    version = {"ipv4": 4, "ipv6": 6}.get(family)
    addr = _address(ip.get("address"), "%s: address" % where, version)
    version = addr.version
    prefix = None
    if ip.get("netmask") is not None:
        if version == 6:
            raise ValidationError("%s: an IPv6 address takes prefix, not netmask" % where)
        try:
            prefix = ipaddress.IPv4Network("0.0.0.0/%s" % ip.get("netmask").strip()).prefixlen
        except ValueError:
            raise ValidationError("%s: netmask %r is not a netmask (contiguous ones, like 255.255.255.0)" % (where, ip.get("netmask"))) from None
    if ip.get("prefix") is not None:
        prefix = _prefix(ip.get("prefix"), "%s: prefix" % where, version)
    network = ipaddress.ip_interface("%s/%d" % (addr, prefix)).network if prefix is not None else None
    return version, network


def _check_dhcp(ip, where, version, network):
    for index, rng in enumerate(ip.findall("dhcp/range")):
        what = "%s: <dhcp><range> %d" % (where, index + 1)
        start = _address(rng.get("start"), what + " start", version)
        end = _address(rng.get("end"), what + " end", version)
        if start > end:
            raise ValidationError("%s: start %s is after end %s" % (what, start, end))
        if network is not None and (start not in network or end not in network):
            raise ValidationError("%s: %s - %s is not inside the network %s" % (what, start, end, network))
    for index, host in enumerate(ip.findall("dhcp/host")):
        if host.get("ip") is not None:
            _address(host.get("ip"), "%s: <dhcp><host> %d ip" % (where, index + 1), version)


def validate_addresses(root, name):
    """Refuse addresses libvirt would refuse (or that could never work), naming where they are."""
    for index, ip in enumerate(root.findall("ip")):
        where = "network %s, <ip> %d" % (name, index + 1)
        version, network = _ip_network(ip, where)
        _check_dhcp(ip, where, version, network)
    for index, host in enumerate(root.findall("dns/host")):
        _address(host.get("ip"), "network %s: <dns><host> %d ip" % (name, index + 1))
    for index, route in enumerate(root.findall("route")):
        where = "network %s, <route> %d" % (name, index + 1)
        addr = _address(route.get("address"), where + ": address")
        _address(route.get("gateway"), where + ": gateway", addr.version)
        if route.get("prefix") is not None:
            _prefix(route.get("prefix"), where + ": prefix", addr.version)


# ---------------------------------------------------------------------------- comparing


def _config_view(root):
    """A copy without our last-applied metadata and runtime-only attributes, for comparisons."""
    view = strip_last_applied(copy.deepcopy(root))
    for attr in _RUNTIME_ATTRS:
        view.attrib.pop(attr, None)
    return view


def _parents(root, parent_path, indexed):
    """The parent elements of a live section: [(parent_index, element)]."""
    if indexed:
        found = []
        for index, ip in enumerate(root.findall("ip")):
            parent = ip.find(parent_path)
            if parent is not None:
                found.append((index, parent))
        return found
    parent = root if parent_path is None else root.find(parent_path)
    return [(-1, parent)] if parent is not None else []


def _without_live_sections(root):
    view = copy.deepcopy(root)
    for _name, parent_path, tag, _section, indexed in LIVE_SECTIONS:
        for _index, parent in _parents(view, parent_path, indexed):
            for child in parent.findall(tag):
                parent.remove(child)
    return view


def contains(wanted, have):
    """Whether ``have`` already says everything ``wanted`` says (libvirt may add defaults)."""
    return xml_equal(three_way_merge(wanted, have), have)


def _update(command, name, index, child):
    return (command, name, index, to_string(child, pretty=False), "%s %s %s" % (command, name, canonical(child)))


def _section_updates(name, have_parents, want_parents, tag):
    """(deletes, adds) for one section, or None when a parent to add entries to is missing live."""
    deletes, adds = [], []
    for index, want_parent in want_parents.items():
        want = want_parent.findall(tag)
        if index not in have_parents:
            if want:
                return None
            continue
        have = have_parents[index].findall(tag)
        used = set()
        for child in want:
            match = next((i for i, cand in enumerate(have) if i not in used and contains(child, cand)), None)
            if match is None:
                adds.append(_update("add", name, index, child))
            else:
                used.add(match)
        deletes.extend(_update("delete", name, index, child) for i, child in enumerate(have) if i not in used)
    for index, have_parent in have_parents.items():
        if index not in want_parents:
            deletes.extend(_update("delete", name, index, child) for child in have_parent.findall(tag))
    return deletes, adds


def live_updates(live, wanted):
    """The ``virNetworkUpdate`` calls turning the running network ``live`` into ``wanted``.

    None when sections libvirt cannot update live differ; an empty list when nothing differs.
    Otherwise a list of (command, section, parent index, element XML, description) with command
    ``delete`` or ``add``: deletions first, then additions; a changed entry is deleted and added again.
    """
    if not contains(_without_live_sections(wanted), _without_live_sections(live)):
        return None
    deletes, adds = [], []
    for name, parent_path, tag, _suffix, indexed in LIVE_SECTIONS:
        found = _section_updates(name, dict(_parents(live, parent_path, indexed)), dict(_parents(wanted, parent_path, indexed)), tag)
        if found is None:
            return None
        deletes.extend(found[0])
        adds.extend(found[1])
    return deletes + adds


# ---------------------------------------------------------------------------- planning


def _net_state(net):
    if net is None:
        return dict(state="absent", autostart=False)
    return dict(state="active" if net.isActive() else "inactive", autostart=bool(net.autostart()))


def _state_text(state):
    return "state: %s\nautostart: %s\n" % (state["state"], str(state["autostart"]).lower())


def _plan_absent(net, plan):
    if net is not None:
        if plan["before"]["state"] == "active":
            plan["steps"].append("stop")
        if net.isPersistent():
            plan["steps"].append("undefine")
        plan["after"] = dict(state="absent", autostart=False)
        plan["after_xml"] = ""
    return plan


def _plan_definition(params, net, config, plan):
    """The merged definition (and the define step when it or the stored intent changes)."""
    name = params["name"]
    merged = _config_view(config) if config is not None else None
    if params.get("xml"):
        intent = prepare_intent(name, params["xml"])
        if net is None:
            merged = copy.deepcopy(intent)
            content_changed = meta_changed = True
        else:
            last = read_last_applied(config)
            merged = three_way_merge(intent, _config_view(config), last)
            content_changed = not xml_equal(merged, _config_view(config))
            meta_changed = last is None or canonical(last) != canonical(strip_last_applied(copy.deepcopy(intent)))
        if content_changed or meta_changed:
            plan["define_xml"] = to_string(write_last_applied(copy.deepcopy(merged), intent))
            plan["steps"].append("define")
            plan["after_xml"] = to_string(merged)
    elif net is None:
        raise ValidationError("network %s does not exist and no xml was given to define it; pass xml (<network>...</network>)" % name)
    return merged


def _plan_running(backends, params, net, merged, plan):
    """Live updates, a restart or a pending restart for a running network that differs from ``merged``."""
    client = backends.libvirt
    name = params["name"]
    live = _config_view(parse_xml(client.call("cannot read network %s" % name, net.XMLDesc, 0), "network %s" % name))
    updates = live_updates(live, merged)
    if updates:
        plan["updates"] = updates
        plan["steps"].insert(0, "update-live")
    elif updates is None:
        if params["apply"] != "restart":
            plan["pending_restart"] = True
            return
        plan["steps"] += ["stop", "start"]
        if not params["reattach"]:
            hint = "; set reattach=true or reattach them"
        elif backends.host_local:
            plan["steps"].append("reattach")
            hint = " (done for running guests)"
        else:
            hint = "; %s is not this machine's libvirtd, so they are not reattached here: reattach them on the hypervisor" % backends.uri
        plan["warnings"].append("network %s is restarted: guests attached to it lose connectivity until their NICs are reattached%s" % (name, hint))


def plan_network(backends, params):
    """Returns the plan: the steps to take and the texts for the diff, everything validated."""
    client = backends.libvirt
    name = validate_object_name(params["name"], "network")
    net = client.lookup_network(name)
    current = _net_state(net)
    config = parse_xml(inactive_xml(client, net, "network %s" % name, VIR_NETWORK_XML_INACTIVE), "network %s" % name) if net is not None else None
    before_xml = to_string(_config_view(config)) if config is not None else ""
    plan = dict(
        net=net,
        steps=[],
        before=current,
        after=dict(current),
        before_xml=before_xml,
        after_xml=before_xml,
        define_xml=None,
        updates=[],
        pending_restart=False,
        warnings=[],
    )
    if params["state"] == "absent":
        return _plan_absent(net, plan)
    merged = _plan_definition(params, net, config, plan)
    if net is not None and current["state"] == "active" and params["state"] != "inactive":
        _plan_running(backends, params, net, merged, plan)
    after = plan["after"]
    if net is None:
        after.update(state="inactive", autostart=False)
    if params["state"] == "active" and after["state"] != "active":
        plan["steps"].append("start")
        after["state"] = "active"
    elif params["state"] == "inactive" and after["state"] == "active":
        plan["steps"].append("stop")
        after["state"] = "inactive"
    if params.get("autostart") is not None and params["autostart"] != after["autostart"]:
        plan["steps"].append("autostart")
        after["autostart"] = params["autostart"]
    return plan


# ---------------------------------------------------------------------------- applying


def _network_update(client, net, name, update):
    command, section, index, xml, text = update
    command_flag = libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST if command == "add" else libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE
    section_flag = getattr(libvirt, "VIR_NETWORK_SECTION_" + _SECTION_SUFFIX[section])
    client.call("cannot update network %s live (%s)" % (name, text), net.update, command_flag, section_flag, index, xml, libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE)


def apply_live_updates(client, net, name, updates):
    """Apply ``updates`` in order; on a failure undo the applied ones in reverse and say so."""
    done = []
    for update in updates:
        try:
            _network_update(client, net, name, update)
        except VirtopsError as exc:
            exc.msg = "%s; %s" % (exc.msg, _roll_back(client, net, name, done))
            exc.args = (exc.msg,)
            raise
        done.append(update)


def _roll_back(client, net, name, done):
    """Undo the live updates in ``done`` (newest first); returns what that left, for the message."""
    failed = []
    for applied in reversed(done):
        undo = (_UNDO[applied[0]], *applied[1:4], "%s (undo)" % applied[4])
        try:
            _network_update(client, net, name, undo)
        except VirtopsError as exc:
            failed.append("%s: %s" % (applied[4], exc.msg))
    if failed:
        return (
            "rolling back the live updates already applied failed, so the running network differs from its definition, "
            "which was not changed (restart the network to apply it): %s" % "; ".join(failed)
        )
    if done:
        return "the %d live update(s) already applied were rolled back: the running network equals its definition again, which was not changed" % len(done)
    return "no live update was applied: the running network and its definition are unchanged"


def _guest_taps(client, name):
    """(domain name, tap device) of every interface of a running guest on network ``name``."""
    taps = []
    for dom in client.call("cannot list running domains", client.conn.listAllDomains, VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        root = parse_xml(client.call("cannot read domain %s" % dom.name(), dom.XMLDesc, 0), "domain %s" % dom.name())
        for iface in root.findall("devices/interface[@type='network']"):
            source = iface.find("source")
            target = iface.find("target")
            if source is not None and source.get("network") == name and target is not None and target.get("dev"):
                taps.append((dom.name(), target.get("dev")))
    return taps


def apply_network(backends, params, plan):
    """Carry out ``plan``; returns (net, reattached)."""
    client = backends.libvirt
    name = params["name"]
    net = plan["net"]
    reattached = []
    taps = []
    for step in plan["steps"]:
        if step == "update-live":
            apply_live_updates(client, net, name, plan["updates"])
        elif step == "define":
            net = client.call("cannot define network %s" % name, client.conn.networkDefineXML, plan["define_xml"])
        elif step == "start":
            client.call("cannot start network %s" % name, net.create)
        elif step == "stop":
            if "reattach" in plan["steps"]:
                taps = _guest_taps(client, name)
            client.call("cannot stop network %s" % name, net.destroy)
        elif step == "autostart":
            client.call("cannot set autostart on network %s" % name, net.setAutostart, 1 if params["autostart"] else 0)
        elif step == "undefine":
            client.call("cannot undefine network %s" % name, net.undefine)
            net = None
        elif step == "reattach":
            bridge = client.call("cannot read the bridge of network %s" % name, net.bridgeName)
            for dom_name, tap in taps:
                backends.commands.run(["ip", "link", "set", "dev", tap, "master", bridge], what="reattaching %s of guest %s to %s" % (tap, dom_name, bridge))
                reattached.append(dict(domain=dom_name, interface=tap, bridge=bridge))
    return net, reattached


def network_facts(client, net):
    if net is None:
        return {}
    root = parse_xml(client.call("cannot read network", net.XMLDesc, 0), "network")
    forward = root.find("forward")
    return dict(
        name=net.name(),
        uuid=net.UUIDString(),
        state="active" if net.isActive() else "inactive",
        autostart=bool(net.autostart()),
        persistent=bool(net.isPersistent()),
        bridge=root.find("bridge").get("name") if root.find("bridge") is not None else None,
        forward_mode=forward.get("mode", "nat") if forward is not None else None,
    )


def ensure_network(backends, params, check_mode):
    """The whole run: plan, then act unless in check mode."""
    plan = plan_network(backends, params)
    changed = bool(plan["steps"])
    result = dict(
        changed=changed,
        actions=plan["steps"],
        live_updates=[u[4] for u in plan["updates"]],
        pending_restart=plan["pending_restart"],
        reattached=[],
        warnings=plan["warnings"],
    )
    net = plan["net"]
    if changed and not check_mode:
        net, result["reattached"] = apply_network(backends, params, plan)
    result["network"] = network_facts(backends.libvirt, net)
    if changed:
        header = "network %s" % params["name"]
        result["diff"] = [
            dict(before_header=header + " (XML)", after_header=header + " (XML)", before=plan["before_xml"], after=plan["after_xml"]),
            dict(before_header=header + " (state)", after_header=header + " (state)", before=_state_text(plan["before"]), after=_state_text(plan["after"])),
        ]
    return result
