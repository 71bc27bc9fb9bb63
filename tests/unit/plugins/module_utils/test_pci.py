# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vfio_pci and sriov logic on the fake host tree, with a small model of what the kernel does on writes."""

from __future__ import annotations

import json
import os
import re
import shutil

import make_fake_host
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _pci, _sriov, _vfio_pci
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends

PF = make_fake_host.PF
PF_NETDEV = "enp3s0f0"
VF0, VF1 = make_fake_host.VFS
NIC = make_fake_host.NIC
GPU, GPU_AUDIO = make_fake_host.GPU, make_fake_host.GPU_AUDIO
DEFAULT_DRIVERS = {"8086:10ca": "igbvf", "8086:15b8": "e1000e", "8086:10c9": "igb", "10de:1db6": "nouveau", "10de:10f2": "snd_hda_intel"}


class KernelFS(HostFS):
    """A HostFS whose writes to sysfs behave like the kernel's: VFs appear, drivers bind and unbind."""

    def _dev(self, address):
        return "/sys/bus/pci/devices/%s" % address

    def _set_driver(self, address, driver):
        link = self.path(self._dev(address) + "/driver")
        if os.path.lexists(link):
            os.unlink(link)
        if driver:
            os.makedirs(self.path("/sys/bus/pci/drivers/%s" % driver), exist_ok=True)
            os.symlink("../../../../bus/pci/drivers/%s" % driver, link)
        netdir = self.path(self._dev(address) + "/net")
        if driver in ("igbvf", "e1000e", "igb") and not os.listdir(netdir) if os.path.isdir(netdir) else driver in ("igbvf",):
            os.makedirs(os.path.join(netdir, "enp3s0f0v%s" % address[-1]), exist_ok=True)
        elif driver not in ("igbvf", "e1000e", "igb") and os.path.isdir(netdir):
            shutil.rmtree(netdir)

    def write(self, host_path, value):
        value = str(value)
        if host_path.endswith("/sriov_numvfs"):
            pf = host_path.split("/")[-2]
            count = int(value)
            current = self.read_int(host_path, 0)
            if count and current:
                raise HostError("cannot write %r to %s: Device or resource busy" % (value, host_path))
            if count == 0:
                for name in self.listdir(self._dev(pf)):
                    if name.startswith("virtfn"):
                        vf = self.readlink_name(self._dev(pf) + "/" + name)
                        shutil.rmtree(self.path(self._dev(vf)))
                        os.unlink(self.path(self._dev(pf) + "/" + name))
                        for group in self.listdir("/sys/kernel/iommu_groups"):
                            link = self.path("/sys/kernel/iommu_groups/%s/devices/%s" % (group, vf))
                            if os.path.lexists(link):
                                os.unlink(link)
            for index in range(count):
                vf = "0000:03:10.%d" % (index * 2) if index < 4 else "0000:03:11.%d" % ((index - 4) * 2)
                make_fake_host._pci(self.root, vf, "8086", "10ca", "0x020000", group=10 + index)
                make_fake_host._link(self.root, self._dev(pf) + "/virtfn%d" % index, "../%s" % vf)
                self._set_driver(vf, "igbvf")
            return super().write(host_path, value)
        if host_path.endswith("/unbind"):
            self._set_driver(value, None)
            return None
        if host_path.endswith("/bind"):
            self._set_driver(value, host_path.split("/")[-2])
            return None
        if host_path == "/sys/bus/pci/drivers_probe":
            if self.readlink_name(self._dev(value) + "/driver") is None:
                override = self.read(self._dev(value) + "/driver_override")
                ids = "%s:%s" % (self.read(self._dev(value) + "/vendor")[2:], self.read(self._dev(value) + "/device")[2:])
                self._set_driver(value, override if override not in (None, "", "(null)") else DEFAULT_DRIVERS.get(ids))
            return None
        if host_path.endswith("/driver_override") and value.strip() == "":
            value = "(null)"
        return super().write(host_path, value)


