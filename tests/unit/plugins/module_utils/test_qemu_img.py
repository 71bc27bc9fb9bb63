# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qemu_img logic against the real qemu-img / qemu-nbd on images in a temp directory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _image as image_mod
from ansible_collections.virtops.kvm.plugins.module_utils import _qemu_img as q
from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError, HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._qemu_img_info import ensure_qemu_img_info
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


class SubprocessRunner:
    """Same interface as CommandRunner.run, on subprocess (records every command line)."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def which(name, required=False):
        return shutil.which(name)

    def run(self, args, check=True, data=None, what=None):
        self.calls.append(list(args))
        proc = subprocess.run(args, input=data, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise CommandError("%s failed: %s" % (what or args[0], proc.stderr), rc=proc.returncode, stderr=proc.stderr)
        return proc.returncode, proc.stdout, proc.stderr


class Tool:
    """The unit under test: ensure_qemu_img / ensure_qemu_img_info on a recording runner."""

    def __init__(self):
        self.runner = SubprocessRunner()
        self.backends = Backends(commands=self.runner, netlink=None)

    def __call__(self, p, check_mode=False):
        if p["action"] == "info":
            return ensure_qemu_img_info(self.backends, {"path": p["path"]}, check_mode)
        return q.ensure_qemu_img(self.backends, p, check_mode)

    def bitmap_dirty_ranges(self, path, names):
        return q.ImageTool(self.runner).bitmap_dirty_ranges(path, names)


@pytest.fixture
def img():
    return Tool()


def apply(tool, p, check_mode=False):
    return tool(p, check_mode)


def params(path, **kw):
    base = dict(
        path=str(path),
        action="info",
        format=None,
        size=None,
        backing_file=None,
        backing_format=None,
        compression_type=None,
        preallocation=None,
        extent_size_hint=None,
        cluster_size=None,
        encrypt=False,
        secret=None,
        new_secret=None,
        old_secret=None,
        keyslot=None,
        keyslot_state="active",
        iter_time=100,
        source=None,
        source_format=None,
        compress=False,
        allow_shrink=False,
        force=False,
        bitmap=None,
        bitmap_state="present",
        granularity=None,
        merge_from=None,
    )
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "text,expected",
    [
        ("512", 512),
        (1024, 1024),
        ("10K", 10240),
        ("1M", 1 << 20),
        ("10G", 10 << 30),
        ("10GiB", 10 << 30),
        ("10gb", 10 * 1000**3),
        ("2T", 2 << 40),
        ("100B", 100),
        (" 4 M ", 4 << 20),
    ],
)
def test_sizes_are_read_by_the_one_size_parser(text, expected):
    assert q.validate_request(params("/x.qcow2", action="create", size=text))["size"] == expected


@pytest.mark.parametrize("text", ["ten", "10X", "-1", "G", "1.2.3M", "1.5G", "9E"])
def test_bad_input_size_is_refused_before_anything_runs(text):
    with pytest.raises(ValidationError, match=r"is not a size|unknown size unit|too large"):
        q.validate_request(params("/x.qcow2", action="create", size=text))


@pytest.mark.parametrize(
    "outer,inner,expected",
    [
        ([(0, 100)], [(10, 20)], True),
        ([(0, 100)], [], True),
        ([], [(0, 1)], False),
        ([(0, 50), (60, 100)], [(40, 70)], False),
        ([(0, 50), (60, 100)], [(0, 50), (70, 80)], True),
        ([(0, 65536)], [(0, 131072)], False),
    ],
)
def test_ranges_cover(outer, inner, expected):
    assert q.ranges_cover(outer, inner) is expected


def test_dirty_ranges_joins_adjacent_extents():
    extents = [
        {"start": 0, "length": 10, "data": False},
        {"start": 10, "length": 5, "data": False},
        {"start": 15, "length": 5, "data": True},
        {"start": 20, "length": 4, "data": False},
    ]
    assert q.dirty_ranges(extents) == [(0, 15), (20, 24)]


def test_secrets_live_in_memory_only():
    with q.secret_objects({"sec0": b"pass,word"}) as args:
        assert args[0] == "--object"
        path = args[1].split("file=", 1)[1]
        assert path.startswith("/proc/%d/fd/" % os.getpid())
        fd = int(path.rsplit("/", 1)[1])
        assert os.readlink(path).startswith("/memfd:")
        with open(path, "rb") as handle:
            assert handle.read() == b"pass,word"
    with pytest.raises(OSError):
        os.fstat(fd)


def test_info_of_missing_file(img, tmp_path):
    result = apply(img, params(tmp_path / "none.qcow2"))
    assert result == {"changed": False, "exists": False, "image": {}, "summary": {}, "warnings": []}


@pytest.mark.parametrize("compression", ["zstd", "zlib"])
def test_create_is_idempotent_and_check_mode_agrees(img, tmp_path, compression):
    p = params(tmp_path / "a.qcow2", action="create", size="16M", compression_type=compression)
    checked = apply(img, p, check_mode=True)
    assert checked["changed"] and not checked["exists"]
    assert not (tmp_path / "a.qcow2").exists()
    first = apply(img, p)
    assert first["changed"] and first["summary"]["compression_type"] == compression and first["summary"]["virtual_size"] == 16 << 20
    assert '"compression_type": "%s"' % compression in first["diff"]["after"]
    second = apply(img, p)
    assert not second["changed"] and second["diff"]["before"] == second["diff"]["after"]


def test_create_refuses_to_overwrite_a_different_image_unless_forced(img, tmp_path):
    path = tmp_path / "a.qcow2"
    apply(img, params(path, action="create", size="16M"))
    with pytest.raises(ValidationError, match="exists and differs: virtual_size is 16777216, asked for 33554432"):
        apply(img, params(path, action="create", size="32M"))
    assert apply(img, params(path))["summary"]["virtual_size"] == 16 << 20
    forced = apply(img, params(path, action="create", size="32M", force=True))
    assert forced["changed"] and forced["summary"]["virtual_size"] == 32 << 20


def test_overlay_takes_backing_size_and_format(img, tmp_path):
    apply(img, params(tmp_path / "base.raw", action="create", format="raw", size="8M"))
    p = params(tmp_path / "top.qcow2", action="create", backing_file="base.raw")
    first = apply(img, p)
    assert first["changed"]
    assert first["summary"]["backing_file"] == str(tmp_path / "base.raw")
    assert first["summary"]["backing_format"] == "raw" and first["summary"]["virtual_size"] == 8 << 20
    assert not apply(img, p)["changed"]


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(format="raw", encrypt=True, secret="x"), "encrypt=true is for qcow2"),
        (dict(format="luks"), "needs secret"),
        (dict(format="raw", compression_type="zstd"), "compression_type is a qcow2 option"),
        (dict(size=None), "needs size"),
        (dict(backing_file="/nonexistent/virtops-base.qcow2", size=None), "backing_file /nonexistent/virtops-base.qcow2 does not exist"),
        (dict(size="lots"), "is not a size"),
    ],
)
def test_create_bad_input_leaves_nothing(img, tmp_path, kw, message):
    kw = dict(dict(action="create", size="1M"), **kw)
    with pytest.raises(ValidationError, match=message):
        apply(img, params(tmp_path / "bad.img", **kw))
    assert not (tmp_path / "bad.img").exists()


def test_convert_skips_identical_destination(img, tmp_path):
    src = tmp_path / "src.raw"
    with open(src, "wb") as handle:
        handle.truncate(4 << 20)
        handle.seek(1 << 20)
        handle.write(b"virtops" * 1000)
    p = params(tmp_path / "dst.qcow2", action="convert", source=str(src), compress=True, compression_type="zstd")
    assert apply(img, p, check_mode=True)["changed"]
    first = apply(img, p)
    assert first["changed"] and first["reasons"] == ["%s does not exist" % (tmp_path / "dst.qcow2")]
    assert first["summary"]["compression_type"] == "zstd"
    second = apply(img, p)
    assert not second["changed"] and second["reasons"] == []
    with open(src, "r+b") as handle:
        handle.seek(2 << 20)
        handle.write(b"changed")
    third = apply(img, p, check_mode=True)
    assert third["changed"] and third["reasons"] == ["content differs (qemu-img compare)"]
    assert apply(img, p)["changed"] and not apply(img, p)["changed"]
    assert not [f for f in os.listdir(tmp_path) if "virtops-convert" in f]


def test_convert_missing_source(img, tmp_path):
    with pytest.raises(ValidationError, match=r"source image .*missing\.raw does not exist"):
        apply(img, params(tmp_path / "dst.qcow2", action="convert", source=str(tmp_path / "missing.raw")))
    assert not (tmp_path / "dst.qcow2").exists()


def test_resize_grows_and_refuses_shrink(img, tmp_path):
    path = tmp_path / "r.qcow2"
    apply(img, params(path, action="create", size="8M"))
    grown = apply(img, params(path, action="resize", size="16M"))
    assert grown["changed"] and grown["summary"]["virtual_size"] == 16 << 20
    assert not apply(img, params(path, action="resize", size="16M"))["changed"]
    with pytest.raises(ValidationError, match="set allow_shrink=true"):
        apply(img, params(path, action="resize", size="4M"))
    assert apply(img, params(path))["summary"]["virtual_size"] == 16 << 20
    shrunk = apply(img, params(path, action="resize", size="4M", allow_shrink=True))
    assert shrunk["changed"] and shrunk["summary"]["virtual_size"] == 4 << 20


@pytest.mark.parametrize("kind", [dict(format="luks"), dict(format="qcow2", encrypt=True)], ids=["luks", "qcow2-luks"])
def test_keyslot_round_trip(img, tmp_path, kind):
    path = tmp_path / "enc.img"
    created = apply(img, params(path, action="create", size="4M", secret="first", **kind))
    assert created["summary"]["active_keyslots"] == [0] and created["summary"]["encrypted"]
    add = params(path, action="amend", secret="first", new_secret="second")
    assert apply(img, add, check_mode=True)["changed"]
    added = apply(img, add)
    assert added["changed"] and added["summary"]["active_keyslots"] == [0, 1]
    assert not apply(img, add)["changed"]
    # wrong authenticating passphrase: refused, nothing changed
    with pytest.raises(ValidationError, match="secret does not open"):
        apply(img, params(path, action="amend", secret="wrong", new_secret="third"))
    remove = params(path, action="amend", keyslot_state="inactive", secret="second", old_secret="first")
    removed = apply(img, remove)
    assert removed["changed"] and removed["summary"]["active_keyslots"] == [1]
    assert not apply(img, remove)["changed"]
    # last keyslot: refused without force
    with pytest.raises(ValidationError, match="no active keyslot"):
        apply(img, params(path, action="amend", keyslot_state="inactive", secret="second", keyslot=1))
    assert apply(img, params(path))["summary"]["active_keyslots"] == [1]
    # a specific slot that holds another passphrase
    with pytest.raises(ValidationError, match=r"keyslot 1 of .* holds another passphrase"):
        apply(img, params(path, action="amend", secret="second", new_secret="third", keyslot=1))
    placed = apply(img, params(path, action="amend", secret="second", new_secret="third", keyslot=5))
    assert placed["summary"]["active_keyslots"] == [1, 5]
    by_slot = apply(img, params(path, action="amend", keyslot_state="inactive", secret="second", keyslot=5))
    assert by_slot["changed"] and by_slot["summary"]["active_keyslots"] == [1]
    for call in img.runner.calls:
        assert not {"first", "second", "third", "wrong"} & set(" ".join(call).replace(",", " ").replace("=", " ").split())


def test_amend_on_plain_image_is_refused(img, tmp_path):
    path = tmp_path / "plain.qcow2"
    apply(img, params(path, action="create", size="1M"))
    with pytest.raises(ValidationError, match="without LUKS encryption"):
        apply(img, params(path, action="amend", secret="a", new_secret="b"))


def test_bitmaps(img, tmp_path):
    path = tmp_path / "b.qcow2"
    apply(img, params(path, action="create", size="4M"))
    add = params(path, action="bitmap", bitmap="b1")
    assert apply(img, add)["changed"]
    assert not apply(img, add)["changed"]
    assert apply(img, params(path))["summary"]["bitmaps"] == {"b1": {"granularity": 65536, "enabled": True}}
    subprocess.run(["qemu-io", "-c", "write 0 64k", "-f", "qcow2", str(path)], check=True, capture_output=True)
    disabled = params(path, action="bitmap", bitmap="b2", bitmap_state="disabled", granularity="128K")
    first = apply(img, disabled)
    assert first["changed"] and first["summary"]["bitmaps"]["b2"] == {"granularity": 131072, "enabled": False}
    assert not apply(img, disabled)["changed"]
    merge = params(path, action="bitmap", bitmap="b2", bitmap_state="disabled", merge_from=["b1"])
    assert apply(img, merge, check_mode=True)["changed"]
    merged = apply(img, merge)
    assert merged["changed"] and '"merged_from"' in merged["diff"]["after"]
    assert not apply(img, merge)["changed"]
    ranges = img.bitmap_dirty_ranges(str(path), ["b1", "b2"])
    assert ranges["b1"] == [(0, 65536)] and ranges["b2"] == [(0, 131072)]
    enabled = params(path, action="bitmap", bitmap="b2", bitmap_state="enabled")
    assert apply(img, enabled)["changed"] and not apply(img, enabled)["changed"]
    with pytest.raises(ValidationError, match="granularity is fixed"):
        apply(img, params(path, action="bitmap", bitmap="b2", granularity="64K"))
    with pytest.raises(ValidationError, match="does not have"):
        apply(img, params(path, action="bitmap", bitmap="b2", merge_from=["nope"]))
    absent = params(path, action="bitmap", bitmap="b1", bitmap_state="absent")
    assert apply(img, absent)["changed"] and not apply(img, absent)["changed"]
    assert list(apply(img, params(path))["summary"]["bitmaps"]) == ["b2"]


# ---------------------------------------------------------------- regression tests of the reliability issue


def _leftovers(directory):
    return sorted(name for name in os.listdir(directory) if name.startswith(".virtops-"))


def _raw_source(path, size=4 << 20):
    with open(path, "wb") as handle:
        handle.truncate(size)
        handle.seek(1 << 20)
        handle.write(os.urandom(256 << 10))


def test_fault_convert_does_not_follow_a_symlink_planted_at_the_old_temp_name(img, tmp_path):
    """The old code wrote to <path>.virtops-convert-<pid> without O_EXCL: root overwrote the link's target."""
    src, dst = tmp_path / "src.raw", tmp_path / "dst.qcow2"
    _raw_source(src)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(str(victim), "%s.virtops-convert-%d" % (dst, os.getpid()))
    result = apply(img, params(dst, action="convert", source=str(src)))
    assert result["changed"] and result["summary"]["format"] == "qcow2"
    assert victim.read_bytes() == b"precious"
    assert _leftovers(tmp_path) == [] and os.path.islink("%s.virtops-convert-%d" % (dst, os.getpid()))
    convert = next(call for call in img.runner.calls if call[1] == "convert")
    written = convert[-1]
    assert os.path.basename(os.path.dirname(written)).startswith(".virtops-qemu-img-")
    assert os.path.dirname(os.path.dirname(written)) == str(tmp_path)


