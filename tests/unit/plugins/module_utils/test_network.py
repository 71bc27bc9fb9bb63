# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LibvirtClient, libvirt
from ansible_collections.virtops.kvm.plugins.module_utils._network import (
    apply_live_updates,
    ensure_network,
    live_updates,
    prepare_intent,
)
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml, read_last_applied

NAME = "virtops-test-net-unit"
HOST1 = "<host mac='52:54:00:aa:00:01' name='g1' ip='192.168.250.50'/>"
HOST2 = "<host mac='52:54:00:aa:00:02' name='g2' ip='192.168.250.51'/>"


@pytest.fixture(autouse=True)
def _clean(test_conn):
    """test:///default is shared while any connection to it is open: leave no network behind."""
    yield
    net = test_conn.lookup_network(NAME)
    if net is not None:
        if net.isActive():
            net.destroy()
        net.undefine()


def net_xml(dhcp_extra="", extra=""):
    return (
        "<network><name>%s</name><bridge name='vt-unit0'/>%s"
        "<ip address='192.168.250.1' netmask='255.255.255.0'><dhcp><range start='192.168.250.10' end='192.168.250.20'/>%s</dhcp></ip>"
        "</network>" % (NAME, extra, dhcp_extra)
    )


class FakeCommands:
    """Records commands instead of running them."""

    def __init__(self):
        self.calls = []

    def run(self, args, **_kw):
        self.calls.append(list(args))
        return 0, "", ""


def params(**kw):
    base = dict(name=NAME, xml=net_xml(), state="active", autostart=None, apply="next_boot", reattach=False)
    base.update(kw)
    return base


def manage_network(p, client, check_mode=False, commands=None):
    return ensure_network(Backends(libvirt=client, commands=commands or FakeCommands()), p, check_mode)


@pytest.mark.parametrize(
    "xml, match",
    [
        ("<network><name>x", "not well-formed XML"),
        ("<pool type='dir'/>", "found <pool>"),
        ("<network><name>other</name></network>", "names the network 'other'"),
    ],
)
def test_bad_intent_is_refused(xml, match):
    with pytest.raises(ValidationError, match=match):
        prepare_intent(NAME, xml)


@pytest.mark.parametrize(
    "have, want, expected",
    [
        (net_xml(), net_xml(), []),
        (net_xml(), net_xml(HOST1), [("add", "ip-dhcp-host", 0)]),
        (net_xml(HOST1), net_xml(), [("delete", "ip-dhcp-host", 0)]),
        (net_xml(HOST1), net_xml(HOST1.replace(".50", ".52")), [("delete", "ip-dhcp-host", 0), ("add", "ip-dhcp-host", 0)]),
        (net_xml(HOST1), net_xml(HOST1 + HOST2), [("add", "ip-dhcp-host", 0)]),
        (net_xml(extra="<dns/>"), net_xml(extra="<dns><host ip='192.168.250.9'><hostname>a</hostname></host></dns>"), [("add", "dns-host", -1)]),
        (net_xml(), net_xml(extra="<portgroup name='pg1'/>"), [("add", "portgroup", -1)]),
        (net_xml(), net_xml(extra="<domain name='vt.test'/>"), None),
        (net_xml(), net_xml(extra="<dns><host ip='192.168.250.9'><hostname>a</hostname></host></dns>"), None),
        (net_xml(), net_xml().replace("vt-unit0", "vt-unit1"), None),
    ],
)
def test_live_updates(have, want, expected):
    updates = live_updates(parse_xml(have), parse_xml(want))
    if expected is None:
        assert updates is None
    else:
        assert [(u[0], u[1], u[2]) for u in updates] == expected


def test_define_start_then_unchanged(test_conn):
    first = manage_network(params(autostart=True), test_conn)
    assert first["changed"] is True
    assert first["actions"] == ["define", "start", "autostart"]
    assert first["network"]["state"] == "active"
    assert first["network"]["bridge"] == "vt-unit0"
    assert first["diff"][0]["before"] == ""
    net = test_conn.lookup_network(NAME)
    stored = read_last_applied(parse_xml(net.XMLDesc(0)))
    assert stored is not None
    assert stored.find("bridge").get("name") == "vt-unit0"
    again = manage_network(params(autostart=True), test_conn)
    assert again["changed"] is False
    assert again["pending_restart"] is False
    assert "diff" not in again  # nothing changed: no diff computed


def test_check_mode_defines_nothing(test_conn):
    result = manage_network(params(), test_conn, check_mode=True)
    assert result["changed"] is True
    assert result["actions"] == ["define", "start"]
    assert test_conn.lookup_network(NAME) is None