class FakeNet:
    def __init__(self, addresses=None, routes=(), vfs=None, unsupported=()):
        self.addrs = addresses or {}
        self.routes = set(routes)
        self.vf = vfs if vfs is not None else {}
        self.unsupported = set(unsupported)
        self.calls = []

    def addresses_of(self, ifname):
        return list(self.addrs.get(ifname, []))

    def default_route_ifnames(self):
        return set(self.routes)

    def vfs(self, ifname):
        return {i: dict(v) for i, v in self.vf.setdefault(ifname, {}).items()}

    def set_up(self, ifname):
        self.calls.append((ifname, "up"))

    def set_vf(self, ifname, index, settings):
        self.calls.append((ifname, index, dict(settings)))
        if set(settings) & self.unsupported:
            raise HostError("setting %s on VF %d of %s failed: Operation not supported" % (",".join(settings), index, ifname))
        self.vf.setdefault(ifname, {}).setdefault(index, {}).update(settings)

    def close(self):
        pass


class FakeRunner:
    def __init__(self, fs, tools=("update-initramfs",)):
        self.fs, self.tools, self.commands = fs, tools, []

    def which(self, name, required=False):
        del required
        return "/usr/sbin/" + name if name in self.tools else None

    def run(self, args, check=True, data=None, what=None, environ_update=None):
        del check, data, what, environ_update
        self.commands.append(list(args))
        if args[:2] == ["modprobe", "vfio-pci"]:
            os.makedirs(self.fs.path("/sys/bus/pci/drivers/vfio-pci"), exist_ok=True)
        return 0, "", ""


class FakeDomain:
    def __init__(self, name, xml):
        self._name, self._xml = name, xml

    def name(self):
        return self._name

    def XMLDesc(self, _flags):
        return self._xml


class FakeLibvirt:
    """The LibvirtClient surface guest_users needs; ``guests=None`` is an unreachable libvirtd."""

    uri = "qemu:///system"

    def __init__(self, guests):
        self.guests = guests

    @property
    def conn(self):
        if self.guests is None:
            raise LibvirtError("cannot connect to libvirt at qemu:///system: no socket")
        return self

    def listAllDomains(self, _flags):
        return [FakeDomain(name, xml) for name, xml in self.guests]


class Host:
    """What a test drives: the kernel-like tree, the fake runner, netlink and guests, and check mode."""

    def __init__(self, fs, runner, net, guests, *, check_mode, root="/"):
        self.fs, self.runner, self.net, self.guests, self.check_mode, self.root = fs, runner, net, guests, check_mode, root

    def backends(self):
        guests = self.guests() if callable(self.guests) else self.guests
        return Backends(libvirt=FakeLibvirt(guests if self.guests is not None else []), hostfs=self.fs, commands=self.runner, netlink=self.net, root=self.root)

    def checking(self):
        return Host(self.fs, self.runner, self.net, self.guests, check_mode=True, root=self.root)


def _host(fakehost, check_mode=False, net=None, guests=None):
    fs = KernelFS(fakehost["root"])
    # the fake tree's VF on vfio-pci has its override set, as a real binding would
    fs.write("/sys/bus/pci/devices/%s/driver_override" % VF1, "vfio-pci")
    for ifname in ("eno1", "enp3s0f0", "enp3s0f0v0"):
        os.makedirs(fs.path("/sys/class/net/%s" % ifname), exist_ok=True)
        with open(fs.path("/sys/class/net/%s/flags" % ifname), "w", encoding="utf-8") as handle:
            handle.write("0x1003\n")
    # root "/" with a kernel-like tree: the unconfined code paths, against stand-ins for the kernel and netlink
    return Host(fs, FakeRunner(fs), net or FakeNet(), guests, check_mode=check_mode)


def vfio(host, *, devices=None, ids=None, state="bound", group_policy="fail", force=False, persistent=False, initramfs=True):
    params = {
        "devices": devices,
        "ids": ids,
        "state": state,
        "group_policy": group_policy,
        "force": force,
        "persistent": persistent,
        "update_initramfs": initramfs,
    }
    return _vfio_pci.ensure_vfio_pci(host.backends(), params, host.check_mode, sleep=lambda _s: None)