@pytest.mark.parametrize("action", ["create", "convert"])
def test_bad_input_symlink_destination_is_refused(img, tmp_path, action):
    src = tmp_path / "src.raw"
    _raw_source(src)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "link.qcow2"
    os.symlink(str(victim), str(link))
    kw = dict(source=str(src)) if action == "convert" else dict(size="1M")
    for check_mode in (True, False):
        with pytest.raises(ValidationError, match="is a symbolic link"):
            apply(img, params(link, action=action, **kw), check_mode=check_mode)
    assert victim.read_bytes() == b"precious" and os.path.islink(link)


def test_replacing_keeps_mode_and_owner(img, tmp_path):
    src, dst = tmp_path / "src.raw", tmp_path / "dst.qcow2"
    _raw_source(src)
    apply(img, params(dst, action="create", size="1M"))
    os.chmod(dst, 0o640)
    assert apply(img, params(dst, action="convert", source=str(src)))["changed"]
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o640


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(size="2E"), "qemu-img refuses a qcow2 image of 2305843009213693952 bytes"),
        (dict(size="1M", extent_size_hint="8G"), "Extent size hint is too large"),
        (dict(size="1M", cluster_size="3000"), "cluster_size 3000 is not a power of two"),
        (dict(size="1M", cluster_size="4M"), "cluster_size 4194304 is not a power of two"),
        (dict(size="1M", format="raw", preallocation="metadata"), "preallocation=metadata is for qcow2 and luks"),
        (dict(size="1M", format="raw", cluster_size="64K"), "cluster_size is a qcow2 and qed option"),
        (dict(size="1M", format="luks", secret="x", iter_time=0), "iter_time 0 is not between"),
        (dict(size="1M", backing_format="qcow3"), "backing_format 'qcow3' is not an image format"),
        (dict(size="1M", format="vpc"), None),
        (dict(size="3T", format="vpc"), "qemu-img refuses a vpc image"),
        (dict(size="1M", path_suffix="\n"), "contains control characters"),
    ],
)
def test_bad_input_create_fails_in_check_mode_as_in_the_real_run(img, tmp_path, kw, message):
    kw = dict(kw)
    path = str(tmp_path / ("ba%sd.img" % kw.pop("path_suffix", "")))
    p = params(path, action="create", **kw)
    if message is None:  # the control case: accepted in both modes
        assert apply(img, p, check_mode=True)["changed"] and apply(img, p)["changed"]
        return
    for check_mode in (True, False):
        with pytest.raises(ValidationError, match=message):
            apply(img, p, check_mode=check_mode)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(format="raw", compress=True), "compress=true needs a format with compressed clusters"),
        (dict(format="vdi", compression_type="zstd"), "compression_type is a qcow2 option"),
        (dict(source_format="vmdk"), r"is a raw image, not vmdk \(source_format\)"),
    ],
)
def test_bad_input_convert_fails_in_check_mode_as_in_the_real_run(img, tmp_path, kw, message):
    src = tmp_path / "src.raw"
    _raw_source(src)
    p = params(tmp_path / "dst.img", action="convert", source=str(src), **kw)
    for check_mode in (True, False):
        with pytest.raises(ValidationError, match=message):
            apply(img, p, check_mode=check_mode)
    assert sorted(os.listdir(tmp_path)) == ["src.raw"]


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(action="resize", size="2E"), "qemu-img refuses a qcow2 image"),
        (dict(action="bitmap", bitmap="b", granularity="1000"), "granularity 1000 is not a power of two"),
        (dict(action="bitmap", bitmap="b", granularity="4G"), "granularity 4294967296 is not a power of two"),
        (dict(action="bitmap", bitmap=""), "bitmap name '' is not valid"),
        (dict(action="bitmap", bitmap="x" * 1024), "is not valid: 1 to 1023 characters"),
        (dict(action="amend", secret="a", new_secret="b", keyslot=8), "keyslot 8 does not exist"),
    ],
)
def test_bad_input_other_actions_fail_in_check_mode_as_in_the_real_run(img, tmp_path, kw, message):
    path = tmp_path / "i.qcow2"
    apply(img, params(path, action="create", size="1M"))
    before = apply(img, params(path))["image"]
    for check_mode in (True, False):
        with pytest.raises(ValidationError, match=message):
            apply(img, params(path, **kw), check_mode=check_mode)
    assert apply(img, params(path))["image"] == before


