# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""bridge: Linux bridges for guests, as runtime state over netlink or as a netplan file.

Both backends compute a plan from the current state and the request; check mode and diff use the
plan, the real run executes it. When a port carries addresses or the default route, they move to
the bridge; after applying, the gateway must answer within ``rollback_timeout`` or the previous
configuration is restored and the module fails (no lockout).

The iproute2 backend works on the run's netlink (``backends.netlink``), which is ``None`` under a
fake ``root``: the running kernel's links are not that tree's, so the backend is refused there
rather than planning against (or changing) this machine's interfaces. The netplan file name is
validated so nothing is written or removed outside /etc/netplan below ``root``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time

from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError, HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._host_facts import encode_raw, read_raw
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import private_tempdir, validate_name, validate_path

try:
    import yaml

    HAS_YAML = True
except ImportError:  # pragma: no cover
    HAS_YAML = False

NETPLAN_DIR = "/etc/netplan"
IFNAMSIZ = 15
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
USER_HZ = 100


# -- the request ---------------------------------------------------------------------------------
def _iface(address):
    if "/" not in str(address):
        raise ValidationError("address %r has no prefix length: write it as CIDR (10.0.0.2/24)" % (address,))
    try:
        return ipaddress.ip_interface(str(address))
    except ValueError as exc:
        raise ValidationError("address %r is not a valid CIDR address: %s" % (address, exc)) from exc


def _ip(text, what):
    try:
        return ipaddress.ip_address(str(text))
    except ValueError as exc:
        raise ValidationError("%s %r is not an IP address" % (what, text)) from exc


def _network(text):
    try:
        return str(ipaddress.ip_network(str(text), strict=False))
    except ValueError as exc:
        raise ValidationError("route to %r is not a network: write it as CIDR (10.1.0.0/16) or default (%s)" % (text, exc)) from exc


def netplan_path(prefix, name):
    """``/etc/netplan/<prefix>-<name>.yaml``; ValidationError for a prefix that could lead anywhere else."""
    prefix = validate_name("60-virtops" if prefix is None else prefix, "netplan_prefix", allow=r"[A-Za-z0-9_.+-]+")
    return validate_path("%s/%s-%s.yaml" % (NETPLAN_DIR, prefix, name), "netplan file", root=NETPLAN_DIR)


def desired(params):
    """The request, validated and normalised (addresses as 'ip/prefix' strings, delay in seconds)."""
    name = params["name"]
    if not name or len(name) > IFNAMSIZ or not _NAME.match(name) or name in (".", ".."):
        raise ValidationError("bridge name %r is not a valid interface name: at most %d characters of letters, digits, '-', '_' and '.'" % (name, IFNAMSIZ))
    want = {"name": name}
    ports = params.get("ports")
    if ports is not None:
        for port in ports:
            if not port or len(port) > IFNAMSIZ or not _NAME.match(port):
                raise ValidationError("port %r is not a valid interface name" % (port,))
            if port == name:
                raise ValidationError("bridge %s cannot be its own port" % name)
        want["ports"] = sorted(set(ports))
    if params.get("addresses") is not None:
        want["addresses"] = sorted({str(_iface(a)) for a in params["addresses"]})
    if params.get("gateway4"):
        gateway = _ip(params["gateway4"], "gateway4")
        if gateway.version != 4:
            raise ValidationError("gateway4 %r is not an IPv4 address" % params["gateway4"])
        want["gateway4"] = str(gateway)
    routes = []
    for route in params.get("routes") or []:
        if not isinstance(route, dict) or "to" not in route or "via" not in route:
            raise ValidationError("each route needs 'to' (CIDR or default) and 'via' (gateway), got %r" % (route,))
        to = "default" if route["to"] in ("default", "0.0.0.0/0") else _network(route["to"])
        entry = {"to": to, "via": str(_ip(route["via"], "route via"))}
        if route.get("metric") is not None:
            entry["metric"] = int(route["metric"])
        routes.append(entry)
    if routes:
        want["routes"] = routes
    if params.get("nameservers"):
        want["nameservers"] = [str(_ip(ns, "nameserver")) for ns in params["nameservers"]]
    for key in ("stp", "vlan_filtering", "dhcp4"):
        if params.get(key) is not None:
            want[key] = bool(params[key])
    if params.get("forward_delay") is not None:
        if not 0 <= params["forward_delay"] <= 30:
            raise ValidationError("forward_delay is in seconds, 0 to 30; got %d" % params["forward_delay"])
        want["forward_delay"] = params["forward_delay"]
    if params.get("mtu") is not None:
        if not 68 <= params["mtu"] <= 65535:
            raise ValidationError("mtu must be between 68 and 65535, got %d" % params["mtu"])
        want["mtu"] = params["mtu"]
    return want


