# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt virtual networks: three-way merge of the user's XML, live updates, restarts.

The user's XML is merged into libvirt's persistent definition with the shared engine
(:func:`three_way_merge`), knowing the intent applied last time, which is kept in the network's
``<metadata>``. When the merged definition differs from the running network only in sections
libvirt can change live (DHCP hosts and ranges, DNS hosts/TXT/SRV records, port groups), those
entries are deleted/added on the running network with ``virNetworkUpdate`` (live):
dnsmasq re-reads its files, the bridge and the guests are not touched. Then the merged definition
is stored with ``virNetworkDefineXML``. Any other difference between the running network and the
definition applies at the next start (``pending_restart``) or now with ``apply=restart``.
"""

from __future__ import annotations

import copy

from ansible_collections.virtops.kvm.plugins.module_utils._command import CommandRunner
from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import connect
from ansible_collections.virtops.kvm.plugins.module_utils._pool import inactive_xml
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
APPLY = ("pending", "restart")

# virNetworkUpdateCommand / virNetworkUpdateSection / virNetworkUpdateFlags (stable numbers).
UPDATE_DELETE = 2
UPDATE_ADD_LAST = 3
UPDATE_LIVE = 1

# Sections libvirt updates live: (name, parent path relative to <network>, child tag, section
# number, whether the parent is an indexed <ip> element).
LIVE_SECTIONS = (
    ("ip-dhcp-host", "dhcp", "host", 4, True),
    ("ip-dhcp-range", "dhcp", "range", 5, True),
    ("portgroup", None, "portgroup", 9, False),
    ("dns-host", "dns", "host", 10, False),
    ("dns-txt", "dns", "txt", 11, False),
    ("dns-srv", "dns", "srv", 12, False),
)

# Attributes of the live XML that describe the running object, not its configuration.
_RUNTIME_ATTRS = ("connections",)


def prepare_intent(name, xml_text):
    """Parse the user's network XML; its <name> must match ``name`` (added when missing)."""
    root = parse_named_root(xml_text, "network", name)
    return root


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


def live_updates(live, wanted):
    """The ``virNetworkUpdate`` calls turning the running network ``live`` into ``wanted``.

    None when sections libvirt cannot update live differ; an empty list when nothing differs.
    Otherwise a list of (command, section number, parent index, element XML, description): deletions
    first, then additions; a changed entry is deleted and added again.
    """
    if not contains(_without_live_sections(wanted), _without_live_sections(live)):
        return None
    deletes, adds = [], []
    for name, parent_path, tag, section, indexed in LIVE_SECTIONS:
        have_parents = dict(_parents(live, parent_path, indexed))
        want_parents = dict(_parents(wanted, parent_path, indexed))
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
                    adds.append((UPDATE_ADD_LAST, section, index, to_string(child, pretty=False), "add %s %s" % (name, canonical(child))))
                else:
                    used.add(match)
            for i, child in enumerate(have):
                if i not in used:
                    deletes.append((UPDATE_DELETE, section, index, to_string(child, pretty=False), "delete %s %s" % (name, canonical(child))))
        for index, have_parent in have_parents.items():
            if index not in want_parents:
                for child in have_parent.findall(tag):
                    deletes.append((UPDATE_DELETE, section, index, to_string(child, pretty=False), "delete %s %s" % (name, canonical(child))))
    return deletes + adds


def _net_state(net):
    if net is None:
        return dict(state="absent", autostart=False)
    return dict(state="active" if net.isActive() else "inactive", autostart=bool(net.autostart()))


def _state_text(state):
    return "state: %s\nautostart: %s\n" % (state["state"], str(state["autostart"]).lower())