def test_bad_input_info_action_is_gone(img, tmp_path):
    with pytest.raises(ValidationError, match="reading an image is the qemu_img_info module"):
        q.ensure_qemu_img(img.backends, params(tmp_path / "x.qcow2", action="info"), False)


def test_qemu_img_info_reads_the_backing_chain(img, tmp_path):
    apply(img, params(tmp_path / "base.raw", action="create", format="raw", size="2M"))
    apply(img, params(tmp_path / "top.qcow2", action="create", backing_file="base.raw"))
    result = ensure_qemu_img_info(img.backends, {"path": str(tmp_path / "top.qcow2"), "backing_chain": True}, True)
    assert result["changed"] is False and result["exists"]
    assert [link["summary"]["format"] for link in result["chain"]] == ["qcow2", "raw"]
    assert result["summary"]["backing_file"] == str(tmp_path / "base.raw")
    assert ensure_qemu_img_info(img.backends, {"path": str(tmp_path / "none"), "backing_chain": True}, False)["chain"] == []


def test_bad_input_qemu_img_info_of_a_directory(img, tmp_path):
    with pytest.raises(ValidationError, match="is a directory, not a disk image"):
        ensure_qemu_img_info(img.backends, {"path": str(tmp_path)}, False)
    with pytest.raises(ValidationError, match="is not absolute"):
        ensure_qemu_img_info(img.backends, {"path": "relative.qcow2"}, False)