# -- iproute2 backend: netlink ---------------------------------------------------------------------
def bridge_state(nl, name):
    """Bridge state, or None when absent; ValidationError when ``name`` exists and is not a bridge."""
    index = nl.index(name)
    if index is None:
        return None
    link = nl.link(index)
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    if kind != "bridge":
        raise ValidationError("interface %s exists and is a %s, not a bridge" % (name, kind or "plain device"))
    data = dict(info.get_attr("IFLA_INFO_DATA")["attrs"])
    ports = sorted(lk.get_attr("IFLA_IFNAME") for lk in nl.links() if lk.get_attr("IFLA_MASTER") == index)
    return {
        "name": name,
        "ports": ports,
        "addresses": nl.addresses(index),
        "routes": nl.routes(index),
        "stp": bool(data.get("IFLA_BR_STP_STATE")),
        "forward_delay": data.get("IFLA_BR_FORWARD_DELAY", 0) // USER_HZ,
        "vlan_filtering": bool(data.get("IFLA_BR_VLAN_FILTERING")),
        "mtu": link.get_attr("IFLA_MTU"),
        "up": bool(link["flags"] & 1),
    }


def port_state(nl, name):
    index = nl.index(name)
    if index is None:
        return None
    link = nl.link(index)
    return {
        "name": name,
        "index": index,
        "master": link.get_attr("IFLA_MASTER"),
        "addresses": nl.addresses(index),
        "default_routes": nl.routes(index, default_only=True),
    }


def _bridge_attrs(want):
    attrs = {}
    if "stp" in want:
        attrs["br_stp_state"] = int(want["stp"])
    if "forward_delay" in want:
        attrs["br_forward_delay"] = want["forward_delay"] * USER_HZ
    if "vlan_filtering" in want:
        attrs["br_vlan_filtering"] = int(want["vlan_filtering"])
    return attrs


def plan_iproute2(nl, want, state):
    """(before, after, steps, migrations) for the iproute2 backend."""
    before = bridge_state(nl, want["name"])
    if state == "absent":
        return before, None, [("delete", want["name"])] if before else [], []
    for key in ("dhcp4", "nameservers"):
        if want.get(key):
            raise ValidationError("%s needs the netplan backend; the iproute2 backend only sets runtime state" % key)
    ports = {}
    for port in want.get("ports", []):
        info = port_state(nl, port)
        if info is None:
            where = " in network namespace %s" % nl.netns if nl.netns else ""
            raise ValidationError("port %s does not exist%s: create it first or fix ports" % (port, where))
        ports[port] = info
    current = before or {
        "name": want["name"],
        "ports": [],
        "addresses": [],
        "routes": [],
        "stp": False,
        "forward_delay": 15,
        "vlan_filtering": False,
        "mtu": 1500,
        "up": False,
    }
    after = json.loads(json.dumps(current))
    steps = [] if before else [("create", want["name"])]
    for key in ("stp", "forward_delay", "vlan_filtering"):
        if key in want and current[key] != want[key]:
            steps.append(("set", key, want[key]))
            after[key] = want[key]
    if "mtu" in want and current["mtu"] != want["mtu"]:
        steps.append(("mtu", want["mtu"]))
        after["mtu"] = want["mtu"]
    migrations = []
    if "ports" in want:
        for port in sorted(set(want["ports"]) - set(current["ports"])):
            info = ports[port]
            if info["addresses"] or info["default_routes"]:
                migrations.append(info)
            steps.append(("enslave", port))
        for port in sorted(set(current["ports"]) - set(want["ports"])):
            steps.append(("release", port))
        after["ports"] = list(want["ports"])
    addresses = set(want.get("addresses", current["addresses"]))
    for info in migrations:
        addresses |= set(info["addresses"])
    for cidr in sorted(addresses - set(current["addresses"])):
        steps.append(("addr_add", cidr))
    if "addresses" in want:
        for cidr in sorted(set(current["addresses"]) - addresses):
            steps.append(("addr_del", cidr))
    after["addresses"] = sorted(addresses)
    if not current["up"]:
        steps.append(("up", want["name"]))
        after["up"] = True
    routes = []
    for info in migrations:
        routes.extend(info["default_routes"])
    if want.get("gateway4"):
        routes = [r for r in routes if r["to"] != "default"] + [{"to": "default", "via": want["gateway4"], "metric": None}]
    routes.extend(want.get("routes", []))
    have = {(r["to"], r["via"]) for r in current["routes"]}
    for route in routes:
        if (route["to"], route["via"]) not in have:
            steps.append(("route", route))
            after["routes"].append({"to": route["to"], "via": route["via"], "metric": route.get("metric")})
            have.add((route["to"], route["via"]))
    return before, after, steps, migrations