def sriov(host, device, *, num_vfs=None, vfs=(), vf_driver=None, persistent=False, force=False, timeout=60, pf_up=False):
    params = {
        "device": device,
        "num_vfs": num_vfs,
        "vfs": list(vfs),
        "vf_driver": vf_driver,
        "persistent": persistent,
        "force": force,
        "timeout": timeout,
        "pf_up": pf_up,
    }
    return _sriov.ensure_sriov(host.backends(), params, host.check_mode, sleep=lambda _s: None)


def _driver(host, address):
    return host.fs.readlink_name("/sys/bus/pci/devices/%s/driver" % address)


# -- input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [("0000:03:00.0", "0000:03:00.0"), ("03:10.2", "0000:03:10.2"), ("0000:0A:1F.7", "0000:0a:1f.7")])
def test_normalize_address(text, expected):
    assert _pci.normalize_address(text) == expected


@pytest.mark.parametrize("text", ["0000:03:00", "3:00.0", "0000:03:00.8", "zz:00.0", "0000:03:00.0.1"])
def test_malformed_address(text):
    with pytest.raises(ValidationError, match="malformed PCI address"):
        _pci.normalize_address(text)


@pytest.mark.parametrize("text, ok", [("8086:10CA", True), ("8086-10ca", False), ("8086:10c", False), ("vendor:dev", False)])
def test_ids(text, ok):
    if ok:
        assert _pci.normalize_ids(text) == text.lower()
    else:
        with pytest.raises(ValidationError, match="vendor:device"):
            _pci.normalize_ids(text)


def test_predicted_vf_address(fakehost):
    fs = HostFS(fakehost["root"])
    with open(fs.path("/sys/bus/pci/devices/%s/sriov_offset" % PF), "w", encoding="utf-8") as handle:
        handle.write("128\n")
    with open(fs.path("/sys/bus/pci/devices/%s/sriov_stride" % PF), "w", encoding="utf-8") as handle:
        handle.write("2\n")
    assert [_sriov.predicted_vf_address(fs, PF, i) for i in range(5)] == ["0000:03:10.0", "0000:03:10.2", "0000:03:10.4", "0000:03:10.6", "0000:03:11.0"]


# -- vfio_pci ----------------------------------------------------------------------------------
@pytest.mark.parametrize("check_mode", [False, True])
def test_bind_vf_then_idempotent(fakehost, check_mode):
    host = _host(fakehost, check_mode=check_mode)
    result = vfio(host, devices=[VF0])
    assert result["changed"] is True
    assert result["devices"][0]["driver_before"] == "igbvf"
    assert result["devices"][0]["driver_after"] == "vfio-pci"
    assert result["diff"]["before"]["drivers"] == {VF0: "igbvf"}
    assert result["diff"]["after"]["drivers"] == {VF0: "vfio-pci"}
    assert _driver(host, VF0) == ("igbvf" if check_mode else "vfio-pci")
    if not check_mode:
        assert json.loads(host.fs.read(_vfio_pci.ORIGINAL_DRIVERS)) == {VF0: "igbvf"}
        again = vfio(host, devices=[VF0])
        assert again["changed"] is False


def test_unbind_returns_to_recorded_driver(fakehost):
    host = _host(fakehost)
    vfio(host, devices=[VF0])
    check = vfio(host.checking(), devices=[VF0], state="unbound")
    assert check["changed"] is True and _driver(host, VF0) == "vfio-pci"
    result = vfio(host, devices=[VF0], state="unbound")
    assert result["changed"] is True
    assert _driver(host, VF0) == "igbvf"
    assert host.fs.read("/sys/bus/pci/devices/%s/driver_override" % VF0) == "(null)"
    assert json.loads(host.fs.read(_vfio_pci.ORIGINAL_DRIVERS)) == {}
    assert vfio(host, devices=[VF0], state="unbound")["changed"] is False


def test_unbound_without_record_uses_kernel_default(fakehost):
    host = _host(fakehost)
    result = vfio(host, devices=[VF1], state="unbound")
    assert result["changed"] is True
    assert _driver(host, VF1) == "igbvf"


def test_ids_select_devices(fakehost):
    host = _host(fakehost)
    result = vfio(host, ids=["8086:10CA"])
    assert sorted(d["address"] for d in result["devices"]) == [VF0, VF1]
    assert _driver(host, VF0) == "vfio-pci"


