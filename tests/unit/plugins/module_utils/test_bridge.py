# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""bridge: request validation, netplan rendering with the real netplan, iproute2 in a real namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _bridge as br
from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError, HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS
from ansible_collections.virtops.kvm.plugins.module_utils._netlink import IPRoute, Netlink
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends


class Runner:
    """The CommandRunner contract over subprocess."""

    def __init__(self):
        self.calls = []

    def which(self, name, required=False):
        return shutil.which(name)

    def run(self, args, check=True, what=None):
        self.calls.append(list(args))
        proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
        if check and proc.returncode:
            raise CommandError("%s failed" % (what or args[0]), cmd=list(args), rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
        return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "params, message",
    [
        ({"name": "br-name-too-long0"}, "at most 15 characters"),
        ({"name": "br 0"}, "not a valid interface name"),
        ({"name": "br0", "ports": ["br0"]}, "cannot be its own port"),
        ({"name": "br0", "addresses": ["10.0.0.1"]}, "no prefix length"),
        ({"name": "br0", "addresses": ["10.0.0.300/24"]}, "not a valid CIDR"),
        ({"name": "br0", "gateway4": "2001:db8::1"}, "not an IPv4 address"),
        ({"name": "br0", "forward_delay": 31}, "0 to 30"),
        ({"name": "br0", "mtu": 20}, "between 68 and 65535"),
        ({"name": "br0", "routes": [{"to": "10.1.0.0/16"}]}, "needs 'to'"),
        ({"name": "br0", "routes": [{"to": "10.1.0.0/33", "via": "10.0.0.1"}]}, "is not a network"),
        ({"name": "br0", "routes": [{"to": "not-a-net", "via": "10.0.0.1"}]}, "is not a network"),
    ],
)
def test_bad_input(params, message):
    with pytest.raises(ValidationError) as err:
        br.desired(params)
    assert message in err.value.msg


def test_desired_normalises():
    want = br.desired(
        {
            "name": "br0",
            "ports": ["b", "a", "a"],
            "addresses": ["10.0.0.1/24"],
            "gateway4": "10.0.0.254",
            "routes": [{"to": "10.1.2.3/16", "via": "10.0.0.9", "metric": None}],
            "stp": False,
        }
    )
    assert want == {
        "name": "br0",
        "ports": ["a", "b"],
        "addresses": ["10.0.0.1/24"],
        "gateway4": "10.0.0.254",
        "routes": [{"to": "10.1.0.0/16", "via": "10.0.0.9"}],
        "stp": False,
    }


def test_netplan_document():
    doc = br.netplan_document(
        br.desired(
            {
                "name": "br0",
                "ports": ["eno1"],
                "addresses": ["192.0.2.10/24"],
                "gateway4": "192.0.2.1",
                "nameservers": ["192.0.2.53"],
                "stp": True,
                "forward_delay": 4,
                "mtu": 9000,
            }
        )
    )
    assert doc == {
        "network": {
            "version": 2,
            "ethernets": {"eno1": {"dhcp4": False, "dhcp6": False}},
            "bridges": {
                "br0": {
                    "interfaces": ["eno1"],
                    "addresses": ["192.0.2.10/24"],
                    "dhcp4": False,
                    "routes": [{"to": "default", "via": "192.0.2.1"}],
                    "nameservers": {"addresses": ["192.0.2.53"]},
                    "mtu": 9000,
                    "parameters": {"stp": True, "forward-delay": 4},
                }
            },
        }
    }


@pytest.fixture
def netplan_root(tmp_path):
    if not shutil.which("netplan"):
        pytest.skip("needs netplan (package netplan.io)")
    (tmp_path / "etc/netplan").mkdir(parents=True)
    return HostFS(str(tmp_path))


def test_netplan_write_validate_idempotent(netplan_root):
    params = {"name": "vtbr-u", "ports": ["vtb-eth9"], "addresses": ["192.0.2.10/24"], "state": "present"}
    want = br.desired(params)
    checked = br.ensure_netplan(netplan_root, Runner(), params, want, check_mode=True)
    assert checked["changed"] is True
    assert not netplan_root.exists("/etc/netplan/60-virtops-vtbr-u.yaml")
    first = br.ensure_netplan(netplan_root, Runner(), params, want)
    assert first["diff"] == checked["diff"]
    assert any("vtbr-u" in path for path in first["generated"])
    assert first["commands_skipped"] == [["netplan", "apply"]]
    assert oct(os.stat(netplan_root.path("/etc/netplan/60-virtops-vtbr-u.yaml")).st_mode & 0o777) == "0o600"
    assert br.ensure_netplan(netplan_root, Runner(), params, want)["changed"] is False


def test_netplan_rejection_leaves_the_file_alone(netplan_root):
    with open(netplan_root.path("/etc/netplan/01-base.yaml"), "w", encoding="utf-8") as handle:
        handle.write("network:\n  version: 2\n  bridges:\n    vtb-taken: {dhcp4: false}\n")
    params = {"name": "vtbr-u", "ports": ["vtb-taken"], "state": "present"}
    with pytest.raises(ValidationError) as err:
        br.ensure_netplan(netplan_root, Runner(), params, br.desired(params))
    assert "netplan generate said" in err.value.msg
    assert not netplan_root.exists("/etc/netplan/60-virtops-vtbr-u.yaml")


