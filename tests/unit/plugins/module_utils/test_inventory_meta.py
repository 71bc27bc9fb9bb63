# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The inventory metadata format and address selection."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._inventory_meta import (
    NAMESPACE,
    domain_port_forwards,
    forward_endpoint,
    inventory_element,
    parse_inventory_text,
    pick_interface_address,
    render_inventory,
    select_address,
    usable_address,
)
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml

AGREED = (
    '<inv:inventory xmlns:inv="https://virtops.dev/kvm/inventory/1"><inv:group name="kvm_guests"/>'
    '<inv:var name="ansible_user">"debian"</inv:var><inv:port-forward host="2222" guest="22" address="127.0.0.1"/></inv:inventory>'
)


def test_agreed_format_parses():
    meta = parse_inventory_text(AGREED)
    assert meta == dict(groups=["kvm_guests"], vars={"ansible_user": "debian"}, port_forwards=[dict(host=2222, guest=22, address="127.0.0.1")], warnings=[])


def test_render_round_trips_and_bare_form_has_no_namespace():
    text = render_inventory(["kvm_guests"], {"ansible_user": "debian", "n": [1, 2]}, [dict(host=2222, guest=22, address="127.0.0.1")])
    assert NAMESPACE in text
    meta = parse_inventory_text(text)
    assert meta["vars"] == {"ansible_user": "debian", "n": [1, 2]}
    assert meta["groups"] == ["kvm_guests"]
    bare = render_inventory(["g"], namespaced=False)
    assert "xmlns" not in bare
    assert parse_inventory_text(bare)["groups"] == ["g"]


@pytest.mark.parametrize(
    ("child", "warning"),
    [
        ('<inv:var name="x">debian</inv:var>', "not valid JSON"),
        ('<inv:var name="x"></inv:var>', "not valid JSON"),
        ('<inv:var name="1x">1</inv:var>', "not a valid variable name"),
        ('<inv:var name="class">1</inv:var>', "not a valid variable name"),
        ('<inv:group name=" "/>', "without a name"),
        ('<inv:port-forward host="x" guest="22"/>', "not a port number"),
        ('<inv:port-forward host="70000" guest="22"/>', "outside 1-65535"),
    ],
)
def test_bad_entries_are_skipped_with_a_warning(child, warning):
    meta = parse_inventory_text('<inv:inventory xmlns:inv="%s">%s<inv:group name="ok"/></inv:inventory>' % (NAMESPACE, child))
    assert meta["groups"] == ["ok"]
    assert meta["vars"] == {}
    assert meta["port_forwards"] == []
    assert len(meta["warnings"]) == 1
    assert warning in meta["warnings"][0]


def test_other_root_is_refused():
    with pytest.raises(ValidationError, match="not <inv:inventory"):
        parse_inventory_text("<other/>")


def test_inventory_element_only_in_the_namespace():
    dom = parse_xml("<domain><metadata><x:inventory xmlns:x='urn:other'/>%s</metadata></domain>" % AGREED)
    assert inventory_element(dom).tag == "{%s}inventory" % NAMESPACE
    assert inventory_element(parse_xml("<domain/>")) is None


def test_domain_port_forwards_ranges():
    dom = parse_xml(
        "<domain><devices>"
        "<interface type='user'><portForward proto='tcp' address='127.0.0.1'><range start='2222' to='22'/></portForward>"
        "<portForward proto='udp'><range start='3000' to='22'/></portForward>"
        "<portForward proto='tcp'><range start='5000' end='5010' to='20'/><range start='5002' exclude='yes'/></portForward></interface>"
        "<interface type='network'><portForward proto='tcp'><range start='9' to='22'/></portForward></interface>"
        "</devices></domain>"
    )
    assert domain_port_forwards(dom, 22) == [dict(host=2222, guest=22, address="127.0.0.1")]
    assert domain_port_forwards(dom, 25) == [dict(host=5005, guest=25, address="")]


@pytest.mark.parametrize(
    ("address", "remote", "expected"),
    [
        ("127.0.0.1", None, ("127.0.0.1", 2222)),
        ("", None, ("127.0.0.1", 2222)),
        ("0.0.0.0", "hv1", ("hv1", 2222)),
        ("::", None, ("::1", 2222)),
        ("127.0.0.1", "hv1", None),
        ("192.0.2.7", "hv1", ("192.0.2.7", 2222)),
    ],
)
def test_forward_endpoint(address, remote, expected):
    assert forward_endpoint(dict(host=2222, guest=22, address=address), remote) == expected


@pytest.mark.parametrize(
    ("address", "usable"),
    [
        ("192.168.122.3", True),
        ("2001:db8::1", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("169.254.1.1", False),
        ("fe80::1%eth0", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("nonsense", False),
    ],
)
def test_usable_address(address, usable):
    assert usable_address(address) is usable


def test_pick_prefers_ipv4_and_skips_guest_internal_addresses():
    answer = {
        "lo": {"addrs": [{"addr": "127.0.0.1", "type": 0}, {"addr": "::1", "type": 1}]},
        "eth0": {"addrs": [{"addr": "fe80::5054:ff:fe00:1", "type": 1}, {"addr": "2001:db8::5", "type": 1}, {"addr": "10.0.0.5", "type": 0}]},
    }
    assert pick_interface_address(answer) == "10.0.0.5"
    assert pick_interface_address({"eth0": {"addrs": [{"addr": "2001:db8::5"}]}}) == "2001:db8::5"
    assert pick_interface_address({"lo": {"addrs": [{"addr": "127.0.0.1"}]}}) is None
    assert pick_interface_address(None) is None


def test_select_address_order_and_laziness():
    asked = []

    def finder(name, answer):
        def find():
            asked.append(name)
            if isinstance(answer, Exception):
                raise answer
            return answer

        return find

    finders = dict(
        port_forward=finder("port_forward", None),
        lease=finder("lease", LibvirtError("no lease")),
        arp=finder("arp", ("10.0.0.9", None)),
        agent=finder("agent", ("10.0.0.1", None)),
    )
    result, source, errors = select_address(["port_forward", "lease", "arp", "agent"], finders)
    assert result == {"ansible_host": "10.0.0.9"}
    assert source == "arp"
    assert errors == {"lease": "no lease"}
    assert asked == ["port_forward", "lease", "arp"]
    assert select_address(["port_forward"], finders)[:2] == ({}, None)
    finders["port_forward"] = finder("port_forward", ("127.0.0.1", 2222))
    assert select_address(["lease", "port_forward"], finders)[0] == {"ansible_host": "127.0.0.1", "ansible_port": 2222}
