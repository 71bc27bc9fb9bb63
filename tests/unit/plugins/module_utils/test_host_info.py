# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _host_facts as facts_core
from ansible_collections.virtops.kvm.plugins.module_utils import _host_info as hi
from ansible_collections.virtops.kvm.plugins.module_utils import _pci
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends


@pytest.fixture
def fs(fakehost):
    return HostFS(fakehost["root"])


def test_cpu(fs):
    cpu = hi.gather_cpu(fs)
    assert cpu == {
        "vendor": "GenuineIntel",
        "model_name": "Fake Xeon CPU @ 2.00GHz",
        "virtualization_flag": "vmx",
        "address_bits": {"physical": 46, "virtual": 48},
    }


def test_kvm_ok_when_qemu_user_is_in_the_device_group(fs):
    kvm = hi.gather_kvm(fs)
    if not kvm["device_present"]:
        pytest.skip("cannot create a character device here (not root)")
    assert kvm["ok"] is True
    assert kvm["usable_by_qemu_user"] is True
    assert kvm["qemu_user"] == "libvirt-qemu"
    assert kvm["nested"] is True
    assert kvm["module"] == "kvm_intel"


def test_kvm_not_usable_when_device_is_root_only(fs, fakehost):
    if not fs.is_char_device("/dev/kvm"):
        pytest.skip("cannot create a character device here (not root)")
    os.chmod(fs.path("/dev/kvm"), 0o600)
    kvm = hi.gather_kvm(fs)
    assert kvm["ok"] is False
    assert kvm["usable_by_qemu_user"] is False
    assert "libvirt-qemu (the user QEMU runs as, group kvm) cannot open it" in kvm["reason"]
    assert "owner root, group kvm, mode 0600" in kvm["reason"]
    assert "chmod 0660 /dev/kvm" in kvm["reason"]
    assert kvm["device_mode"] == "0600"
    assert "slow" in kvm["slow_libvirt_cause"] and "defineXML 48 s" in kvm["slow_libvirt_cause"]


def _kvm_device(fs, mode, gid):
    if not fs.is_char_device("/dev/kvm"):
        pytest.skip("cannot create a character device here (not root)")
    os.chown(fs.path("/dev/kvm"), 0, gid)
    os.chmod(fs.path("/dev/kvm"), mode)


def test_kvm_device_owner_group_mode_reported(fs):
    _kvm_device(fs, 0o660, 108)
    kvm = hi.gather_kvm(fs)
    assert (kvm["device_owner"], kvm["device_group"], kvm["device_mode"]) == ("root", "kvm", "0660")
    assert (kvm["qemu_user"], kvm["qemu_group"]) == ("libvirt-qemu", "kvm")
    assert kvm["slow_libvirt_cause"] is None


def test_kvm_root_group_device_is_the_cause_of_slow_libvirt(fs):
    """The fresh-machine state: /dev/kvm 0600 root:root. QEMU cannot open it, libvirt re-probes on every call."""
    _kvm_device(fs, 0o600, 0)
    kvm = hi.gather_kvm(fs)
    assert (kvm["device_owner"], kvm["device_group"], kvm["device_mode"]) == ("root", "root", "0600")
    assert kvm["usable_by_qemu_user"] is False
    assert kvm["ok"] is False
    result = hi.ensure_host_info(Backends(hostfs=fs, root="/"), {"gather": ["kvm"]}, False)
    assert result["changed"] is False
    assert len(result["warnings"]) == 1
    assert "libvirt calls are slow" in result["warnings"][0]
    assert "re-probes" in result["host"]["kvm"]["slow_libvirt_cause"] or "probes QEMU again" in result["host"]["kvm"]["slow_libvirt_cause"]