@pytest.fixture
def netns():
    if os.geteuid() != 0 or not shutil.which("ip") or IPRoute is None:
        pytest.skip("needs root, ip and pyroute2 to create a network namespace")
    name = "virtops-test-br-u%s" % uuid.uuid4().hex[:6]
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "add", "vtb-a", "type", "veth", "peer", "name", "vtb-b"], check=True)
    nl = Netlink(name)
    yield nl
    nl.close()
    subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.mark.parametrize(
    "params, key, value",
    [
        ({"name": "vtbr-u", "ports": ["vtb-a"]}, "ports", ["vtb-a"]),
        ({"name": "vtbr-u", "mtu": 1400}, "mtu", 1400),
        ({"name": "vtbr-u", "stp": True, "forward_delay": 5}, "forward_delay", 5),
        ({"name": "vtbr-u", "addresses": ["10.9.0.1/24"]}, "addresses", ["10.9.0.1/24"]),
    ],
)
def test_iproute2_in_a_namespace(netns, params, key, value):
    params = dict(params, netns=netns.netns, state="present")
    want = br.desired(params)
    checked = br.ensure_iproute2(netns, Runner(), params, want, check_mode=True)
    assert br.bridge_state(netns, "vtbr-u") is None
    first = br.ensure_iproute2(netns, Runner(), params, want)
    assert first["changed"] is checked["changed"] is True
    assert first["after"][key] == checked["after"][key] == value
    assert br.bridge_state(netns, "vtbr-u")[key] == value
    assert br.ensure_iproute2(netns, Runner(), params, want)["changed"] is False
    gone = br.ensure_iproute2(netns, Runner(), {"state": "absent"}, want)
    assert gone["changed"] is True
    assert br.bridge_state(netns, "vtbr-u") is None


def test_iproute2_missing_port(netns):
    params = {"name": "vtbr-u", "ports": ["vtb-none"], "state": "present"}
    with pytest.raises(ValidationError, match="port vtb-none does not exist in network namespace"):
        br.ensure_iproute2(netns, Runner(), params, br.desired(params))
    assert br.bridge_state(netns, "vtbr-u") is None


def test_iproute2_dhcp_needs_netplan(netns):
    params = {"name": "vtbr-u", "dhcp4": True, "state": "present"}
    with pytest.raises(ValidationError, match="netplan backend"):
        br.ensure_iproute2(netns, Runner(), params, br.desired(params))


def test_netlink_needs_an_existing_namespace():
    if IPRoute is None:
        pytest.skip("needs pyroute2")
    with pytest.raises((ValidationError, HostError), match="does not exist"):
        Netlink("virtops-test-br-nonexistent")


# -- issue 11 item 10: a fake root confines the run ------------------------------------------------
class NoCommands:
    """A command runner that fails the test if anything runs (which() may look, nothing may run)."""

    def which(self, name, required=False):
        del name, required

    def run(self, args, **_kwargs):
        raise AssertionError("a command ran under a fake root: %r" % (args,))


@pytest.mark.parametrize("check_mode", [True, False])
def test_fault_iproute2_under_a_fake_root_is_refused_without_netlink(tmp_path, check_mode):
    backends = Backends(hostfs=HostFS(str(tmp_path)), commands=NoCommands(), root=str(tmp_path))
    assert backends.netlink is None
    params = {"name": "vtbr-f", "ports": ["eth0"], "backend": "iproute2", "state": "present"}
    with pytest.raises(ValidationError) as err:
        br.ensure_bridge(backends, params, check_mode)
    assert "iproute2 backend" in err.value.msg and "nothing was planned or changed" in err.value.msg


@pytest.mark.parametrize("prefix", ["../../tmp/x", "../x", "a/b", "..", "", " 60", "60\n"])
def test_bad_input_netplan_prefix_cannot_leave_etc_netplan(tmp_path, prefix):
    fs = HostFS(str(tmp_path))
    os.makedirs(fs.path("/etc/netplan"))
    params = {"name": "vtbr-p", "backend": "netplan", "netplan_prefix": prefix, "state": "absent"}
    with pytest.raises(ValidationError, match="netplan_prefix"):
        br.ensure_netplan(fs, NoCommands(), params, br.desired(params))
    assert sorted(os.listdir(tmp_path)) == ["etc"]


def test_bad_input_netplan_dir_symlinked_out_of_root_is_refused(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "60-virtops-vtbr-p.yaml").write_text("precious\n")
    (root / "etc").mkdir()
    (root / "etc/netplan").symlink_to(outside)
    params = {"name": "vtbr-p", "backend": "netplan", "state": "absent"}
    with pytest.raises(ValidationError, match="leads outside"):
        br.ensure_netplan(HostFS(str(root)), NoCommands(), params, br.desired(params))
    assert (outside / "60-virtops-vtbr-p.yaml").read_text() == "precious\n"