@pytest.fixture
def small_fs(tmp_path):
    """A real 2 MiB tmpfs (needs root); the test may remount it read-only."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, check=False).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_fault_convert_onto_a_full_file_system_keeps_the_old_image(img, tmp_path, small_fs):
    src, dst = tmp_path / "src.raw", small_fs / "dst.qcow2"
    with open(src, "wb") as handle:
        handle.write(os.urandom(4 << 20))
    apply(img, params(dst, action="create", size="1M"))
    with pytest.raises(HostError, match=r"is full; .*dst.qcow2 was left as it was: free space there .*No space left on device") as failed:
        apply(img, params(dst, action="convert", source=str(src)))
    assert not isinstance(failed.value, CommandError)
    assert apply(img, params(dst))["summary"]["virtual_size"] == 1 << 20
    assert _leftovers(small_fs) == []


def test_fault_read_only_directory_fails_clearly_in_check_mode_too(img, tmp_path, small_fs):
    src = tmp_path / "src.raw"
    _raw_source(src)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    for check_mode in (True, False):
        with pytest.raises(HostError, match="is on a read-only file system; nothing was changed"):
            apply(img, params(small_fs / "dst.qcow2", action="convert", source=str(src)), check_mode=check_mode)
        with pytest.raises(HostError, match="is on a read-only file system"):
            apply(img, params(small_fs / "new.qcow2", action="create", size="1M"), check_mode=check_mode)


KILL_SCRIPT = r"""
import shutil, subprocess, sys
from ansible_collections.virtops.kvm.plugins.module_utils import _qemu_img as q
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends

class Runner:
    which = staticmethod(shutil.which)
    def run(self, args, check=True, data=None, what=None):
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

params = dict(path=sys.argv[1], action=sys.argv[2], format="luks", size="4M", secret=sys.argv[3], new_secret=sys.argv[4],
              old_secret=None, keyslot=None, keyslot_state="active", iter_time=int(sys.argv[5]), encrypt=False, backing_file=None,
              backing_format=None, compression_type=None, preallocation=None, extent_size_hint=None, cluster_size=None, source=None,
              source_format=None, compress=False, allow_shrink=False, force=False, bitmap=None, bitmap_state="present",
              granularity=None, merge_from=None)
q.ensure_qemu_img(Backends(commands=Runner(), netlink=None), params, False)
"""


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    cmdline = handle.read().split(b"\0")
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append((int(entry), cmdline))
    return found


def _files_holding(directories, needle):
    hits = []
    for directory in directories:
        for root, _dirs, files in os.walk(directory):
            for name in files:
                path = os.path.join(root, name)
                try:
                    with open(path, "rb") as handle:
                        if needle in handle.read():
                            hits.append(path)
                except OSError:
                    pass
    return hits


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
@pytest.mark.parametrize("action", ["create", "amend"])
def test_fault_killed_during_luks_work_leaves_no_passphrase(img, tmp_path, signum, action):
    """kill -9 / SIGTERM while the real qemu-img derives a LUKS key: no passphrase file, ever, anywhere we write."""
    images, tmp = tmp_path / "images", tmp_path / "tmp"
    images.mkdir()
    tmp.mkdir()
    path = images / "enc.luks"
    first, second = "first-%s" % os.urandom(8).hex(), "second-%s" % os.urandom(8).hex()
    if action == "amend":
        apply(img, params(path, action="create", format="luks", size="4M", secret=first, iter_time=10))
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path), action, first, second, "20000"], env=env)
    qemu = None
    try:
        for _attempt in range(600):
            qemu = next((c for c in _children(proc.pid) if c[1] and c[1][0].endswith(b"qemu-img") and action.encode() in c[1]), None)
            if qemu or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert qemu is not None, "qemu-img %s never started" % action
        cmdline = b" ".join(qemu[1])
        assert first.encode() not in cmdline and second.encode() not in cmdline
        assert b"file=/proc/%d/fd/" % proc.pid in cmdline
        # while qemu-img works, no file holds the passphrase
        assert _files_holding([str(images), str(tmp)], first.encode()) == []
        os.kill(proc.pid, signum)
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if qemu is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(qemu[0], signal.SIGKILL)
    for _attempt in range(100):
        if not os.path.exists("/proc/%d" % qemu[0]):
            break
        time.sleep(0.05)
    assert _files_holding([str(images), str(tmp)], first.encode()) == []
    assert _files_holding([str(images), str(tmp)], second.encode()) == []
    if action == "create" and signum == signal.SIGTERM:
        assert os.listdir(images) == []  # the private directory went with the signal; no half-made image
    if action == "amend":
        assert apply(img, params(path))["summary"]["active_keyslots"] == [0]


def test_luks_benchmark_retried_until_the_clock_ticks(tmp_path):
    """qemu's LUKS benchmark misreads a tick-based CPU clock in some attempts: every create still succeeds.

    Four real creates (about 2.5 s each: qemu benchmarks for 500 ms of CPU whatever iter-time says); on a
    2-core EPYC at HZ=250, 15 % of bare qemu-img attempts fail, in runs of up to five. Each create lands
    and leaves nothing else in the directory.
    """
    tool = q.ImageTool(SubprocessRunner())
    secret = {"sec0": b"luks-%s" % os.urandom(4).hex().encode()}
    for i in range(4):
        path = str(tmp_path / ("enc%d.luks" % i))
        tool.create(path, "luks", 4 * 1024 * 1024, ["key-secret=sec0", "iter-time=10"], secrets=secret)
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", path], capture_output=True, text=True, check=True).stdout)
        assert info["format"] == "luks"
    assert sorted(os.listdir(tmp_path)) == sorted("enc%d.luks" % i for i in range(4))


def test_luks_benchmark_retry_gives_up_and_passes_other_errors(monkeypatch):
    monkeypatch.setattr(image_mod.time, "sleep", lambda _s: None)
    flake = CommandError("qemu-img create x failed", stderr="qemu-img: x: %s" % image_mod.LUKS_BENCHMARK_FLAKE)
    calls, cleanups = [], []

    def always_flaky():
        calls.append(1)
        raise flake

    with pytest.raises(CommandError) as exc:
        image_mod.retry_luks_benchmark(always_flaky, lambda e: image_mod.LUKS_BENCHMARK_FLAKE in e.stderr, cleanup=lambda: cleanups.append(1))
    assert exc.value is flake
    assert len(calls) == image_mod.LUKS_BENCHMARK_ATTEMPTS
    assert len(cleanups) == image_mod.LUKS_BENCHMARK_ATTEMPTS - 1

    other = CommandError("qemu-img create x failed", stderr="qemu-img: x: Invalid parameter 'bogus'")
    calls.clear()

    def broken():
        calls.append(1)
        raise other

    with pytest.raises(CommandError) as exc:
        image_mod.retry_luks_benchmark(broken, lambda e: image_mod.LUKS_BENCHMARK_FLAKE in e.stderr)
    assert exc.value is other and len(calls) == 1

    attempts = iter([flake, flake, None])

    def third_time():
        failure = next(attempts)
        if failure:
            raise failure
        return "made"

    assert image_mod.retry_luks_benchmark(third_time, lambda e: image_mod.LUKS_BENCHMARK_FLAKE in e.stderr) == "made"