def test_modprobe_when_vfio_not_loaded(fakehost):
    host = _host(fakehost)
    vfio(host, devices=[VF1], state="unbound")
    shutil.rmtree(host.fs.path("/sys/bus/pci/drivers/vfio-pci"))
    vfio(host, devices=[VF0])
    assert ["modprobe", "vfio-pci"] in host.runner.commands
    assert _driver(host, VF0) == "vfio-pci"


@pytest.mark.parametrize("policy", ["fail", "bind_all"])
def test_group_policy(fakehost, policy):
    host = _host(fakehost)
    if policy == "fail":
        with pytest.raises(ValidationError, match=r"IOMMU group 1 .*0000:01:00.1 \(snd_hda_intel\)") as err:
            vfio(host, devices=[GPU])
        assert err.value.details["group_members"] == [GPU, GPU_AUDIO]
        assert _driver(host, GPU) == "nouveau" and _driver(host, GPU_AUDIO) == "snd_hda_intel"
    else:
        result = vfio(host, devices=[GPU], group_policy="bind_all")
        assert [d["address"] for d in result["devices"]] == [GPU, GPU_AUDIO]
        assert _driver(host, GPU) == "vfio-pci" and _driver(host, GPU_AUDIO) == "vfio-pci"


def test_iommu_off(fakehost):
    host = _host(fakehost)
    shutil.rmtree(host.fs.path("/sys/kernel/iommu_groups"))
    with pytest.raises(ValidationError, match=r"IOMMU is off.*intel_iommu=on iommu=pt"):
        vfio(host, devices=[VF0])
    assert _driver(host, VF0) == "igbvf"


@pytest.mark.parametrize(
    "net, needle",
    [
        (FakeNet(addresses={"eno1": ["192.0.2.5/24"]}), "eno1 is up with address 192.0.2.5/24"),
        (FakeNet(routes=["eno1"]), "eno1 carries the default route"),
    ],
)
def test_refuses_host_nic(fakehost, net, needle):
    host = _host(fakehost, net=net)
    with pytest.raises(ValidationError, match=needle):
        vfio(host, devices=[NIC])
    assert _driver(host, NIC) == "e1000e"
    forced = vfio(host, devices=[NIC], force=True)
    assert forced["changed"] is True and _driver(host, NIC) == "vfio-pci"


def test_refuses_mounted_disk_and_boot_gpu(fakehost):
    host = _host(fakehost)
    os.makedirs(host.fs.path("/sys/devices/pci0000:00/%s/nvme/nvme0/nvme0n1/nvme0n1p1" % NIC))
    os.makedirs(host.fs.path("/sys/block"))
    os.symlink(host.fs.path("/sys/devices/pci0000:00/%s/nvme/nvme0/nvme0n1" % NIC), host.fs.path("/sys/block/nvme0n1"))
    with open(host.fs.path("/proc/mounts"), "a", encoding="utf-8") as handle:
        handle.write("/dev/nvme0n1p1 /srv ext4 rw 0 0\n")
    with pytest.raises(ValidationError, match="disk /dev/nvme0n1p1 is mounted on /srv"):
        vfio(host, devices=[NIC])
    with open(host.fs.path("/sys/bus/pci/devices/%s/boot_vga" % GPU), "w", encoding="utf-8") as handle:
        handle.write("1\n")
    with pytest.raises(ValidationError, match="boot GPU"):
        vfio(host, devices=[GPU], group_policy="bind_all")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"devices": ["0000:09:00.0"]}, "no PCI device 0000:09:00.0"),
        ({"devices": ["09:00"]}, "malformed PCI address"),
        ({"ids": ["8086"]}, "vendor:device form"),
    ],
)
def test_vfio_bad_input(fakehost, kwargs, match):
    host = _host(fakehost)
    with pytest.raises(ValidationError, match=match):
        vfio(host, **kwargs)
    assert not host.fs.exists(_vfio_pci.ORIGINAL_DRIVERS)


