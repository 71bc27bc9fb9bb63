# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import multiprocessing
import os
import pathlib
import subprocess

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _hugepages as hp
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends

POOL_2M = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
POOL_1G = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"


def node_pool(node, size_kb=2048):
    return "/sys/devices/system/node/node%d/hugepages/hugepages-%dkB/nr_hugepages" % (node, size_kb)


def ensure(fs, params, check_mode=False, **kwargs):
    """The module's entry point on a fake root (confined: no command runs)."""
    return hp.ensure_hugepages(Backends(hostfs=fs, root=fs.root), params, check_mode, **kwargs)


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


@pytest.mark.parametrize(
    "params, path, value",
    [
        ({"count": 20}, POOL_2M, 20),
        ({"size": "2048kB", "count": 4}, POOL_2M, 4),
        ({"size": "1G", "count": 2}, POOL_1G, 2),
        ({"nodes": {0: 3, "1": 5}}, node_pool(1), 5),
        ({"size": "1G", "nodes": {"node1": 1}}, node_pool(1, 1048576), 1),
    ],
)
def test_allocation_then_idempotent(fs, params, path, value):
    first = ensure(fs, params)
    assert first["changed"] is True
    assert fs.read_int(path) == value
    assert ensure(fs, params)["changed"] is False


def test_check_mode_predicts_the_real_run(fs):
    params = {"nodes": {0: 2, 1: 12}, "persistent": True}
    checked = ensure(fs, params, check_mode=True)
    assert fs.read_int(node_pool(1)) == 8
    assert not fs.exists(hp.TMPFILES_FILE % 2048)
    real = ensure(fs, params)
    assert checked["changed"] is real["changed"] is True
    assert checked["diff"] == real["diff"]
    assert checked["after"]["nodes"]["1"]["total"] == real["after"]["nodes"]["1"]["total"] == 12
    assert "nr_hugepages on node 1 = 8" in real["diff"]["before"]
    assert "nr_hugepages on node 1 = 12" in real["diff"]["after"]


def test_at_least_never_lowers(fs):
    result = ensure(fs, {"count": 4, "mode": "at_least"})
    assert result["changed"] is False
    assert fs.read_int(POOL_2M) == 16
    assert ensure(fs, {"count": 30, "mode": "at_least"})["changed"] is True
    assert fs.read_int(POOL_2M) == 30


def test_state_absent_empties_the_pool(fs):
    assert ensure(fs, {"state": "absent"})["changed"] is True
    assert fs.read_int(POOL_2M) == 0


def test_short_allocation_is_restored_and_fails(fs):
    kernel = ShortKernel(fs, cap=301)
    with pytest.raises(HostError) as err:
        ensure(fs, {"count": 512}, writer=kernel)
    assert "asked for 512 pages of 2048 kB system-wide, the kernel allocated 301" in err.value.msg
    assert "compact=true" in err.value.msg
    assert err.value.details["allocated"] == 301
    assert fs.read_int(POOL_2M) == 16


def test_short_allocation_compacts_and_retries(fs):
    kernel = ShortKernel(fs, cap=301, after_compact=300)
    pathlib.Path(fs.path("/proc/sys/vm")).mkdir(parents=True)
    for name in ("drop_caches", "compact_memory"):
        fs.write("/proc/sys/vm/" + name, 0)
    result = ensure(fs, {"count": 512, "compact": True}, writer=kernel)
    assert result["changed"] is True
    assert fs.read_int(POOL_2M) == 512
    assert [c[0] for c in kernel.calls] == [POOL_2M, "/proc/sys/vm/drop_caches", "/proc/sys/vm/compact_memory", POOL_2M]


def test_short_allocation_kept_when_partial_allowed(fs):
    result = ensure(fs, {"nodes": {0: 100}, "allow_partial": True}, writer=ShortKernel(fs, cap=40))
    assert fs.read_int(node_pool(0)) == 40
    assert any("the kernel allocated 40" in w for w in result["warnings"])


def test_lowering_below_use_warns_about_surplus(fs):
    fs.write("/sys/kernel/mm/hugepages/hugepages-2048kB/surplus_hugepages", 6)
    result = ensure(fs, {"count": 2})
    assert result["changed"] is True
    assert any("6 pages are in use" in w for w in result["warnings"])


def test_persistent_default_size_uses_sysctl(fs):
    result = ensure(fs, {"count": 24, "persistent": True})
    assert result["files"] == [hp.SYSCTL_FILE]
    assert "vm.nr_hugepages = 24\n" in pathlib.Path(fs.path(hp.SYSCTL_FILE)).read_text()
    assert result["reboot_required"] is False
    removed = ensure(fs, {"state": "absent", "persistent": True})
    assert hp.SYSCTL_FILE in removed["files"]
    assert not fs.exists(hp.SYSCTL_FILE)