# libvirt's test driver keeps one definition per network (no separate live and persistent XML), so
# the second runs after a live update or a pending change are checked on the real libvirtd by the
# integration target; here the first run's plan is.
def test_dhcp_host_is_added_live(test_conn):
    manage_network(params(), test_conn)
    result = manage_network(params(xml=net_xml(HOST1)), test_conn)
    assert result["actions"] == ["update-live", "define"]
    assert result["pending_restart"] is False
    assert "add ip-dhcp-host" in result["live_updates"][0]
    live = parse_xml(test_conn.lookup_network(NAME).XMLDesc(0))
    assert live.find("ip/dhcp/host").get("mac") == "52:54:00:aa:00:01"


@pytest.mark.parametrize(
    "apply, actions, pending",
    [("next_boot", ["define"], True), ("restart", ["define", "stop", "start"], False)],
)
def test_other_change_is_pending_or_restarts(test_conn, apply, actions, pending):
    manage_network(params(), test_conn)
    result = manage_network(params(xml=net_xml(extra="<domain name='vt.test'/>"), apply=apply), test_conn)
    assert result["actions"] == actions
    assert result["pending_restart"] is pending
    assert any("lose connectivity" in w for w in result.get("warnings", [])) is (apply == "restart")


def test_removed_from_intent_is_removed(test_conn):
    manage_network(params(xml=net_xml(extra="<domain name='vt.test'/>"), state="present"), test_conn)
    result = manage_network(params(state="present"), test_conn)
    assert result["actions"] == ["define"]
    assert parse_xml(test_conn.lookup_network(NAME).XMLDesc(0)).find("domain") is None


def test_absent_and_missing_xml(test_conn):
    with pytest.raises(ValidationError, match="no xml was given"):
        manage_network(params(xml=None), test_conn)
    manage_network(params(), test_conn)
    gone = manage_network(params(xml=None, state="absent"), test_conn)
    assert gone["actions"] == ["stop", "undefine"]
    assert test_conn.lookup_network(NAME) is None
    assert manage_network(params(xml=None, state="absent"), test_conn)["changed"] is False


def ip_xml(ip_attrs, dhcp="", extra=""):
    return "<network><name>%s</name><ip %s>%s</ip>%s</network>" % (NAME, ip_attrs, dhcp, extra)


@pytest.mark.parametrize(
    "xml, match",
    [
        (ip_xml("address='192.168.250.300' netmask='255.255.255.0'"), "address '192.168.250.300' is not an IP address"),
        (ip_xml("address='192.168.250.1' netmask='255.0.255.0'"), "netmask '255.0.255.0' is not a netmask"),
        (ip_xml("address='192.168.250.1' prefix='40'"), "prefix '40' is not a prefix length"),
        (ip_xml("address='192.168.250.1' prefix='x'"), "prefix 'x' is not a prefix length"),
        (ip_xml("family='ipv6' address='192.168.250.1' prefix='64'"), "is not an IPv6 address"),
        (ip_xml("address='fd00::1' netmask='255.255.255.0'"), "takes prefix, not netmask"),
        (ip_xml("netmask='255.255.255.0'"), "needs an address"),
        (ip_xml("address='192.168.250.1' prefix='24'", "<dhcp><range start='192.168.251.10' end='192.168.251.20'/></dhcp>"), "is not inside the network"),
        (ip_xml("address='192.168.250.1' prefix='24'", "<dhcp><range start='192.168.250.30' end='192.168.250.20'/></dhcp>"), "is after end"),
        (ip_xml("address='192.168.250.1' prefix='24'", "<dhcp><range start='fd00::1' end='192.168.250.20'/></dhcp>"), "is not an IPv4 address"),
        (
            ip_xml("address='192.168.250.1' prefix='24'", "<dhcp><host mac='52:54:00:aa:00:01' ip='192.168.250.999'/></dhcp>"),
            "<host> 1 ip .192.168.250.999. is not an IP address",
        ),
        (ip_xml("address='192.168.250.1' prefix='24'", extra="<dns><host ip='nope'><hostname>a</hostname></host></dns>"), "<dns><host> 1 ip"),
        (ip_xml("address='192.168.250.1' prefix='24'", extra="<route address='10.0.0.0' prefix='8' gateway='fd00::1'/>"), "gateway 'fd00::1'"),
    ],
)
def test_bad_input_address_is_refused_in_check_mode_too(test_conn, xml, match):
    for check_mode in (True, False):
        with pytest.raises(ValidationError, match=match):
            manage_network(params(xml=xml), test_conn, check_mode=check_mode)
    assert test_conn.lookup_network(NAME) is None