def test_persistent_files_and_initramfs(fakehost):
    host = _host(fakehost)
    result = vfio(host, devices=[VF0], persistent=True)
    assert result["reboot_required"] is True
    assert result["initramfs_updated"] == "update-initramfs"
    assert ["update-initramfs", "-u"] in host.runner.commands
    conf = host.fs.read(_vfio_pci.MODPROBE_CONF)
    assert "options vfio-pci ids=8086:10ca" in conf and "softdep igbvf pre: vfio-pci" in conf
    assert host.fs.read_lines(_vfio_pci.MODULES_LOAD_CONF)[-1] == "vfio-pci"
    again = vfio(host, devices=[VF0], persistent=True)
    assert again["changed"] is False and again["reboot_required"] is False
    removed = vfio(host, devices=[VF0], state="unbound", persistent=True)
    assert sorted(removed["files_changed"]) == sorted([_vfio_pci.MODPROBE_CONF, _vfio_pci.MODULES_LOAD_CONF])
    assert not host.fs.exists(_vfio_pci.MODPROBE_CONF)


# -- sriov -------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", [PF, "03:00.0", "enp3s0f0"])
def test_sriov_resolve_and_noop(fakehost, device):
    host = _host(fakehost)
    result = sriov(host, device, num_vfs=2)
    assert result["changed"] is False
    assert result["pf"] == {"address": PF, "netdev": "enp3s0f0", "driver": "igb", "totalvfs": 7, "numvfs": 2, "up": True}
    assert [v["address"] for v in result["vfs"]] == [VF0, VF1]


@pytest.mark.parametrize("check_mode", [False, True])
def test_sriov_change_goes_through_zero(fakehost, check_mode):
    host = _host(fakehost, check_mode=check_mode)
    result = sriov(host, PF, num_vfs=4)
    assert result["changed"] is True and result["changes"] == ["num_vfs"]
    assert result["diff"]["before"]["num_vfs"] == 2 and result["diff"]["after"]["num_vfs"] == 4
    assert host.fs.read_int("/sys/bus/pci/devices/%s/sriov_numvfs" % PF) == (2 if check_mode else 4)
    if not check_mode:
        assert len(result["vfs"]) == 4 and all(v["driver"] == "igbvf" for v in result["vfs"])
        assert sriov(host, PF, num_vfs=4)["changed"] is False


def test_sriov_refuses_vf_in_running_guest(fakehost):
    xml = (
        "<domain><name>g1</name><devices><hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x03' slot='0x10' function='0x2'/>"
        "</source></hostdev></devices></domain>"
    )
    host = _host(fakehost, guests=lambda: [("virtops-test-g1", xml)])
    with pytest.raises(ValidationError, match=re.escape("VF 0000:03:10.2 is attached to running guest virtops-test-g1")):
        sriov(host, PF, num_vfs=3)
    assert host.fs.read_int("/sys/bus/pci/devices/%s/sriov_numvfs" % PF) == 2
    assert sriov(host, PF, num_vfs=3, force=True)["changed"] is True


def test_sriov_refuses_vf_with_host_address(fakehost):
    host = _host(fakehost, net=FakeNet(addresses={"enp3s0f0v0": ["198.51.100.2/24"]}), guests=lambda: None)
    with pytest.raises(ValidationError, match=re.escape("enp3s0f0v0 is up with address 198.51.100.2/24")):
        sriov(host, PF, num_vfs=0)
    assert host.fs.read_int("/sys/bus/pci/devices/%s/sriov_numvfs" % PF) == 2


def test_sriov_vf_settings_idempotent(fakehost):
    net = FakeNet(vfs={"enp3s0f0": {0: {"mac": "00:00:00:00:00:00", "vlan": 0, "qos": 0, "trust": False, "spoofchk": True}}})
    host = _host(fakehost, net=net)
    vfs = [{"index": 0, "mac": "02:AA:00:00:00:01", "vlan": 10, "trust": True}]
    result = sriov(host, PF, vfs=vfs)
    assert result["changed"] is True and result["changes"] == ["vfs[0]"]
    assert net.calls == [("enp3s0f0", 0, {"mac": "02:aa:00:00:00:01", "vlan": 10, "qos": 0, "trust": True})]
    assert result["vfs"][0]["mac"] == "02:aa:00:00:00:01" and result["vfs"][0]["vlan"] == 10
    assert result["diff"]["before"]["vfs"][0] == {"mac": "00:00:00:00:00:00", "vlan": 0, "trust": False}
    assert sriov(host, PF, vfs=vfs)["changed"] is False
    assert len(net.calls) == 1