def execute_iproute2(nl, name, steps, migrations):
    index = nl.index(name)
    for step in steps:
        kind = step[0]
        if kind == "create":
            nl.call("creating bridge %s" % name, "link", "add", ifname=name, kind="bridge")
            index = nl.index(name)
        elif kind == "delete":
            nl.call("deleting bridge %s" % name, "link", "del", index=index)
        elif kind == "set":
            nl.call("setting %s=%s on %s" % (step[1], step[2], name), "link", "set", index=index, kind="bridge", **_bridge_attrs({step[1]: step[2]}))
        elif kind == "mtu":
            nl.call("setting mtu %d on %s" % (step[1], name), "link", "set", index=index, mtu=step[1])
        elif kind == "enslave":
            port = port_state(nl, step[1])
            for info in migrations:
                if info["name"] == step[1]:
                    for cidr in info["addresses"]:
                        nl.del_address(port["index"], cidr)
            nl.call("adding port %s to %s" % (step[1], name), "link", "set", index=port["index"], master=index)
            nl.call("bringing %s up" % step[1], "link", "set", index=port["index"], state="up")
        elif kind == "release":
            nl.call("removing port %s from %s" % (step[1], name), "link", "set", index=nl.index(step[1]), master=0)
        elif kind == "addr_add":
            nl.add_address(index, step[1])
        elif kind == "addr_del":
            nl.del_address(index, step[1])
        elif kind == "up":
            nl.call("bringing %s up" % name, "link", "set", index=index, state="up")
        elif kind == "route":
            nl.add_route(index, step[1])


def restore_iproute2(nl, before, name, migrations):
    """Put back what the bridge and its new ports had before (best effort, every step tried)."""
    errors = []

    def attempt(func, *args, **kwargs):
        try:
            func(*args, **kwargs)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            errors.append(str(exc))

    index = nl.index(name)
    if before is None and index is not None:
        attempt(nl.call, "deleting bridge %s" % name, "link", "del", index=index)
    elif before is not None:
        now = bridge_state(nl, name)
        for port in set(now["ports"]) - set(before["ports"]):
            attempt(nl.call, "releasing %s" % port, "link", "set", index=nl.index(port), master=0)
        for port in set(before["ports"]) - set(now["ports"]):
            attempt(nl.call, "re-adding %s" % port, "link", "set", index=nl.index(port), master=index)
        for cidr in set(now["addresses"]) - set(before["addresses"]):
            attempt(nl.del_address, index, cidr)
        for cidr in set(before["addresses"]) - set(now["addresses"]):
            attempt(nl.add_address, index, cidr)
        attrs = _bridge_attrs({key: before[key] for key in ("stp", "forward_delay", "vlan_filtering") if now[key] != before[key]})
        if attrs:
            attempt(nl.call, "restoring bridge settings", "link", "set", index=index, kind="bridge", **attrs)
        if now["mtu"] != before["mtu"]:
            attempt(nl.call, "restoring mtu", "link", "set", index=index, mtu=before["mtu"])
        for route in before["routes"]:
            attempt(nl.add_route, index, route)
    for info in migrations:
        port_index = nl.index(info["name"])
        if port_index is None:
            continue
        attempt(nl.call, "releasing %s" % info["name"], "link", "set", index=port_index, master=0)
        for cidr in info["addresses"]:
            attempt(nl.add_address, port_index, cidr)
        for route in info["default_routes"]:
            attempt(nl.add_route, port_index, route)
    return errors


# -- netplan backend -----------------------------------------------------------------------------
def netplan_document(want):
    bridge = {}
    if "ports" in want:
        bridge["interfaces"] = want["ports"]
    if want.get("addresses"):
        bridge["addresses"] = want["addresses"]
    bridge["dhcp4"] = bool(want.get("dhcp4", False))
    routes = []
    if want.get("gateway4"):
        routes.append({"to": "default", "via": want["gateway4"]})
    routes.extend(want.get("routes", []))
    if routes:
        bridge["routes"] = routes
    if want.get("nameservers"):
        bridge["nameservers"] = {"addresses": want["nameservers"]}
    if "mtu" in want:
        bridge["mtu"] = want["mtu"]
    parameters = {}
    if "stp" in want:
        parameters["stp"] = want["stp"]
    if "forward_delay" in want:
        parameters["forward-delay"] = want["forward_delay"]
    if parameters:
        bridge["parameters"] = parameters
    network = {"version": 2}
    if want.get("ports"):
        network["ethernets"] = {port: {"dhcp4": False, "dhcp6": False} for port in want["ports"]}
    network["bridges"] = {want["name"]: bridge}
    return {"network": network}


