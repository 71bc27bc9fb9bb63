# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kernel_cmdline on fake trees of each boot layout: GRUB drop-in, grubby BLS entries, kernel-install."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS
from ansible_collections.virtops.kvm.plugins.module_utils._kernel_cmdline import DROPIN, apply_arguments, ensure_kernel_cmdline
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends


class Commands:
    def __init__(self):
        self.ran = []

    def run(self, args, **_kwargs):
        self.ran.append(list(args))
        return 0, "", ""


def _write(root, path, text):
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def _tree(tmp_path, layout):
    root = tmp_path / layout
    _write(root, "/proc/cmdline", "BOOT_IMAGE=/boot/vmlinuz-6.1 root=/dev/vda1 ro console=ttyS0 quiet\n")
    if layout == "grub":
        _write(root, "/etc/default/grub", 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="console=ttyS0 hugepages=4"\n')
        _write(root, "/etc/default/grub.d/50-cloud.cfg", 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX net.ifnames=0"\n')
        _write(root, "/usr/sbin/update-grub", "")
    elif layout == "grubby":
        _write(root, "/usr/sbin/grubby", "")
        for version in ("5.14.0-1", "5.14.0-2"):
            _write(
                root,
                "/boot/loader/entries/abc-%s.conf" % version,
                "title EL\nversion %s\nlinux /vmlinuz-%s\noptions root=/dev/vda1 ro console=ttyS0 hugepages=4\n" % (version, version),
            )
        _write(root, "/etc/kernel/cmdline", "root=/dev/vda1 ro console=ttyS0 hugepages=4\n")
    else:
        _write(root, "/boot/efi/loader/loader.conf", "timeout 0\n")
        _write(root, "/etc/kernel/cmdline", "root=/dev/vda1 ro console=ttyS0 hugepages=4\n")
        _write(root, "/lib/modules/6.1.0-1/vmlinuz", "")
    return root


def _run(root, check_mode=False, commands=None, **params):
    params.setdefault("state", "present")
    params.setdefault("bootloader", "auto")
    backends = Backends(hostfs=HostFS(str(root)), commands=commands or Commands(), netlink=None, root=str(root))
    return ensure_kernel_cmdline(backends, params, check_mode)


@pytest.mark.parametrize(
    ("tokens", "arguments", "state", "after"),
    [
        (["a", "hugepages=4"], ["hugepages=8"], "present", ["a", "hugepages=8"]),
        (["a", "hugepages=8"], ["hugepages=8"], "present", ["a", "hugepages=8"]),
        (
            ["hugepagesz=1G", "hugepages=4"],
            ["hugepagesz=1G", "hugepages=4", "hugepagesz=2M", "hugepages=8"],
            "present",
            ["hugepagesz=1G", "hugepages=4", "hugepagesz=2M", "hugepages=8"],
        ),
        (["a", "iommu=pt", "quiet"], ["iommu"], "absent", ["a", "quiet"]),
        (["a", "iommu=pt"], ["iommu=off"], "absent", ["a", "iommu=pt"]),
    ],
)
def test_apply_arguments_replaces_by_key(tokens, arguments, state, after):
    assert apply_arguments(tokens, arguments, state) == after


def test_grub_dropin_replaces_key_and_runs_update_grub_only_on_real_root(tmp_path):
    root = _tree(tmp_path, "grub")
    result = _run(root, arguments=["intel_iommu=on", "hugepages=64"])
    dropin = (root / DROPIN.lstrip("/")).read_text()
    assert result["changed"] and result["bootloader"] == "grub"
    assert 'GRUB_CMDLINE_LINUX="console=ttyS0 net.ifnames=0 intel_iommu=on hugepages=64"' in dropin
    assert "GRUB_CMDLINE_LINUX_DEFAULT" not in dropin
    assert result["cmdline"] == "console=ttyS0 net.ifnames=0 intel_iommu=on hugepages=64 quiet"
    assert result["commands"] == [] and result["skipped_commands"] == [["update-grub"]]
    assert "was not run" in result["warnings"][0]
    assert result["reboot_required"] and not result["active"]
    assert not _run(root, arguments=["intel_iommu=on", "hugepages=64"])["changed"]


def test_grub_absent_from_default_rewrites_it(tmp_path):
    root = _tree(tmp_path, "grub")
    result = _run(root, arguments=["quiet"], state="absent")
    assert result["changed"] and 'GRUB_CMDLINE_LINUX_DEFAULT=""' in (root / DROPIN.lstrip("/")).read_text()
    assert result["reboot_required"]
    assert not _run(root, arguments=["quiet"], state="absent")["changed"]
    back = _run(root, arguments=["quiet"])
    assert back["changed"] and back["cmdline"].endswith("quiet")


def test_grub_stale_grub_cfg_is_regenerated(tmp_path):
    root = _tree(tmp_path, "grub")
    _run(root, arguments=["intel_iommu=on"])
    _write(root, "/boot/grub/grub.cfg", "menuentry x {\n  linux /boot/vmlinuz-6.1 root=UUID=1 ro console=ttyS0 quiet\n}\n")
    result = _run(root, arguments=["intel_iommu=on"])
    assert result["changed"] and result["skipped_commands"] == [["update-grub"]]


def test_active_when_running_kernel_has_them(tmp_path):
    root = _tree(tmp_path, "grub")
    result = _run(root, arguments=["console=ttyS0"])
    assert not result["changed"] and result["active"] and not result["reboot_required"]


def test_check_mode_predicts_and_writes_nothing(tmp_path):
    root = _tree(tmp_path, "grub")
    result = _run(root, check_mode=True, arguments=["iommu=pt"])
    assert result["changed"] and not (root / DROPIN.lstrip("/")).exists()
    assert result["skipped_commands"] == [["update-grub"]] and result["warnings"] == []
    real = _run(root, arguments=["iommu=pt"])
    assert real["changed"] and real["diff"] == result["diff"]


def test_grubby_updates_every_entry_and_kernel_cmdline(tmp_path):
    root = _tree(tmp_path, "grubby")
    result = _run(root, arguments=["hugepages=16", "iommu=pt"])
    assert result["bootloader"] == "grubby" and result["changed"]
    for version in ("5.14.0-1", "5.14.0-2"):
        assert "options root=/dev/vda1 ro console=ttyS0 hugepages=16 iommu=pt\n" in (root / ("boot/loader/entries/abc-%s.conf" % version)).read_text()
    assert (root / "etc/kernel/cmdline").read_text() == "root=/dev/vda1 ro console=ttyS0 hugepages=16 iommu=pt\n"
    assert result["skipped_commands"] == [["grubby", "--update-kernel=ALL", "--remove-args=hugepages=4", "--args=hugepages=16 iommu=pt"]]
    assert not _run(root, arguments=["hugepages=16", "iommu=pt"])["changed"]


def test_kernel_install_writes_cmdline_and_lists_kernels(tmp_path):
    root = _tree(tmp_path, "kernel-install")
    result = _run(root, arguments=["hugepages"], state="absent")
    assert result["bootloader"] == "kernel-install" and result["changed"]
    assert (root / "etc/kernel/cmdline").read_text() == "root=/dev/vda1 ro console=ttyS0\n"
    assert result["skipped_commands"] == [["kernel-install", "add", "6.1.0-1", "/lib/modules/6.1.0-1/vmlinuz"]]
    assert not _run(root, arguments=["hugepages"], state="absent")["changed"]


def test_real_root_runs_the_tool(tmp_path, monkeypatch):
    """On / the command runs (the fake runner records it; the tree stands in for / through HostFS)."""
    root = _tree(tmp_path, "grub")
    commands = Commands()
    backends = Backends(hostfs=HostFS(str(root)), commands=commands, netlink=None, root="/")
    result = ensure_kernel_cmdline(backends, {"arguments": ["iommu=pt"], "state": "present", "bootloader": "auto"}, False)
    assert result["commands"] == [["update-grub"]] and commands.ran == [["update-grub"]] and result["skipped_commands"] == []


@pytest.mark.parametrize(
    "argument",
    ["", "a b", 'x="y"', "x=$(reboot)", "x=`id`", "a;b", "-x", "x=a\\b", "x=1\n", None],
)
def test_bad_input_argument_refused_and_tree_untouched(tmp_path, argument):
    root = _tree(tmp_path, "grub")
    with pytest.raises(ValidationError, match="not a kernel argument"):
        _run(root, arguments=["iommu=pt", argument])
    assert not (root / DROPIN.lstrip("/")).exists()


def test_bad_input_no_bootloader_found(tmp_path):
    root = tmp_path / "empty"
    _write(root, "/proc/cmdline", "quiet\n")
    with pytest.raises(HostError, match="no bootloader configuration found"):
        _run(root, arguments=["iommu=pt"])
