# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pathlib

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _hugepages as hp
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS

POOL_2M = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
POOL_1G = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"


def node_pool(node, size_kb=2048):
    return "/sys/devices/system/node/node%d/hugepages/hugepages-%dkB/nr_hugepages" % (node, size_kb)


@pytest.fixture
def fs(fakehost):
    return HostFS(fakehost["root"])


class ShortKernel:
    """A writer behaving like a kernel with ``cap`` free hugepages; compaction frees ``after_compact`` more."""

    def __init__(self, fs, cap, after_compact=0):
        self.fs, self.cap, self.after_compact, self.calls = fs, cap, after_compact, []

    def __call__(self, path, value):
        self.calls.append((path, value))
        if path == "/proc/sys/vm/compact_memory":
            self.cap += self.after_compact
        if path.endswith("/nr_hugepages"):
            value = min(int(value), self.cap)
        self.fs.write(path, value)


@pytest.mark.parametrize("text, size_kb", [("2M", 2048), ("1G", 1048576), ("2048kB", 2048), ("2MiB", 2048), ("1gb", 1048576), ("64K", 64)])
def test_parse_size(text, size_kb):
    assert hp.parse_size_kb(text) == size_kb


@pytest.mark.parametrize("text", ["huge", "2", "0M", "2T", ""])
def test_parse_size_rejects(text):
    with pytest.raises(ValidationError):
        hp.parse_size_kb(text)


@pytest.mark.parametrize("params, path, value", [
    ({"count": 20}, POOL_2M, 20),
    ({"size": "2048kB", "count": 4}, POOL_2M, 4),
    ({"size": "1G", "count": 2}, POOL_1G, 2),
    ({"nodes": {0: 3, "1": 5}}, node_pool(1), 5),
    ({"size": "1G", "nodes": {"node1": 1}}, node_pool(1, 1048576), 1),
])
def test_allocation_then_idempotent(fs, params, path, value):
    first = hp.ensure_hugepages(fs, params)
    assert first["changed"] is True
    assert fs.read_int(path) == value
    assert hp.ensure_hugepages(fs, params)["changed"] is False


def test_check_mode_predicts_the_real_run(fs):
    params = {"nodes": {0: 2, 1: 12}, "persistent": True}
    checked = hp.ensure_hugepages(fs, params, check_mode=True)
    assert fs.read_int(node_pool(1)) == 8
    assert not fs.exists(hp.TMPFILES_FILE % 2048)
    real = hp.ensure_hugepages(fs, params)
    assert checked["changed"] is real["changed"] is True
    assert checked["diff"] == real["diff"]
    assert checked["after"]["nodes"]["1"]["total"] == real["after"]["nodes"]["1"]["total"] == 12
    assert "nr_hugepages on node 1 = 8" in real["diff"]["before"]
    assert "nr_hugepages on node 1 = 12" in real["diff"]["after"]


def test_at_least_never_lowers(fs):
    result = hp.ensure_hugepages(fs, {"count": 4, "mode": "at_least"})
    assert result["changed"] is False
    assert fs.read_int(POOL_2M) == 16
    assert hp.ensure_hugepages(fs, {"count": 30, "mode": "at_least"})["changed"] is True
    assert fs.read_int(POOL_2M) == 30


def test_state_absent_empties_the_pool(fs):
    assert hp.ensure_hugepages(fs, {"state": "absent"})["changed"] is True
    assert fs.read_int(POOL_2M) == 0


def test_short_allocation_is_restored_and_fails(fs):
    kernel = ShortKernel(fs, cap=301)
    with pytest.raises(HostError) as err:
        hp.ensure_hugepages(fs, {"count": 512}, writer=kernel)
    assert "asked for 512 pages of 2048 kB system-wide, the kernel allocated 301" in err.value.msg
    assert "compact=true" in err.value.msg
    assert err.value.details["allocated"] == 301
    assert fs.read_int(POOL_2M) == 16


def test_short_allocation_compacts_and_retries(fs):
    kernel = ShortKernel(fs, cap=301, after_compact=300)
    pathlib.Path(fs.path("/proc/sys/vm")).mkdir(parents=True)
    for name in ("drop_caches", "compact_memory"):
        fs.write("/proc/sys/vm/" + name, 0)
    result = hp.ensure_hugepages(fs, {"count": 512, "compact": True}, writer=kernel)
    assert result["changed"] is True
    assert fs.read_int(POOL_2M) == 512
    assert [c[0] for c in kernel.calls] == [POOL_2M, "/proc/sys/vm/drop_caches", "/proc/sys/vm/compact_memory", POOL_2M]


