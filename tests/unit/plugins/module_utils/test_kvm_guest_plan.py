# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kvm_guest role's plan in Python: the decisions tests/unit/roles does not reach through a play.

tests/unit/roles/test_kvm_guest_templates.py runs the same code through ansible-playbook, as the role
calls it; the kvm_guest_role integration target and the molecule scenario run it on a real libvirtd.
"""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._kvm_guest_plan import plan_fleet, user_backend

HOST = {
    "libvirt": {
        "libvirt_version": "9.0.0",
        "guests": {"x86_64": {"machines": ["pc-q35-7.2"], "machine_aliases": {"q35": "pc-q35-7.2"}, "domain_types": ["qemu"]}},
        "networks": [{"name": "default", "active": True}],
        "pools": [{"name": "default", "active": True}],
    },
    "hugepages": {"pools": {"2048kB": {"total": 64, "free": 40}}},
    "sriov": {"devices": []},
    "domains": [],
}
SETTINGS = {"domain_type": "qemu"}


def plan(entries, host=None, **kw):
    return plan_fleet(entries, settings=dict(SETTINGS, **kw.pop("settings", {})), host=host or HOST, **kw)


def test_a_bare_entry_gets_every_default():
    guest = plan([{"name": "g"}])["guests"][0]
    assert (guest["state"], guest["machine"], guest["memory_mib"], guest["vcpus"], guest["firmware"]) == ("running", "q35", 1024, 1, "bios")
    assert guest["root_volume"] is None and guest["seed_volume"] is None and guest["image"] is None
    assert guest["wait_for"] == "none" and guest["groups"] == ["kvm_guests"] and guest["vars"] == {"ansible_user": "debian"}
    assert guest["user_data"]["users"][0]["lock_passwd"] is True and "passwd" not in guest["user_data"]["users"][0]


def test_numbers_given_as_strings_are_numbers_and_empty_values_take_the_default():
    guest = plan([{"name": "g", "memory_mib": "512", "vcpus": "2", "machine": "", "state": None}])["guests"][0]
    assert (guest["memory_mib"], guest["vcpus"], guest["machine"], guest["state"]) == (512, 2, "q35", "running")


@pytest.mark.parametrize(
    "version, backend, kind",
    [("9.0.0", "auto", "slirp"), ("10.0.0", "auto", "passt"), ("10.10.0", "auto", "passt"), ("9.0.0", "passt", "passt"), ("11.0.0", "slirp", "slirp")],
)
def test_user_networking_backend_follows_libvirt(version, backend, kind):
    host = dict(HOST, libvirt=dict(HOST["libvirt"], libvirt_version=version))
    assert user_backend({"user_backend": backend}, host) == kind
    nic = plan([{"name": "g", "interfaces": [{"user": {}}]}], host=host, settings={"user_backend": backend})["guests"][0]["interfaces"][0]
    assert nic["kind"] == kind
    # slirp has no MAC of libvirt's that survives a redefinition: one derived from the name and the NIC's place
    assert (nic["mac"] is not None) == (kind == "slirp")


def test_slirp_mac_is_stable_and_differs_per_guest_and_interface():
    entries = [{"name": "a", "interfaces": [{"user": {}}, {"user": {}}]}, {"name": "b", "interfaces": [{"user": {}}]}]
    macs = [n["mac"] for g in plan(entries)["guests"] for n in g["interfaces"]]
    again = [n["mac"] for g in plan(entries)["guests"] for n in g["interfaces"]]
    assert macs == again and len(set(macs)) == 3 and all(mac.startswith("52:54:00:") for mac in macs)


def test_empty_hugepages_means_2m_pages_and_an_unknown_size_is_refused():
    result = plan([{"name": "h", "memory_mib": 64, "hugepages": {}}, {"name": "x", "hugepages": {"size": "4M"}}])
    h = result["guests"][0]
    assert (h["hugepages_size"], h["hugepages_kib"], h["hugepages_pages"]) == ("2M", 2048, 32)
    assert result["errors"] == ["guest x: hugepages size must be 2M or 1G, got 4M"]


def test_more_disks_than_virtio_targets_is_refused():
    result = plan([{"name": "g", "disks": [{"size_gib": 1}] * 26}])
    assert [d["target"] for d in result["guests"][0]["disks"]][-2:] == ["vdz", None]
    assert result["errors"] == ["guest g: at most 25 disks (vdb to vdz), got 26"]


def test_repeated_names_and_ports_are_named_once_in_list_order():
    forward = [{"user": {"port_forwards": [{"host": 2222, "guest": 22}]}}]
    entries = [{"name": "b", "interfaces": forward}, {"name": "a"}, {"name": "a", "interfaces": forward}, {"name": "b"}]
    errors = plan(entries)["errors"]
    assert errors == [
        "guest b is listed more than once in kvm_guest_list",
        "guest a is listed more than once in kvm_guest_list",
        "host port 2222 is forwarded by more than one guest interface",
    ]


def test_a_guest_libvirt_has_keeps_its_state_in_the_plan_and_check_mode_reaches_only_running_ones():
    host = dict(HOST, domains=[{"name": "up", "state": "running", "xml": "<domain/>"}, {"name": "down", "state": "shutoff", "xml": "<domain/>"}])
    real = {g["name"]: g for g in plan([{"name": "up"}, {"name": "down"}, {"name": "new"}], host=host)["guests"]}
    check = {g["name"]: g for g in plan([{"name": "up"}, {"name": "down"}, {"name": "new"}], host=host, check_mode=True)["guests"]}
    assert [real[n]["exists"] for n in ("up", "down", "new")] == [True, True, False]
    assert [real[n]["reachable"] for n in ("up", "down", "new")] == [True, True, True]
    assert [check[n]["reachable"] for n in ("up", "down", "new")] == [True, False, False]


def test_a_list_of_no_guests_plans_nothing_and_still_checks_the_settings():
    assert plan([]) == {"guests": [], "errors": []}
    assert plan([], settings={"wait_timeout": 0, "domain_type": "kvm"})["errors"] == [
        "kvm_guest_wait_timeout must be 1..3600 seconds, got 0",
        "domain type 'kvm' is not offered by this host's QEMU for x86_64 (it offers: qemu); use kvm_guest_domain_type: qemu for software emulation",
    ]
