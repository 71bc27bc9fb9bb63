# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain_info logic against libvirt's test:///default driver and real XML."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._domain_info import (
    disks_of,
    firmware_of,
    gather_domains,
    interfaces_of,
)
from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml

STOPPED = "virtops-test-domain-info-stopped"


@pytest.fixture
def stopped_guest(test_conn):
    xml = "<domain type='test'><name>%s</name><memory unit='MiB'>192</memory><vcpu current='1'>2</vcpu><os><type>hvm</type></os></domain>" % STOPPED
    dom = test_conn.conn.defineXML(xml)
    yield dom
    dom.undefine()


def test_all_guests_sorted_with_facts(test_conn, stopped_guest):
    guests = gather_domains(test_conn)
    names = [g["name"] for g in guests]
    assert names == sorted(names) and {"test", STOPPED} <= set(names)
    test = next(g for g in guests if g["name"] == "test")
    assert test["state"] == "running" and test["persistent"]
    assert test["disks"][0]["target"] == "vda" and test["interfaces"][0]["mac"] == "aa:bb:cc:dd:ee:ff"
    assert "xml" not in test and "ip_errors" not in test
    stopped = next(g for g in guests if g["name"] == STOPPED)
    assert stopped["state"] == "shutoff"
    assert stopped["vcpus"] == {"current": 1, "maximum": 2}
    assert stopped["memory"]["maximum_kib"] == 196608


@pytest.mark.parametrize("states,expected", [(["running"], ["test"]), (["shutoff"], [STOPPED]), (["paused"], []), (["running", "shutoff"], ["test", STOPPED])])
def test_state_filter(test_conn, stopped_guest, states, expected):
    # test:///default is shared by the process: look only at the guests this test knows
    assert [g["name"] for g in gather_domains(test_conn, states=states) if g["name"] in ("test", STOPPED)] == expected


def test_one_guest_with_xml_and_addresses(test_conn):
    (guest,) = gather_domains(test_conn, name="test", ip_sources=["lease", "arp"], include_xml=True)
    assert guest["xml"].startswith("<domain")
    assert {a["source"] for a in guest["interfaces"][0]["addresses"]} == {"lease", "arp"}
    assert guest["ip_errors"] == {}


def test_stopped_guest_has_no_addresses(test_conn, stopped_guest):
    (guest,) = gather_domains(test_conn, name=STOPPED, ip_sources=["agent"])
    assert guest["ip_errors"] == {} and guest["interfaces"] == []


def test_unknown_guest_fails(test_conn):
    with pytest.raises(ValidationError, match="virtops-test-domain-info-missing does not exist"):
        gather_domains(test_conn, name="virtops-test-domain-info-missing")


@pytest.mark.parametrize(
    "os_xml,expected",
    [
        ("<os firmware='efi'><type>hvm</type></os>", "efi"),
        ("<os><type>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader></os>", "efi"),
        ("<os><type>hvm</type></os>", "bios"),
        ("", None),
    ],
)
def test_firmware(os_xml, expected):
    assert firmware_of(parse_xml("<domain>%s</domain>" % os_xml)) == expected


@pytest.mark.parametrize(
    "disk,expected",
    [
        (
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/a.qcow2'/><target dev='vda' bus='virtio'/></disk>",
            dict(target="vda", bus="virtio", source="/a.qcow2", format="qcow2", type="file", device="disk", readonly=False),
        ),
        (
            "<disk type='volume' device='disk'><source pool='p' volume='v'/><target dev='vdb'/></disk>",
            dict(target="vdb", bus=None, source="p/v", format=None, type="volume", device="disk", readonly=False),
        ),
        (
            "<disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>",
            dict(target="sda", bus="sata", source=None, format=None, type="file", device="cdrom", readonly=True),
        ),
    ],
)
def test_disks_of(disk, expected):
    assert disks_of(parse_xml("<domain><devices>%s</devices></domain>" % disk)) == [expected]


@pytest.mark.parametrize(
    "iface,expected",
    [
        (
            "<interface type='network'><mac address='52:54:00:AA:00:01'/><source network='default'/><model type='virtio'/></interface>",
            dict(mac="52:54:00:aa:00:01", type="network", source="default", model="virtio", target=None),
        ),
        (
            "<interface type='bridge'><source bridge='br0'/><target dev='vnet3'/></interface>",
            dict(mac=None, type="bridge", source="br0", model=None, target="vnet3"),
        ),
        ("<interface type='user'/>", dict(mac=None, type="user", source=None, model=None, target=None)),
    ],
)
def test_interfaces_of(iface, expected):
    assert interfaces_of(parse_xml("<domain><devices>%s</devices></domain>" % iface)) == [expected]