def test_short_allocation_kept_when_partial_allowed(fs):
    result = hp.ensure_hugepages(fs, {"nodes": {0: 100}, "allow_partial": True}, writer=ShortKernel(fs, cap=40))
    assert fs.read_int(node_pool(0)) == 40
    assert any("the kernel allocated 40" in w for w in result["warnings"])


def test_lowering_below_use_warns_about_surplus(fs):
    fs.write("/sys/kernel/mm/hugepages/hugepages-2048kB/surplus_hugepages", 6)
    result = hp.ensure_hugepages(fs, {"count": 2})
    assert result["changed"] is True
    assert any("6 pages are in use" in w for w in result["warnings"])


def test_persistent_default_size_uses_sysctl(fs):
    result = hp.ensure_hugepages(fs, {"count": 24, "persistent": True})
    assert result["files"] == [hp.SYSCTL_FILE]
    assert "vm.nr_hugepages = 24\n" in pathlib.Path(fs.path(hp.SYSCTL_FILE)).read_text()
    assert result["reboot_required"] is False
    removed = hp.ensure_hugepages(fs, {"state": "absent", "persistent": True})
    assert hp.SYSCTL_FILE in removed["files"]
    assert not fs.exists(hp.SYSCTL_FILE)


def test_persistent_gigantic_pages_go_to_the_kernel_command_line(fs):
    result = hp.ensure_hugepages(fs, {"size": "1G", "nodes": {0: 2, 1: 1}, "persistent": True, "allow_partial": True})
    grub = hp.GRUB_FILE % 1048576
    assert result["reboot_required"] is True
    assert result["commands_skipped"] == [["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]]
    assert 'hugepagesz=1G hugepages=0:2,1:1"' in pathlib.Path(fs.path(grub)).read_text()
    again = hp.ensure_hugepages(fs, {"size": "1G", "nodes": {0: 2, 1: 1}, "persistent": True})
    assert again["changed"] is again["reboot_required"] is False


def test_mount_goes_to_fstab(fs):
    pathlib.Path(fs.path("/etc/fstab")).write_text("# static\nUUID=1 / ext4 defaults 0 1\n")
    params = {"size": "1G", "count": 0, "mount": "/dev/hugepages1G-test"}
    result = hp.ensure_hugepages(fs, params)
    assert result["changed"] is True
    assert result["commands_skipped"] == [["mount", "-t", "hugetlbfs", "-o", "pagesize=1G", "hugetlbfs", "/dev/hugepages1G-test"]]
    fstab = pathlib.Path(fs.path("/etc/fstab")).read_text()
    assert fstab == "# static\nUUID=1 / ext4 defaults 0 1\nhugetlbfs /dev/hugepages1G-test hugetlbfs pagesize=1G 0 0\n"
    assert fs.isdir("/dev/hugepages1G-test")
    # already mounted (as the fake /proc/mounts says for /dev/hugepages1G) and in fstab: nothing to do
    pathlib.Path(fs.path("/etc/fstab")).write_text(fstab.replace("-test", ""))
    assert hp.ensure_hugepages(fs, dict(params, mount="/dev/hugepages1G"))["changed"] is False


@pytest.mark.parametrize("params, message", [
    ({"size": "3M", "count": 1}, "no /sys/kernel/mm/hugepages/hugepages-3072kB pool"),
    ({"size": "huge", "count": 1}, "is not a page size"),
    ({"count": 10000000}, "asked for 10000000 pages of 2048 kB"),
    ({"nodes": {5: 1}}, "NUMA node 5 does not exist"),
    ({"nodes": {0: 5000}}, "on node 0, but it has only 8192 MiB"),
    ({}, "needs count"),
])
def test_bad_input_changes_nothing(fs, params, message):
    with pytest.raises(ValidationError) as err:
        hp.ensure_hugepages(fs, params)
    assert message in err.value.msg
    assert fs.read_int(POOL_2M) == 16
    assert fs.read_int(node_pool(0)) == 8
