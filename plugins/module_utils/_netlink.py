# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The collection's one netlink accessor (pyroute2), for the host's namespace or a named one.

Modules never open netlink themselves: they take ``backends.netlink`` (see ``_runner.Backends``),
which is ``None`` under a fake ``root``, so a run confined to a tree never reads or changes the
real host's links. :func:`open_netlink` is what ``Backends`` calls; :meth:`Netlink.namespace`
gives the same accessor inside a network namespace (``/run/netns/<name>``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError

try:
    from pyroute2 import IPRoute, NetNS
    from pyroute2.netlink.exceptions import NetlinkError

    PYROUTE2_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - reported through missing_required_lib
    IPRoute = NetNS = None
    NetlinkError = OSError
    PYROUTE2_IMPORT_ERROR = traceback.format_exc()

MAIN_TABLE = 254
EOPNOTSUPP = 95
LINK_STATES = {0: "auto", 1: "enable", 2: "disable"}
_UNREPORTED = (None, -1, 0xFFFFFFFF)


def open_netlink(netns=None):
    """A :class:`Netlink` on the host's namespace (or ``netns``); HostError when pyroute2 is missing."""
    return Netlink(netns)


def _flag(value):
    """A driver's VF flag as a tri-state: ``True``/``False``, ``None`` when the driver does not report it."""
    if value in _UNREPORTED:
        return None
    return bool(value)


class Netlink:
    """Links, addresses, routes and SR-IOV VF settings over netlink."""

    def __init__(self, netns=None):
        if IPRoute is None:
            raise HostError("pyroute2 is required on the managed host for netlink (pip install pyroute2, or apt-get install python3-pyroute2)")
        self.netns = netns
        if netns:
            if not os.path.exists("/run/netns/%s" % netns):
                raise ValidationError("network namespace %r does not exist (ip netns add %s)" % (netns, netns))
            self.ipr = NetNS(netns)
        else:
            self.ipr = IPRoute()

    def namespace(self, netns):
        """A new accessor inside network namespace ``netns`` (the caller closes it)."""
        return Netlink(netns)

    def close(self):
        if self.ipr is not None:
            self.ipr.close()
            self.ipr = None

    # -- reading -----------------------------------------------------------------------------
    def index(self, name):
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def link(self, index):
        return self.ipr.get_links(index)[0]

    def links(self):
        return self.ipr.get_links()

    def addresses(self, index):
        """Global addresses of link ``index`` as sorted CIDR strings (link-local ones left out)."""
        return sorted(
            "%s/%d" % (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in self.ipr.get_addr(index=index)
            if a["scope"] == 0 and a.get_attr("IFA_ADDRESS") and not str(a.get_attr("IFA_ADDRESS")).startswith("fe80:")
        )

    def addresses_of(self, ifname):
        """:meth:`addresses` of the interface named ``ifname`` (``[]`` when it does not exist)."""
        index = self.index(ifname)
        return [] if index is None else self.addresses(index)

    def routes(self, index, default_only=False):
        """IPv4 main-table routes through a gateway out of link ``index``: ``[{to, via, metric}]``."""
        routes = []
        for route in self.ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
            if route.get_attr("RTA_OIF") != index or not route.get_attr("RTA_GATEWAY"):
                continue
            if default_only and route["dst_len"] != 0:
                continue
            to = "default" if route["dst_len"] == 0 else "%s/%d" % (route.get_attr("RTA_DST"), route["dst_len"])
            routes.append({"to": to, "via": route.get_attr("RTA_GATEWAY"), "metric": route.get_attr("RTA_PRIORITY")})
        return routes

    def default_route_ifnames(self):
        """Names of the interfaces that carry a default route (IPv4 or IPv6)."""
        names = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in self.ipr.get_default_routes(family=family):
                oif = route.get_attr("RTA_OIF")
                if oif is not None:
                    link = self.ipr.get_links(oif)
                    if link:
                        names.add(link[0].get_attr("IFLA_IFNAME"))
        return names

    def vfs(self, ifname):
        """``{index: {mac, vlan, qos, spoofchk, trust, link_state, max_tx_rate}}`` as the PF's driver reports them."""
        index = self.index(ifname)
        if index is None:
            raise HostError("network interface %s disappeared" % ifname)
        link = self.ipr.link("get", index=index, ext_mask=1)[0]
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

    # -- changing ----------------------------------------------------------------------------
    def call(self, what, method, *args, **kwargs):
        """``ipr.<method>(...)``; a netlink error becomes HostError naming ``what`` was being done."""
        try:
            return getattr(self.ipr, method)(*args, **kwargs)
        except NetlinkError as exc:
            code = getattr(exc, "code", None)
            hint = " (this kernel was built without bridge VLAN filtering)" if code == EOPNOTSUPP and "vlan" in what else ""
            raise HostError("%s failed: %s%s" % (what, exc, hint), netlink_error=code) from exc

    def add_address(self, index, cidr):
        iface = ipaddress.ip_interface(cidr)
        self.call("adding %s" % cidr, "addr", "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def del_address(self, index, cidr):
        iface = ipaddress.ip_interface(cidr)
        self.call("removing %s" % cidr, "addr", "del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def add_route(self, index, route):
        kwargs = {"dst": "0.0.0.0/0" if route["to"] == "default" else route["to"], "gateway": route["via"], "oif": index}
        if route.get("metric") is not None:
            kwargs["priority"] = route["metric"]
        self.call("route %s via %s" % (route["to"], route["via"]), "route", "replace", **kwargs)

    def set_up(self, ifname):
        """Bring ``ifname`` up (administratively; addresses untouched)."""
        self.call("link %s up" % ifname, "link", "set", index=self.index(ifname), state="up")

    def set_vf(self, ifname, vf_index, settings):
        """Apply ``settings`` (a subset of :meth:`vfs`'s keys) to VF ``vf_index`` of ``ifname``."""
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
            self.ipr.link("set", index=self.index(ifname), vf=spec)
        except Exception as exc:  # pyroute2's NetlinkError carries the kernel's errno text
            raise HostError("setting %s on VF %d of %s failed: %s" % (", ".join(sorted(settings)), vf_index, ifname, exc)) from exc