def test_persistent_gigantic_pages_go_to_the_kernel_command_line(fs):
    result = ensure(fs, {"size": "1G", "nodes": {0: 2, 1: 1}, "persistent": True, "allow_partial": True})
    grub = hp.GRUB_FILE % 1048576
    assert result["reboot_required"] is True
    assert result["commands_skipped"] == [["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]]
    assert 'hugepagesz=1G hugepages=0:2,1:1"' in pathlib.Path(fs.path(grub)).read_text()
    again = ensure(fs, {"size": "1G", "nodes": {0: 2, 1: 1}, "persistent": True})
    assert again["changed"] is again["reboot_required"] is False


def test_mount_goes_to_fstab(fs):
    pathlib.Path(fs.path("/etc/fstab")).write_text("# static\nUUID=1 / ext4 defaults 0 1\n")
    params = {"size": "1G", "count": 0, "mount": "/dev/hugepages1G-test"}
    result = ensure(fs, params)
    assert result["changed"] is True
    assert result["commands_skipped"] == [["mount", "-t", "hugetlbfs", "-o", "pagesize=1G", "hugetlbfs", "/dev/hugepages1G-test"]]
    fstab = pathlib.Path(fs.path("/etc/fstab")).read_text()
    assert fstab == "# static\nUUID=1 / ext4 defaults 0 1\nhugetlbfs /dev/hugepages1G-test hugetlbfs pagesize=1G 0 0\n"
    assert fs.isdir("/dev/hugepages1G-test")
    # already mounted (as the fake /proc/mounts says for /dev/hugepages1G) and in fstab: nothing to do
    pathlib.Path(fs.path("/etc/fstab")).write_text(fstab.replace("-test", ""))
    assert ensure(fs, dict(params, mount="/dev/hugepages1G"))["changed"] is False


@pytest.mark.parametrize(
    "params, message",
    [
        ({"size": "3M", "count": 1}, "no /sys/kernel/mm/hugepages/hugepages-3072kB pool"),
        ({"size": "huge", "count": 1}, "is not a page size"),
        ({"count": 10000000}, "asked for 10000000 pages of 2048 kB"),
        ({"nodes": {5: 1}}, "NUMA node 5 does not exist"),
        ({"nodes": {0: 5000}}, "on node 0, but it has only 8192 MiB"),
        ({}, "needs count"),
    ],
)
def test_bad_input_changes_nothing(fs, params, message):
    with pytest.raises(ValidationError) as err:
        ensure(fs, params)
    assert message in err.value.msg
    assert fs.read_int(POOL_2M) == 16
    assert fs.read_int(node_pool(0)) == 8


# -- fstab: only hugetlbfs lines, validated mount points (issue 11 item 1) -------------------------
FSTAB_TEXT = "# static\nUUID=1 / ext4 defaults 0 1\nUUID=2 /home ext4 defaults 0 2\r\n\f\nhugetlbfs /dev/hp2 hugetlbfs pagesize=2M 0 0\n"


@pytest.fixture
def fstab(fs):
    path = pathlib.Path(fs.path("/etc/fstab"))
    path.write_text(FSTAB_TEXT, newline="")
    return path


@pytest.mark.parametrize("state", ["present", "absent"])
@pytest.mark.parametrize("mount", ["/", "/home", "/home/"])
def test_bad_input_mount_of_another_fstype_is_refused(fs, fstab, mount, state):
    with pytest.raises(ValidationError) as err:
        ensure(fs, {"count": 16, "mount": mount, "state": state})
    assert ("ext4" in err.value.msg and "left untouched" in err.value.msg) or "root file system" in err.value.msg
    assert fstab.read_bytes() == FSTAB_TEXT.encode()
    assert fs.read_int(POOL_2M) == 16


@pytest.mark.parametrize(
    "mount, message",
    [
        ("relative/dir", "not absolute"),
        ("/dev/hp\nUUID=3 / ext4 defaults 0 1", "control characters"),
        ("/dev/hp\t1", "control characters"),
        (" /dev/hp", "surrounding white space"),
        ("/dev/hp/../../etc", "'..'"),
    ],
)
def test_bad_input_mount_path_is_validated(fs, fstab, mount, message):
    with pytest.raises(ValidationError) as err:
        ensure(fs, {"count": 16, "mount": mount})
    assert message in err.value.msg
    assert fstab.read_bytes() == FSTAB_TEXT.encode()


def test_bad_input_mount_over_another_mounted_fs_is_refused(fs, fstab):
    with open(fs.path("/proc/mounts"), "a", encoding="utf-8") as handle:
        handle.write("/dev/sda3 /srv ext4 rw 0 0\n")
    with pytest.raises(ValidationError, match="in use as a ext4 file system"):
        ensure(fs, {"count": 16, "mount": "/srv"})
    assert fstab.read_bytes() == FSTAB_TEXT.encode()


def test_mount_with_a_space_is_octal_escaped_and_other_lines_kept_byte_for_byte(fs, fstab):
    result = ensure(fs, {"size": "1G", "count": 0, "mount": "/dev/huge pages"})
    assert result["changed"] is True
    assert fstab.read_bytes() == (FSTAB_TEXT + "hugetlbfs /dev/huge\\040pages hugetlbfs pagesize=1G 0 0\n").encode()
    assert result["commands_skipped"][-1][-1] == "/dev/huge pages"
    assert fs.isdir("/dev/huge pages")
    # the escaped line is recognised again, as /proc/mounts writes it once mounted
    with open(fs.path("/proc/mounts"), "a", encoding="utf-8") as handle:
        handle.write("hugetlbfs /dev/huge\\040pages hugetlbfs rw,pagesize=1024M 0 0\n")
    assert ensure(fs, {"size": "1G", "count": 0, "mount": "/dev/huge pages"})["changed"] is False
    removed = ensure(fs, {"size": "1G", "state": "absent", "mount": "/dev/huge pages"})
    assert removed["changed"] is True
    assert fstab.read_bytes() == FSTAB_TEXT.encode()


def test_absent_mount_removes_only_its_hugetlbfs_line(fs, fstab):
    result = ensure(fs, {"state": "absent", "mount": "/dev/hp2"})
    assert result["changed"] is True
    assert fstab.read_bytes() == FSTAB_TEXT.replace("hugetlbfs /dev/hp2 hugetlbfs pagesize=2M 0 0\n", "").encode()


def test_parse_size_kb_rides_on_the_shared_parser():
    assert hp.parse_size_kb("2048kB") == 2048  # the kernel's kB are KiB
    assert hp.parse_size_kb("1GB") == 1048576
    with pytest.raises(ValidationError, match="too large"):
        hp.parse_size_kb("99999999999999999G")


# -- locking (item 9) and read-only /etc (item 12) ---------------------------------------------------
def _add_mount(root, index):
    ensure(HostFS(root), {"size": "1G", "count": 0, "mount": "/dev/hp-%d" % index})


def test_fault_concurrent_fstab_runs_all_land(fs, fstab):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_mount, args=(fs.root, index)) for index in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    text = fstab.read_text()
    assert text.startswith(FSTAB_TEXT.replace("\r\n", "\n"))
    for index in range(8):
        assert "hugetlbfs /dev/hp-%d hugetlbfs pagesize=1G 0 0\n" % index in text


def test_persistent_per_node_rule_keeps_other_nodes(fs):
    ensure(fs, {"size": "1G", "nodes": {0: 1}, "persistent": True, "allow_partial": True})
    text = pathlib.Path(fs.path(hp.TMPFILES_FILE % 2048)).read_text() if fs.exists(hp.TMPFILES_FILE % 2048) else ""
    assert text == ""  # 1 GiB pages go to the command line, not tmpfiles
    ensure(fs, {"nodes": {0: 3}, "persistent": True})
    ensure(fs, {"nodes": {1: 5}, "persistent": True})
    rule = pathlib.Path(fs.path(hp.TMPFILES_FILE % 2048)).read_text()
    assert "node0/hugepages/hugepages-2048kB/nr_hugepages - - - - 3\n" in rule
    assert "node1/hugepages/hugepages-2048kB/nr_hugepages - - - - 5\n" in rule


@pytest.fixture
def readonly_etc(fs):
    etc = fs.path("/etc")
    pathlib.Path(etc, "sysctl.d").mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    subprocess.run(["mount", "--bind", etc, etc], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", etc, etc], check=True)
        yield etc
    finally:
        subprocess.run(["umount", etc], check=True)


def test_fault_readonly_etc_changes_no_pages(fs, readonly_etc):
    with pytest.raises(HostError) as err:
        ensure(fs, {"count": 24, "persistent": True})
    assert "Read-only file system" in err.value.msg
    assert "nothing was changed" in err.value.msg and "counts were not touched" in err.value.msg
    assert fs.read_int(POOL_2M) == 16
    # check mode still predicts the change without writing
    assert ensure(fs, {"count": 24, "persistent": True}, check_mode=True)["changed"] is True


def test_fault_file_write_failing_after_allocation_says_pages_changed(fs, monkeypatch):
    monkeypatch.setattr(hp, "unwritable", lambda _fs, _paths: {})

    def fail(*_args, **_kwargs):
        raise HostError("cannot write /etc/sysctl.d/80-virtops-hugepages.conf: the file system is read-only; nothing was written to it")

    monkeypatch.setattr(fs, "write_atomic", fail)
    with pytest.raises(HostError) as err:
        ensure(fs, {"count": 24, "persistent": True})
    assert "hugepage counts were already changed (24 pages system-wide)" in err.value.msg
    assert fs.read_int(POOL_2M) == 24