def test_sriov_unsupported_setting_reports_kernel_error(fakehost):
    host = _host(fakehost, net=FakeNet(unsupported=["link_state"]))
    with pytest.raises(HostError, match="link_state on VF 1 of enp3s0f0 failed: Operation not supported"):
        sriov(host, PF, vfs=[{"index": 1, "link_state": "disable"}])


def test_sriov_vf_driver_vfio(fakehost):
    host = _host(fakehost)
    result = sriov(host, PF, vf_driver="vfio-pci")
    assert result["changes"] == ["vf_driver %s" % VF0]
    assert _driver(host, VF0) == "vfio-pci"
    assert sriov(host, PF, vf_driver="vfio-pci")["changed"] is False
    back = sriov(host, PF, vf_driver="default")
    assert back["changed"] is True and _driver(host, VF0) == "igbvf" and _driver(host, VF1) == "igbvf"


def test_sriov_persistent_rule(fakehost):
    host = _host(fakehost)
    vfs = [{"index": 0, "mac": "02:00:00:00:00:01", "vlan": 5, "trust": True}]
    result = sriov(host, PF, num_vfs=2, vfs=vfs, persistent=True)
    path = _sriov.UDEV_RULE % PF
    assert path in result["changes"]
    rule = host.fs.read(path)
    assert 'KERNELS=="%s", ATTR{device/sriov_numvfs}="2"' % PF in rule
    assert 'RUN+="/usr/sbin/ip link set dev $name vf 0 mac 02:00:00:00:00:01 vlan 5 trust on"' in rule
    assert sriov(host, PF, num_vfs=2, vfs=vfs, persistent=True)["changed"] is False
    assert sriov(host, PF, num_vfs=2, persistent=False)["changes"] == [path]
    assert not host.fs.exists(path)


def test_sriov_rule_after_net_setup_link(fakehost):
    # $name there is the interface's final name (udev applies 80-net-setup-link.rules' NAME before running RUN)
    assert _sriov.UDEV_RULE % PF == "/etc/udev/rules.d/81-virtops-sriov-%s.rules" % PF
    assert (_sriov.UDEV_RULE % PF).rsplit("/", 1)[1] > "80-net-setup-link.rules"


def test_sriov_rule_of_an_earlier_release_moves(fakehost):
    host = _host(fakehost)
    vfs = [{"index": 0, "mac": "02:00:00:00:00:01"}]
    old, new = _sriov.OLD_UDEV_RULE % PF, _sriov.UDEV_RULE % PF
    first = sriov(host, PF, num_vfs=2, vfs=vfs, persistent=True)
    content = host.fs.read(new)
    host.fs.write(old, content + "\n")
    os.remove(host.fs.path(new))
    check = sriov(host.checking(), PF, num_vfs=2, vfs=vfs, persistent=True)
    assert check["changed"] is True and sorted(check["changes"]) == sorted([old, new])
    assert host.fs.exists(old) and not host.fs.exists(new)
    assert check["diff"]["before"]["rule"] == check["diff"]["after"]["rule"]
    assert check["diff"]["before"]["rule"].strip() == content.strip()
    moved = sriov(host, PF, num_vfs=2, vfs=vfs, persistent=True)
    assert moved["changes"] == check["changes"]
    assert not host.fs.exists(old) and host.fs.read(new).strip() == content.strip()
    assert sriov(host, PF, num_vfs=2, vfs=vfs, persistent=True)["changed"] is False
    assert first["rule"] == new
    # persistent=false removes a rule left at the old path too
    host.fs.write(old, content + "\n")
    gone = sriov(host, PF, num_vfs=2, persistent=False)
    assert sorted(gone["changes"]) == sorted([old, new]) and not host.fs.exists(old) and not host.fs.exists(new)