def test_kvm_group_from_qemu_conf_counts(fs):
    """qemu.conf's group = "kvm" lets a user outside group kvm open a 0660 root:kvm device."""
    _kvm_device(fs, 0o660, 108)
    with open(fs.path("/etc/group"), "w") as handle:
        handle.write("root:x:0:\nkvm:x:108:\nlibvirt-qemu:x:64055:\n")
    with open(fs.path("/etc/passwd"), "w") as handle:
        handle.write("libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin\n")
    assert hi.gather_kvm(fs)["usable_by_qemu_user"] is False
    with open(fs.path("/etc/libvirt/qemu.conf"), "w") as handle:
        handle.write('group = "kvm"\n')
    kvm = hi.gather_kvm(fs)
    assert kvm["usable_by_qemu_user"] is True
    assert kvm["qemu_group"] == "kvm"


def test_kvm_unknown_qemu_user_is_null_not_false(fs):
    _kvm_device(fs, 0o600, 0)
    with open(fs.path("/etc/passwd"), "w") as handle:
        handle.write("root:x:0:0:root:/root:/bin/bash\n")
    kvm = hi.gather_kvm(fs)
    assert kvm["qemu_user"] is None
    assert kvm["usable_by_qemu_user"] is None
    assert kvm["slow_libvirt_cause"] is None


def test_kvm_without_device_or_flag(tmp_path):
    import make_fake_host

    make_fake_host.build(str(tmp_path), cpu_flag="")
    os.unlink(tmp_path / "dev/kvm")
    kvm = hi.gather_kvm(HostFS(str(tmp_path)))
    assert kvm["ok"] is False
    assert "neither vmx nor svm" in kvm["reason"]
    assert kvm["device_present"] is False


def test_qemu_user_from_qemu_conf(fs):
    with open(fs.path("/etc/libvirt/qemu.conf"), "w") as handle:
        handle.write('user = "+64055"\n# user = "nobody"\n')
    assert hi.qemu_user(fs) == "64055"


def test_numa(fs):
    numa = hi.gather_numa(fs)
    assert numa["node_count"] == 2
    assert [n["id"] for n in numa["nodes"]] == [0, 1]
    assert numa["nodes"][1] == {"id": 1, "cpus": "2-3", "memory_total_kb": 8388608, "memory_free_kb": 8000000}


def test_hugepages_per_size_and_node(fs):
    hp = facts_core.gather_hugepages(fs)
    assert hp["default_size_kb"] == 2048
    assert sorted(hp["pools"]) == ["1048576kB", "2048kB"]
    two_m = hp["pools"]["2048kB"]
    assert (two_m["total"], two_m["free"], two_m["reserved"], two_m["surplus"]) == (16, 16, 0, 0)
    assert two_m["nodes"] == {"0": {"total": 8, "free": 8, "surplus": 0}, "1": {"total": 8, "free": 8, "surplus": 0}}
    assert hp["mounts"] == [{"path": "/dev/hugepages", "pagesize": "2M"}, {"path": "/dev/hugepages1G", "pagesize": "1024M"}]


def test_iommu_groups(fs, fakehost):
    iommu = hi.gather_iommu(fs)
    assert iommu["enabled"] is True
    assert iommu["units"] == ["dmar0"]
    assert iommu["group_count"] == 5
    assert list(iommu["groups"]) == ["0", "1", "2", "3", "4"]
    gpu = iommu["groups"]["1"]
    assert [d["address"] for d in gpu] == fakehost["gpu"]
    assert gpu[0]["driver"] == "nouveau"
    assert gpu[0]["vendor_id"] == "10de"
    assert iommu["groups"]["2"][0]["netdevs"] == ["enp3s0f0"]


def test_iommu_off(tmp_path):
    assert hi.gather_iommu(HostFS(str(tmp_path))) == {"enabled": False, "units": [], "kernel_cmdline": [], "group_count": 0, "groups": {}}


def test_sriov(fs, fakehost):
    devices = hi.gather_sriov(fs)["devices"]
    # the fake tree has no /sys/class/net/<netdev>/flags: whether it is up is unknown
    assert devices == [
        {
            "address": fakehost["pf"],
            "netdevs": ["enp3s0f0"],
            "up": None,
            "driver": "igb",
            "totalvfs": 7,
            "numvfs": 2,
            "vfs": fakehost["vfs"],
        }
    ]