def netplan_text(want):
    doc = netplan_document(want)
    header = "# Managed by virtops.kvm.bridge; edits are overwritten.\n"
    if HAS_YAML:
        return header + yaml.safe_dump(doc, default_flow_style=False, sort_keys=False)
    return header + json.dumps(doc, indent=2) + "\n"


def netplan_validate(fs, runner, path, content):
    """``netplan generate`` on a private copy of /etc/netplan with the new file; returns generated files."""
    with private_tempdir(prefix="virtops-netplan-") as workdir:
        target = os.path.join(workdir, "etc/netplan")
        os.makedirs(target)
        for name in fs.listdir(NETPLAN_DIR):
            other = "%s/%s" % (NETPLAN_DIR, name)
            if name.endswith(".yaml") and other != path and not os.path.islink(fs.path(other)) and os.path.isfile(fs.path(other)):
                with open(os.path.join(target, name), "wb") as handle:
                    handle.write(encode_raw(read_raw(fs, other) or ""))
                os.chmod(os.path.join(target, name), 0o600)
        if content is not None:
            with open(os.path.join(target, os.path.basename(path)), "w", encoding="utf-8") as handle:
                handle.write(content)
            os.chmod(os.path.join(target, os.path.basename(path)), 0o600)
        try:
            runner.run(["netplan", "generate", "--root-dir", workdir], what="netplan generate")
        except CommandError as exc:
            said = (exc.stderr or exc.stdout or "").replace(workdir, "").strip()
            raise ValidationError("netplan rejected the configuration; %s was left untouched. netplan generate said: %s" % (path, said)) from exc
        generated = []
        for dirpath, _dirs, files in os.walk(os.path.join(workdir, "run")):
            generated.extend("/" + os.path.relpath(os.path.join(dirpath, f), workdir) for f in files)
        return sorted(generated)