def plan_network(client, params):
    """Returns (net, plan): the steps to take and the texts for the diff."""
    name = params["name"]
    state = params["state"]
    net = client.lookup_network(name)
    current = _net_state(net)
    config = parse_xml(inactive_xml(client, net, "network %s" % name), "network %s" % name) if net is not None else None
    before_xml = to_string(_config_view(config)) if config is not None else ""
    plan = dict(steps=[], before=current, after=dict(current), before_xml=before_xml, after_xml=before_xml,
                define_xml=None, updates=[], pending_restart=False, warnings=[])

    if state == "absent":
        if net is not None:
            if current["state"] == "active":
                plan["steps"].append("stop")
            if net.isPersistent():
                plan["steps"].append("undefine")
            plan["after"] = dict(state="absent", autostart=False)
            plan["after_xml"] = ""
        return net, plan

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
            stored = write_last_applied(copy.deepcopy(merged), intent)
            plan["define_xml"] = to_string(stored)
            plan["steps"].append("define")
            plan["after_xml"] = to_string(merged)
    elif net is None:
        raise ValidationError("network %s does not exist and no xml was given to define it; pass xml (<network>...</network>)" % name)

    if net is not None and current["state"] == "active" and state != "inactive":
        live = _config_view(parse_xml(client.call("cannot read network %s" % name, net.XMLDesc, 0), "network %s" % name))
        updates = live_updates(live, merged)
        if updates:
            plan["updates"] = updates
            plan["steps"].insert(0, "update-live")
        elif updates is None:
            if params["apply"] == "restart":
                plan["steps"] += ["stop", "start"]
                if params["reattach"]:
                    plan["steps"].append("reattach")
            else:
                plan["pending_restart"] = True

    after = plan["after"]
    if net is None:
        after.update(state="inactive", autostart=False)
    if state == "active" and after["state"] != "active":
        plan["steps"].append("start")
        after["state"] = "active"
    elif state == "inactive" and after["state"] == "active":
        plan["steps"].append("stop")
        after["state"] = "inactive"
    if params.get("autostart") is not None and params["autostart"] != after["autostart"]:
        plan["steps"].append("autostart")
        after["autostart"] = params["autostart"]
    return net, plan


def _guest_taps(client, name):
    """(domain name, tap device) of every interface of a running guest on network ``name``."""
    taps = []
    for dom in client.call("cannot list running domains", client.conn.listAllDomains, 1):  # VIR_CONNECT_LIST_DOMAINS_ACTIVE
        root = parse_xml(client.call("cannot read domain %s" % dom.name(), dom.XMLDesc, 0), "domain %s" % dom.name())
        for iface in root.findall("devices/interface[@type='network']"):
            source = iface.find("source")
            target = iface.find("target")
            if source is not None and source.get("network") == name and target is not None and target.get("dev"):
                taps.append((dom.name(), target.get("dev")))
    return taps


def apply_network(module, client, net, plan):
    """Carry out ``plan``; returns (net, reattached)."""
    params = module.params
    name = params["name"]
    reattached = []
    taps = []
    for step in plan["steps"]:
        if step == "update-live":
            for command, section, index, xml, _text in plan["updates"]:
                client.call("cannot update network %s live (%s)" % (name, _text), net.update, command, section, index, xml, UPDATE_LIVE)
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
            runner = CommandRunner(module)
            for dom_name, tap in taps:
                runner.run(["ip", "link", "set", "dev", tap, "master", bridge])
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


def manage_network(module, client):
    """The whole run: plan, then act unless in check mode."""
    params = module.params
    net, plan = plan_network(client, params)
    changed = bool(plan["steps"])
    result = dict(changed=changed, actions=plan["steps"], live_updates=[u[4] for u in plan["updates"]],
                  pending_restart=plan["pending_restart"], reattached=[])
    if "stop" in plan["steps"] and "start" in plan["steps"] and net is not None and net.isActive():
        plan["warnings"].append("network %s is restarted: guests attached to it lose connectivity until their NICs are reattached%s"
                                % (params["name"], " (done for running guests)" if params["reattach"] else "; set reattach=true or reattach them"))
    if changed and not module.check_mode:
        net, result["reattached"] = apply_network(module, client, net, plan)
    result["network"] = network_facts(client, net)
    if plan["warnings"]:
        result["warnings"] = plan["warnings"]
    if module._diff:
        header = "network %s" % params["name"]
        result["diff"] = [
            dict(before_header=header + " (XML)", after_header=header + " (XML)", before=plan["before_xml"], after=plan["after_xml"]),
            dict(before_header=header + " (state)", after_header=header + " (state)",
                 before=_state_text(plan["before"]), after=_state_text(plan["after"])),
        ]
    return result


def run_network(module):
    with connect(module) as client:
        return manage_network(module, client)