@pytest.mark.parametrize(
    "device, kwargs, match",
    [
        ("0000:07:00.0", {"num_vfs": 1}, "no PCI device 0000:07:00.0"),
        ("eth9", {"num_vfs": 1}, "no PCI device or network interface named 'eth9'"),
        ("0000:03:00", {"num_vfs": 1}, "malformed PCI address"),
        (PF, {"num_vfs": 8}, "num_vfs=8 is outside what 0000:03:00.0 supports \\(0 to sriov_totalvfs=7\\)"),
        (NIC, {"num_vfs": 1}, "is not SR-IOV capable"),
        (PF, {"num_vfs": 2, "vfs": [{"index": 2, "mac": "02:00:00:00:00:01"}]}, "index 2 but 0000:03:00.0 will have 2 VFs"),
        (PF, {"vfs": [{"index": 0, "qos": 3}]}, "qos needs vlan"),
    ],
)
def test_sriov_bad_input(fakehost, device, kwargs, match):
    host = _host(fakehost)
    with pytest.raises(ValidationError, match=match):
        sriov(host, device, **kwargs)
    assert host.fs.read_int("/sys/bus/pci/devices/%s/sriov_numvfs" % PF) == 2
    assert host.net.calls == []


def test_refuses_virtio_management_nic(fakehost):
    """virtio NICs hang their netdev below virtioN/net, not net/ (the lab's management NIC)."""
    host = _host(fakehost, net=FakeNet(addresses={"enp0s1": ["10.0.2.15/24"]}, routes=["enp0s1"]))
    mgmt = "0000:00:01.0"
    make_fake_host._pci(host.fs.root, mgmt, "1af4", "1000", "0x020000", driver="virtio-pci", group=7)
    os.makedirs(host.fs.path("/sys/bus/pci/devices/%s/virtio0/net/enp0s1" % mgmt))
    os.makedirs(host.fs.path("/sys/class/net/enp0s1"))
    with open(host.fs.path("/sys/class/net/enp0s1/flags"), "w", encoding="utf-8") as handle:
        handle.write("0x1003\n")
    with pytest.raises(ValidationError, match=r"enp0s1 is up with address 10\.0\.2\.15/24; network interface enp0s1 carries the default route"):
        vfio(host, devices=[mgmt])
    assert _driver(host, mgmt) == "virtio-pci"


# -- issue 11 item 10: under a fake root nothing runs on this machine ----------------------------
class NoCommands(FakeRunner):
    def run(self, args, check=True, data=None, what=None, environ_update=None):
        raise AssertionError("a command ran under a fake root: %r" % (args,))


def _confined(fakehost, check_mode=False):
    host = _host(fakehost, check_mode=check_mode)
    host.root = fakehost["root"]
    host.runner = NoCommands(host.fs)
    host.net = None  # what Backends gives under a fake root
    os.makedirs(host.fs.path("/usr/sbin"), exist_ok=True)
    open(host.fs.path("/usr/sbin/update-initramfs"), "w", encoding="utf-8").close()
    return host


def test_fault_vfio_persistent_under_fake_root_runs_no_initramfs_update(fakehost):
    host = _confined(fakehost)
    os.makedirs(host.fs.path("/sys/bus/pci/drivers/vfio-pci"), exist_ok=True)
    result = vfio(host, devices=[VF0], persistent=True)
    assert result["changed"] is True
    assert result["initramfs_updated"] is None
    assert any("update-initramfs -u" in w and "chroot %s" % fakehost["root"] in w for w in result["warnings"])
    assert host.fs.exists(_vfio_pci.MODPROBE_CONF)
    assert Backends(hostfs=host.fs, root=fakehost["root"]).netlink is None


def test_fault_vfio_under_fake_root_runs_no_modprobe(fakehost):
    host = _confined(fakehost)
    shutil.rmtree(host.fs.path("/sys/bus/pci/drivers/vfio-pci"), ignore_errors=True)
    with pytest.raises(HostError, match="does not run modprobe"):
        vfio(host, devices=[VF0])
    assert _driver(host, VF0) == "igbvf"


def test_fault_sriov_under_fake_root_reads_no_netlink(fakehost):
    host = _confined(fakehost)
    with pytest.raises(ValidationError, match=r"netlink, which with root=.* would be this machine.s"):
        sriov(host, PF, vfs=[{"index": 0, "mac": "02:00:00:00:00:05"}])
    # the count and the rule work from the tree alone, with no netlink and no command
    result = sriov(host, PF, num_vfs=3, persistent=True)
    assert result["changed"] is True
    assert host.fs.read_int("/sys/bus/pci/devices/%s/sriov_numvfs" % PF) == 3