def test_apparmor_and_ksm(fs, tmp_path):
    assert facts_core.gather_apparmor(fs) == {"enabled": True, "kernel_module": True}
    ksm = facts_core.gather_ksm(fs)
    assert ksm["available"] is True
    assert (ksm["run"], ksm["pages_shared"], ksm["pages_sharing"]) == (1, 12, 40)
    assert ksm["merge_across_nodes"] is True and ksm["use_zero_pages"] is False
    assert facts_core.gather_ksm(HostFS(str(tmp_path / "empty"))) == {"available": False}
    # no AppArmor to ask: unknown (null), not "disabled"
    assert facts_core.gather_apparmor(HostFS(str(tmp_path / "empty"))) == {"enabled": None, "kernel_module": False}


@pytest.mark.parametrize("text, value", [("Y", True), ("N", False), ("1\n", True), ("0", False), (None, None), ("", None), ("maybe", None)])
def test_one_tristate_encoding(text, value):
    assert facts_core.tristate(text) is value


def test_empty_tree_gives_nulls_not_errors(tmp_path):
    facts = hi.gather(HostFS(str(tmp_path)), set(hi.SUBSETS) - {"libvirt"})
    assert facts["cpu"]["address_bits"] == {"physical": None, "virtual": None}
    assert facts["numa"] == {"node_count": 0, "nodes": []}
    assert facts["hugepages"] == {"default_size_kb": None, "pools": {}, "mounts": []}
    assert facts["kvm"]["ok"] is False


def test_libvirt_from_test_driver(test_conn):
    facts = hi.gather_libvirt(test_conn)
    assert facts["uri"] == "test:///default"
    assert facts["libvirt_version"].count(".") == 2
    assert facts["hypervisor"] == "TEST"
    assert facts["host_arch"] in facts["guests"] or facts["guests"] == {}
    # test:///default has one active network on virbr0 and one active pool
    assert facts["networks"] == [{"name": "default", "active": True, "autostart": False, "bridge": "virbr0"}]
    assert [pool["name"] for pool in facts["pools"] if pool["active"]] == ["default-pool"]


def _unreachable():
    raise LibvirtError("cannot connect to libvirt at qemu:///nowhere: no socket", code=38)


def test_libvirt_unreachable_is_null_unless_required(fs):
    facts = hi.gather(fs, {"libvirt", "ksm"}, _unreachable, libvirt_required=False)
    assert facts["libvirt"] is None
    assert "no socket" in facts["libvirt_error"]
    assert facts["ksm"]["available"] is True
    with pytest.raises(LibvirtError, match=r"gather: libvirt.*no socket"):
        hi.gather(fs, {"libvirt"}, _unreachable, libvirt_required=True)


def test_domains_only_when_named_and_as_domain_info_reports_them(fs, test_conn):
    from ansible_collections.virtops.kvm.plugins.module_utils._domain_info import gather_domains

    facts = hi.gather(fs, {"domains", "ksm"}, lambda: test_conn)
    # test:///default starts with its guest "test"; each entry is domain_info's, XML included
    assert facts["domains"] == gather_domains(test_conn, include_xml=True)
    assert [guest["name"] for guest in facts["domains"]] == ["test"]
    assert facts["domains"][0]["xml"].startswith("<domain")
    assert "domains" not in hi.gather(fs, set(hi.SUBSETS) - {"libvirt"}, lambda: test_conn)


def test_all_leaves_domains_out_unless_named(fs, fakehost, test_conn):
    backends = Backends(libvirt=test_conn, hostfs=fs, root=fakehost["root"])
    everything = hi.ensure_host_info(backends, {"gather": ["all"]}, False)["host"]
    assert set(hi.SUBSETS) <= set(everything) and "domains" not in everything
    with_guests = hi.ensure_host_info(backends, {"gather": ["all", "domains"]}, False)["host"]
    assert set(with_guests) == set(everything) | {"domains"}


