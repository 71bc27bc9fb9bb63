# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The virtops.kvm.libvirt inventory plugin against libvirt's test driver."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from ansible.errors import AnsibleParserError

from ansible_collections.virtops.kvm.plugins.inventory.libvirt import (
    check_config,
    list_guests,
    merge_guests,
    read_guest,
    uri_host,
)
from ansible_collections.virtops.kvm.plugins.module_utils._inventory_meta import render_inventory

COLLECTIONS = pathlib.Path(__file__).resolve().parents[6]
OPTIONS = dict(
    uris=["test:///default"],
    read_only=True,
    address_sources=["port_forward", "lease", "arp"],
    guest_port=22,
    include_inactive=True,
    filters={},
    strict_connect=False,
)
META = render_inventory(["kvm_guests", "web"], {"ansible_user": "debian"}, [dict(host=2222, guest=22, address="127.0.0.1")])
NODE = """<node>
<domain type='test'><name>virtops-test-inv-meta</name><memory>65536</memory><os><type>hvm</type></os>
<metadata>%s</metadata>
<devices/></domain>
<domain type='test'><name>virtops-test-inv-bad</name><memory>65536</memory><os><type>hvm</type></os>
<metadata><inv:inventory xmlns:inv='https://virtops.dev/kvm/inventory/1'><inv:var name='ansible_user'>debian</inv:var></inv:inventory></metadata>
<devices/></domain>
</node>
"""


def plain(value):
    """A value of ``ansible-inventory --list`` without its unsafe marker."""
    return value["__ansible_unsafe"] if isinstance(value, dict) and "__ansible_unsafe" in value else value


def config(**changes):
    return check_config(dict(OPTIONS, **changes))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(uris=[]), "at least one libvirt URI"),
        (dict(address_sources=["agent"]), "read-only connection"),
        (dict(address_sources=["lease", "lease"]), "twice"),
        (dict(address_sources=["dns"]), "the sources are"),
        (dict(filters={"name": ["x"]}), "unknown keys name"),
        (dict(filters={"names": "x*"}), "must be a list"),
        (dict(filters={"states": ["sleeping"]}), "filters.states has sleeping"),
        (dict(guest_port=0), "not a port number"),
    ],
)
def test_bad_config_is_refused(changes, message):
    with pytest.raises(AnsibleParserError, match=message):
        config(**changes)


def test_agent_with_a_read_write_connection_is_accepted():
    assert config(address_sources=["agent"], read_only=False)["address_sources"] == ["agent"]


@pytest.mark.parametrize(
    ("uri", "host"),
    [
        ("qemu:///system", None),
        ("test:///default", None),
        ("qemu+ssh://root@hv1:2222/system", "hv1"),
        ("qemu+tls://hv2/system", "hv2"),
        ("qemu+ssh://localhost/system", None),
        ("qemu+tcp://[::1]/system", None),
    ],
)
def test_uri_host(uri, host):
    assert uri_host(uri) == host


def test_default_guest_of_the_test_driver(test_conn):
    guests, warnings = list_guests(config())
    assert warnings == []
    assert [g["name"] for g in guests] == ["test"]
    guest = guests[0]
    assert guest["state"] == "running"
    assert guest["hypervisor"] == test_conn.conn.getHostname()
    assert guest["address"] == {"ansible_host": "192.168.122.3"}
    assert guest["address_source"] == "lease"
    assert json.loads(json.dumps(guests)) == guests  # what the cache stores