# -- issue 11 item 13: clear messages for bad ids and MACs ---------------------------------------
@pytest.mark.parametrize(
    "mac, match",
    [
        ("02:00:00:00:00", "not a MAC address"),
        ("02:00:00:00:00:0g", "not a MAC address"),
        ('02:00:00:00:00:01" RUN+="/bin/sh', "not a MAC address"),
        ("02:00:00:00:00:01\n", "not a MAC address"),
        ("0200.0000.0001", "not a MAC address"),
        ("01:00:5e:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "multicast"),
        ("00:00:00:00:00:00", "all zeros"),
    ],
)
def test_sriov_bad_input_mac(fakehost, mac, match):
    host = _host(fakehost)
    with pytest.raises(ValidationError, match=match):
        sriov(host, PF, vfs=[{"index": 0, "mac": mac}], persistent=True)
    assert not host.fs.exists(_sriov.UDEV_RULE % PF)
    assert host.net.calls == []


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"index": 0, "vlan": 4096}, "vlan must be an integer from 0 to 4095"),
        ({"index": 0, "vlan": 1, "qos": 8}, "qos must be an integer from 0 to 7"),
        ({"index": 0, "max_tx_rate": -1}, "max_tx_rate must be"),
    ],
)
def test_sriov_bad_input_vf_settings(fakehost, spec, match):
    host = _host(fakehost)
    with pytest.raises(ValidationError, match=match):
        sriov(host, PF, vfs=[spec])
    assert host.net.calls == []


def test_sriov_mac_upper_case_is_normalised(fakehost):
    assert _sriov.validate_mac("02:AB:00:00:00:01", "mac") == "02:ab:00:00:00:01"


@pytest.mark.parametrize("ids", ["zzzz:10ca", "8086:10c", "8086-10ca", "0x8086:0x10ca"])
def test_vfio_bad_input_non_hex_ids(fakehost, ids):
    host = _host(fakehost)
    with pytest.raises(ValidationError, match="four hex digits"):
        vfio(host, ids=[ids])


def test_sriov_pf_up(fakehost):
    host = _host(fakehost)
    flags = "/sys/class/net/%s/flags" % PF_NETDEV
    host.fs.write(flags, "0x1002")
    assert sriov(host, PF, num_vfs=2)["pf"]["up"] is False
    check = sriov(host.checking(), PF, num_vfs=2, pf_up=True)
    assert check["changes"] == ["pf_up"] and check["diff"]["before"]["pf_up"] is False and check["diff"]["after"]["pf_up"] is True
    assert host.net.calls == []
    up = sriov(host, PF, num_vfs=2, pf_up=True, persistent=True)
    assert up["changes"][0] == "pf_up" and up["pf"]["up"] is True
    assert host.net.calls == [(PF_NETDEV, "up")]
    rule = host.fs.read(_sriov.UDEV_RULE % PF)
    assert 'KERNELS=="%s", RUN+="/usr/sbin/ip link set dev $name up"' % PF in rule
    host.fs.write(flags, "0x1003")  # what the kernel shows now
    again = sriov(host, PF, num_vfs=2, pf_up=True, persistent=True)
    assert again["changed"] is False and host.net.calls == [(PF_NETDEV, "up")]
    # pf_up=false leaves a PF that is up alone, and the rule stops bringing it up
    left = sriov(host, PF, num_vfs=2, persistent=True)
    assert left["changes"] == [_sriov.UDEV_RULE % PF] and 'up"' not in host.fs.read(_sriov.UDEV_RULE % PF)


def test_sriov_pf_up_needs_a_netdev(fakehost):
    host = _host(fakehost)
    shutil.rmtree(host.fs.path("/sys/bus/pci/devices/%s/net" % PF))
    with pytest.raises(ValidationError, match=r"pf_up brings the PF's network interface up, but 0000:03:00\.0 has none"):
        sriov(host, PF, num_vfs=2, pf_up=True)
    assert host.net.calls == []