def test_good_addresses_pass():
    root = prepare_intent(NAME, ip_xml("family='ipv6' address='fd00::1' prefix='64'", "<dhcp><range start='fd00::10' end='fd00::20'/></dhcp>"))
    assert root.find("ip").get("address") == "fd00::1"
    prepare_intent(NAME, ip_xml("address='192.168.250.1'", extra="<route address='10.0.0.0' prefix='8' gateway='192.168.250.2'/>"))


@pytest.mark.parametrize("name", ["a/b", "", " lead", "nl\n"])
def test_bad_input_name_is_refused(test_conn, name):
    for check_mode in (True, False):
        with pytest.raises(ValidationError, match=r"network name .* is not valid"):
            manage_network(params(name=name, xml=None), test_conn, check_mode=check_mode)


def test_restart_on_test_uri_runs_no_local_command(test_conn):
    """test:/// has no host behind it: reattach is not planned and no ip link runs (warned instead)."""
    manage_network(params(), test_conn)
    commands = FakeCommands()
    result = manage_network(params(xml=net_xml(extra="<domain name='vt.test'/>"), apply="restart", reattach=True), test_conn, commands=commands)
    assert result["actions"] == ["define", "stop", "start"]
    assert commands.calls == []
    assert any("not this machine's libvirtd" in w for w in result["warnings"])


# ---------------------------------------------------------------- live update rollback on the real libvirtd

SYSTEM_NAME = "virtops-test-storage-unit-net"
SYSTEM_HOST_A = "<host mac='52:54:00:ab:00:01' ip='192.168.253.50'/>"
SYSTEM_HOST_B = "<host mac='52:54:00:ab:00:02' ip='192.168.253.51'/>"
SYSTEM_HOST_C = "<host mac='52:54:00:ab:00:03' ip='192.168.253.50'/>"  # A's address: libvirt refuses it live


def system_xml(hosts):
    return (
        "<network><name>%s</name><bridge name='vt-stunit0'/><ip address='192.168.253.1' netmask='255.255.255.0'><dhcp>"
        "<range start='192.168.253.100' end='192.168.253.150'/>%s</dhcp></ip></network>" % (SYSTEM_NAME, hosts)
    )


@pytest.fixture
def system_conn():
    """The real libvirtd: test:///default keeps one definition per network and accepts any update."""
    if libvirt is None:
        pytest.skip("libvirt-python is not installed")
    try:
        client = LibvirtClient.open("qemu:///system")
    except Exception as exc:  # pylint: disable=broad-exception-caught
        pytest.skip("qemu:///system unreachable: %s" % exc)
    yield client
    net = client.lookup_network(SYSTEM_NAME)
    if net is not None:
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()
    client.close()


def _live_hosts(net):
    return sorted(h.get("mac") for h in parse_xml(net.XMLDesc(0)).findall("ip/dhcp/host"))


def test_fault_live_update_failure_rolls_back_the_applied_ones(system_conn):
    manage_network(params(name=SYSTEM_NAME, xml=system_xml(SYSTEM_HOST_A)), system_conn)
    net = system_conn.lookup_network(SYSTEM_NAME)
    definition = net.XMLDesc(1)
    wanted = params(name=SYSTEM_NAME, xml=system_xml(SYSTEM_HOST_A + SYSTEM_HOST_B + SYSTEM_HOST_C))
    planned = manage_network(wanted, system_conn, check_mode=True)
    assert planned["actions"] == ["update-live", "define"] and len(planned["live_updates"]) == 2
    with pytest.raises(LibvirtError, match=r"add ip-dhcp-host .*52:54:00:ab:00:03.*the 1 live update\(s\) already applied were rolled back"):
        manage_network(wanted, system_conn)
    assert _live_hosts(net) == ["52:54:00:ab:00:01"]  # B, applied before C failed, is gone again
    assert net.XMLDesc(1) == definition  # the definition was not changed
    fixed = params(name=SYSTEM_NAME, xml=system_xml(SYSTEM_HOST_A + SYSTEM_HOST_B))
    assert manage_network(fixed, system_conn)["changed"]
    assert _live_hosts(net) == ["52:54:00:ab:00:01", "52:54:00:ab:00:02"]
    assert not manage_network(fixed, system_conn)["changed"]


def test_fault_first_live_update_failing_changes_nothing(system_conn):
    manage_network(params(name=SYSTEM_NAME, xml=system_xml(SYSTEM_HOST_A)), system_conn)
    net = system_conn.lookup_network(SYSTEM_NAME)
    with pytest.raises(LibvirtError, match="no live update was applied"):
        apply_live_updates(system_conn, net, SYSTEM_NAME, live_updates(parse_xml(net.XMLDesc(0)), parse_xml(system_xml(SYSTEM_HOST_A + SYSTEM_HOST_C))))
    assert _live_hosts(net) == ["52:54:00:ab:00:01"]