# -- reachability ------------------------------------------------------------------------------
def gateway_reachable(runner, gateway, timeout, netns=None):
    """Ping ``gateway`` (inside ``netns``) until it answers or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    prefix = ["ip", "netns", "exec", netns] if netns else []
    while True:
        rc, _out, _err = runner.run([*prefix, "ping", "-n", "-q", "-c", "1", "-W", "1", gateway], check=False)
        if rc == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def _gateway_to_check(want, migrations, before):
    if want.get("gateway4"):
        return want["gateway4"]
    for info in migrations:
        for route in info["default_routes"]:
            return route["via"]
    for route in (before or {}).get("routes", []):
        if route["to"] == "default":
            return route["via"]
    return None


def _diff_text(state):
    if state is None:
        return ""
    return json.dumps(state, indent=2, sort_keys=True) + "\n"


# -- runners -------------------------------------------------------------------------------------
def choose_backend(fs, runner, params):
    backend = params.get("backend") or "auto"
    if backend != "auto":
        if backend == "netplan" and params.get("netns"):
            raise ValidationError("netns works with the iproute2 backend only; netplan configures the host's own namespace")
        return backend
    if params.get("netns"):
        return "iproute2"
    if runner.which("netplan") and any(n.endswith(".yaml") for n in fs.listdir(NETPLAN_DIR)):
        return "netplan"
    return "iproute2"


def ensure_iproute2(nl, runner, params, want, check_mode=False):
    state = params.get("state") or "present"
    before, after, steps, migrations = plan_iproute2(nl, want, state)
    result = {
        "changed": bool(steps),
        "backend": "iproute2",
        "before": before,
        "after": after,
        "gateway_checked": None,
        "diff": {"before": _diff_text(before), "after": _diff_text(after), "before_header": want["name"], "after_header": want["name"]},
    }
    if check_mode or not steps:
        return result
    gateway = _gateway_to_check(want, migrations, before) if state == "present" else None
    try:
        execute_iproute2(nl, want["name"], steps, migrations)
    except HostError as exc:
        errors = restore_iproute2(nl, before, want["name"], migrations)
        raise HostError(
            "%s; the previous configuration was restored%s" % (exc.msg, " (with errors: %s)" % "; ".join(errors) if errors else ""), **exc.details
        ) from exc
    if gateway:
        if not gateway_reachable(runner, gateway, params.get("rollback_timeout", 30), nl.netns):
            errors = restore_iproute2(nl, before, want["name"], migrations)
            raise HostError(
                "gateway %s did not answer within %ss after bridge %s was applied; the previous configuration was restored%s. "
                "Check gateway4, ports and addresses (with stp=true, rollback_timeout must exceed twice forward_delay)."
                % (gateway, params.get("rollback_timeout", 30), want["name"], " (with errors: %s)" % "; ".join(errors) if errors else ""),
                rolled_back=True,
                gateway=gateway,
            )
        result["gateway_checked"] = gateway
    result["after"] = bridge_state(nl, want["name"])
    result["diff"]["after"] = _diff_text(result["after"])
    return result


def _restore_netplan(fs, path, current):
    if current is None:
        fs.remove(path)
    else:
        fs.write_atomic(path, encode_raw(current), mode=0o600)
        os.chmod(fs.path(path), 0o600)


def ensure_netplan(fs, runner, params, want, *, check_mode=False, confined=None):
    """The netplan backend: write /etc/netplan/<prefix>-<name>.yaml, validated by ``netplan generate`` first."""
    confined = fs.root != "/" if confined is None else confined
    state = params.get("state") or "present"
    path = netplan_path(params.get("netplan_prefix"), want["name"])
    if not fs.inside(NETPLAN_DIR) or not fs.inside(path):
        raise ValidationError("%s below %s leads outside it through a symlink: refusing to write or remove it" % (path, fs.root))
    current = read_raw(fs, path)
    if state == "present":
        if not confined:
            for port in want.get("ports", []):
                if not fs.exists("/sys/class/net/%s" % port):
                    raise ValidationError("port %s does not exist on this host: create it first or fix ports" % port)
        wanted = netplan_text(want)
    else:
        wanted = None
    changed = current != wanted
    result = {
        "changed": changed,
        "backend": "netplan",
        "path": path,
        "before": current,
        "after": wanted,
        "generated": [],
        "commands_skipped": [],
        "gateway_checked": None,
        "diff": {"before": current or "", "after": wanted or "", "before_header": path, "after_header": path},
    }
    if not changed:
        return result
    result["generated"] = netplan_validate(fs, runner, path, wanted)
    if check_mode:
        return result
    if wanted is None:
        fs.remove(path)
    else:
        fs.write_atomic(path, encode_raw(wanted), mode=0o600)
        # atomic_move gives a new file the default permissions; netplan warns about (and may refuse) readable files
        os.chmod(fs.path(path), 0o600)
    if confined:
        result["commands_skipped"].append(["netplan", "apply"])
        return result
    runner.run(["netplan", "apply"], what="netplan apply")
    gateway = want.get("gateway4") if state == "present" else None
    if gateway:
        if not gateway_reachable(runner, gateway, params.get("rollback_timeout", 30)):
            _restore_netplan(fs, path, current)
            runner.run(["netplan", "apply"], what="netplan apply (rollback)")
            raise HostError(
                "gateway %s did not answer within %ss after netplan apply; %s was restored and applied again"
                % (gateway, params.get("rollback_timeout", 30), path),
                rolled_back=True,
                gateway=gateway,
            )
        result["gateway_checked"] = gateway
    return result


def _iproute2_netlink(backends, params):
    """``(accessor, owned)``: the run's netlink, or one inside ``netns``; refused under a fake root."""
    if backends.confined:
        raise ValidationError(
            "the iproute2 backend changes the running kernel's links, and with root=%s those are this machine's, not that tree's: "
            "nothing was planned or changed. Use backend=netplan to write the configuration below root, or run with root=/" % backends.root
        )
    nl = backends.netlink
    if params.get("netns"):
        return nl.namespace(params["netns"]), True
    return nl, False


def ensure_bridge(backends, params, check_mode):
    """The module's entry point: create, change or remove the bridge with the chosen backend."""
    fs, runner = backends.hostfs, backends.commands
    want = desired(params)
    backend = choose_backend(fs, runner, params)
    if backend == "netplan":
        if not runner.which("netplan"):
            raise HostError("the netplan backend needs the netplan command (package netplan.io)")
        if want.get("vlan_filtering"):
            raise ValidationError("vlan_filtering is not supported by the netplan backend")
        result = ensure_netplan(fs, runner, params, want, check_mode=check_mode, confined=backends.confined)
    else:
        nl, owned = _iproute2_netlink(backends, params)
        try:
            result = ensure_iproute2(nl, runner, params, want, check_mode=check_mode)
        finally:
            if owned:
                nl.close()
    result["warnings"] = []
    return result
