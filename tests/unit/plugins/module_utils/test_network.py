# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import types

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._network import (
    UPDATE_ADD_LAST,
    UPDATE_DELETE,
    live_updates,
    manage_network,
    prepare_intent,
)
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


def module(check_mode=False, **kw):
    params = dict(name=NAME, xml=net_xml(), state="active", autostart=None, apply="pending", reattach=False)
    params.update(kw)
    return types.SimpleNamespace(params=params, check_mode=check_mode, _diff=True)


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
        (net_xml(), net_xml(HOST1), [(UPDATE_ADD_LAST, 4, 0)]),
        (net_xml(HOST1), net_xml(), [(UPDATE_DELETE, 4, 0)]),
        (net_xml(HOST1), net_xml(HOST1.replace(".50", ".52")), [(UPDATE_DELETE, 4, 0), (UPDATE_ADD_LAST, 4, 0)]),
        (net_xml(HOST1), net_xml(HOST1 + HOST2), [(UPDATE_ADD_LAST, 4, 0)]),
        (net_xml(extra="<dns/>"), net_xml(extra="<dns><host ip='192.168.250.9'><hostname>a</hostname></host></dns>"), [(UPDATE_ADD_LAST, 10, -1)]),
        (net_xml(), net_xml(extra="<portgroup name='pg1'/>"), [(UPDATE_ADD_LAST, 9, -1)]),
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
    first = manage_network(module(autostart=True), test_conn)
    assert first["changed"] is True
    assert first["actions"] == ["define", "start", "autostart"]
    assert first["network"]["state"] == "active"
    assert first["network"]["bridge"] == "vt-unit0"
    assert first["diff"][0]["before"] == ""
    net = test_conn.lookup_network(NAME)
    stored = read_last_applied(parse_xml(net.XMLDesc(0)))
    assert stored is not None
    assert stored.find("bridge").get("name") == "vt-unit0"
    again = manage_network(module(autostart=True), test_conn)
    assert again["changed"] is False
    assert again["pending_restart"] is False


def test_check_mode_defines_nothing(test_conn):
    result = manage_network(module(check_mode=True), test_conn)
    assert result["changed"] is True
    assert result["actions"] == ["define", "start"]
    assert test_conn.lookup_network(NAME) is None


# libvirt's test driver keeps one definition per network (no separate live and persistent XML), so
# the second runs after a live update or a pending change are checked on the real libvirtd by the
# integration target; here the first run's plan is.
def test_dhcp_host_is_added_live(test_conn):
    manage_network(module(), test_conn)
    result = manage_network(module(xml=net_xml(HOST1)), test_conn)
    assert result["actions"] == ["update-live", "define"]
    assert result["pending_restart"] is False
    assert "add ip-dhcp-host" in result["live_updates"][0]
    live = parse_xml(test_conn.lookup_network(NAME).XMLDesc(0))
    assert live.find("ip/dhcp/host").get("mac") == "52:54:00:aa:00:01"


@pytest.mark.parametrize(
    "apply, actions, pending",
    [("pending", ["define"], True), ("restart", ["define", "stop", "start"], False)],
)
def test_other_change_is_pending_or_restarts(test_conn, apply, actions, pending):
    manage_network(module(), test_conn)
    result = manage_network(module(xml=net_xml(extra="<domain name='vt.test'/>"), apply=apply), test_conn)
    assert result["actions"] == actions
    assert result["pending_restart"] is pending
    assert any("lose connectivity" in w for w in result.get("warnings", [])) is (apply == "restart")


def test_removed_from_intent_is_removed(test_conn):
    manage_network(module(xml=net_xml(extra="<domain name='vt.test'/>"), state="present"), test_conn)
    result = manage_network(module(state="present"), test_conn)
    assert result["actions"] == ["define"]
    assert parse_xml(test_conn.lookup_network(NAME).XMLDesc(0)).find("domain") is None


def test_absent_and_missing_xml(test_conn):
    with pytest.raises(ValidationError, match="no xml was given"):
        manage_network(module(xml=None), test_conn)
    manage_network(module(), test_conn)
    gone = manage_network(module(xml=None, state="absent"), test_conn)
    assert gone["actions"] == ["stop", "undefine"]
    assert test_conn.lookup_network(NAME) is None
    assert manage_network(module(xml=None, state="absent"), test_conn)["changed"] is False