def test_domain_names_read_only_those_guests_that_exist(fs, fakehost, test_conn):
    backends = Backends(libvirt=test_conn, hostfs=fs, root=fakehost["root"])
    named = hi.ensure_host_info(backends, {"gather": ["domains"], "domain_names": ["test", "no-such-guest", "test"]}, False)["host"]
    assert [guest["name"] for guest in named["domains"]] == ["test"]
    assert hi.ensure_host_info(backends, {"gather": ["domains"], "domain_names": ["no-such-guest"]}, False)["host"]["domains"] == []
    assert hi.ensure_host_info(backends, {"gather": ["domains"], "domain_names": []}, False)["host"]["domains"] == []
    with pytest.raises(ValidationError, match="domain_names limits the guests that gather: domains reads"):
        hi.ensure_host_info(backends, {"gather": ["all"], "domain_names": ["test"]}, False)


def test_domains_fail_on_unreachable_libvirt(fs):
    with pytest.raises(LibvirtError, match=r"gather: domains.*no socket"):
        hi.gather(fs, {"domains"}, _unreachable)


def test_libvirt_capabilities_parsing():
    caps = """<capabilities><host><cpu><arch>x86_64</arch><model>Skylake-Client-IBRS</model>
      <maxphysaddr mode='emulate' bits='39'/></cpu></host>
      <guest><os_type>hvm</os_type><arch name='x86_64'>
        <machine maxCpus='255'>pc-q35-8.2</machine><machine canonical='pc-q35-8.2' maxCpus='255'>q35</machine>
        <machine maxCpus='255'>pc-q35-noble-hpb</machine>
        <domain type='qemu'/><domain type='kvm'/></arch></guest></capabilities>"""

    class Conn:
        def getCapabilities(self):
            return caps

        def getVersion(self):
            return 8002002

        def getLibVersion(self):
            return 10000000

        def getType(self):
            return "QEMU"

        def listAllNetworks(self):
            return []

        def listAllStoragePools(self):
            return []

    class Client:
        conn = Conn()
        uri = "qemu:///system"

        def call(self, _action, func, *args):
            return func(*args)

    facts = hi.gather_libvirt(Client())
    assert facts["libvirt_version"] == "10.0.0"
    assert facts["hypervisor_version"] == "8.2.2"
    assert facts["domain_types"] == ["kvm", "qemu"]
    assert facts["host_maxphysaddr"] == {"mode": "emulate", "bits": 39}
    assert facts["hpb_machine_types"] == ["pc-q35-noble-hpb"]
    assert facts["guests"]["x86_64"]["machine_aliases"] == {"q35": "pc-q35-8.2"}
    assert facts["networks"] == [] and facts["pools"] == []


def test_virtio_nic_netdevs_are_found(fs):
    base = fs.path("/sys/bus/pci/devices/0000:00:03.0")
    os.makedirs(base + "/virtio0/net/ens3")
    with open(base + "/vendor", "w") as handle:
        handle.write("0x1af4\n")
    assert _pci.pci_netdevs(fs, "0000:00:03.0") == ["ens3"]
    assert _pci.pci_device(fs, "0000:00:03.0")["netdevs"] == ["ens3"]


def test_ensure_host_info_is_read_only_and_selects_subsets(fs, fakehost):
    before = sorted(os.walk(fakehost["root"]))
    result = hi.ensure_host_info(Backends(hostfs=fs, root=fakehost["root"]), {"gather": ["numa", "ksm"]}, True)
    assert result["changed"] is False
    assert sorted(result["host"]) == ["ksm", "numa"]
    assert sorted(os.walk(fakehost["root"])) == before


def test_mounts_with_escaped_spaces(fs):
    with open(fs.path("/proc/mounts"), "w") as handle:
        handle.write("hugetlbfs /mnt/huge\\040pages hugetlbfs rw,pagesize=2M 0 0\n")
    assert facts_core.hugetlbfs_mounts(fs) == [{"path": "/mnt/huge pages", "pagesize": "2M"}]


def test_sriov_pf_link_state(fs, fakehost):
    for flags, up in (("0x1003", True), ("0x1002", False)):
        path = fs.path("/sys/class/net/enp3s0f0")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "flags"), "w", encoding="utf-8") as handle:
            handle.write(flags + "\n")
        assert hi.gather_sriov(fs)["devices"][0]["up"] is up