def test_metadata_filters_and_port_forward(test_conn):
    xml = "<domain type='test'><name>virtops-test-inv-a</name><memory>65536</memory><os><type>hvm</type></os><metadata>%s</metadata></domain>" % META
    dom = test_conn.conn.defineXML(xml)
    guest, warnings = read_guest(dom, "test:///default", "hv", config())
    assert warnings == []
    assert guest["state"] == "shut_off"
    assert guest["groups"] == ["kvm_guests", "web"]
    assert guest["vars"] == {"ansible_user": "debian"}
    assert guest["address"] == {"ansible_host": "127.0.0.1", "ansible_port": 2222}
    assert guest["address_source"] == "port_forward"
    # filters
    assert read_guest(dom, "test:///default", "hv", config(filters={"states": ["running"]}))[0] is None
    assert read_guest(dom, "test:///default", "hv", config(filters={"exclude_names": ["virtops-test-inv-*"]}))[0] is None
    assert read_guest(dom, "test:///default", "hv", config(filters={"names": ["*-inv-a"]}))[0]["name"] == "virtops-test-inv-a"
    # an inactive guest asks no interface source
    assert read_guest(dom, "test:///default", "hv", config(address_sources=["lease", "arp"]))[0]["address"] == {}


def test_unreachable_hypervisor_warns_or_fails(test_conn):
    guests, warnings = list_guests(config(uris=["qemu+tcp://127.0.0.1:1/system", "test:///default"]))
    assert [g["name"] for g in guests] == ["test"]
    assert len(warnings) == 1
    assert "qemu+tcp://127.0.0.1:1/system cannot be reached" in warnings[0]
    with pytest.raises(AnsibleParserError, match=r"127\.0\.0\.1:1/system.*strict_connect"):
        list_guests(config(uris=["test:///default", "qemu+tcp://127.0.0.1:1/system"], strict_connect=True))


def test_merge_keeps_the_active_copy_and_warns_on_clashes():
    def guest(name, uuid, hv, state):
        return dict(name=name, uuid=uuid, hypervisor=hv, state=state, active=state != "shut_off")

    merged, warnings = merge_guests(
        [guest("a", "u1", "hv1", "shut_off"), guest("a", "u1", "hv2", "running"), guest("b", "u2", "hv1", "running"), guest("b", "u3", "hv2", "running")]
    )
    assert [(g["name"], g["hypervisor"]) for g in merged] == [("a", "hv2"), ("b", "hv1")]
    assert len(warnings) == 1
    assert "different guests with one name" in warnings[0]


@pytest.mark.skipif(
    shutil.which("ansible-inventory") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ansible-inventory")),
    reason="ansible-inventory is not installed",
)
def test_ansible_inventory_end_to_end(tmp_path, test_conn):
    node = tmp_path / "node.xml"
    node.write_text(NODE % META)
    source = tmp_path / "guests.libvirt.yml"
    source.write_text(
        "plugin: virtops.kvm.libvirt\nuris: ['test://%s']\nkeyed_groups:\n  - key: ansible_user\n    prefix: user\n"
        "compose:\n  login: ansible_user | default('nobody')\n" % node
    )
    exe = os.path.join(os.path.dirname(sys.executable), "ansible-inventory")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS.parent), ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="true")
    proc = subprocess.run([exe, "-i", str(source), "--list"], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    hostvars = {host: {key: plain(value) for key, value in hv.items()} for host, hv in listing["_meta"]["hostvars"].items()}
    assert sorted(hostvars) == ["virtops-test-inv-bad", "virtops-test-inv-meta"]
    meta = hostvars["virtops-test-inv-meta"]
    assert meta["ansible_host"] == "127.0.0.1"
    assert meta["ansible_port"] == 2222
    assert meta["ansible_user"] == "debian"
    assert meta["libvirt_state"] == "running"
    assert "virtops-test-inv-meta" in listing["kvm_guests"]["hosts"]
    assert "virtops-test-inv-meta" in listing["web"]["hosts"]
    assert "virtops-test-inv-meta" in listing["user_debian"]["hosts"]
    assert sorted(listing["running"]["hosts"]) == ["virtops-test-inv-bad", "virtops-test-inv-meta"]
    assert meta["login"] == "debian"
    assert hostvars["virtops-test-inv-bad"]["login"] == "nobody"
    assert "ansible_user" not in hostvars["virtops-test-inv-bad"]
    assert "ansible_user is not valid JSON" in proc.stderr.replace("\n", " ")
