# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cloud_init_seed logic: real pycdlib ISOs in a temp directory, pool errors on test:///default."""

from __future__ import annotations

import os
import subprocess

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _cloud_init_seed as ci
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError

pytestmark = pytest.mark.skipif(ci.pycdlib is None, reason="pycdlib is not installed")


def params(**kw):
    base = dict(user_data=None, meta_data=None, network_config=None, vendor_data=None, state="present", mode=None, owner=None, group=None, force=False)
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "kw,expected",
    [
        (dict(user_data={"hostname": "h1"}), {"user-data": b"#cloud-config\nhostname: h1\n"}),
        (dict(user_data="#!/bin/sh\necho hi\n"), {"user-data": b"#!/bin/sh\necho hi\n"}),
        (dict(), {"user-data": b"#cloud-config\n{}\n"}),
        (dict(meta_data={"instance-id": "i-1"}), {"meta-data": b"instance-id: i-1\n"}),
        (dict(network_config={"version": 2}), {"network-config": b"version: 2\n"}),
    ],
)
def test_render_files(kw, expected):
    files = dict(ci.render_files(params(**kw)))
    for name, data in expected.items():
        assert files[name] == data
    assert set(files) >= {"user-data", "meta-data"}
    assert ("network-config" in files) == ("network_config" in kw)


def test_default_instance_id_follows_content():
    one = dict(ci.render_files(params(user_data={"a": 1})))["meta-data"]
    two = dict(ci.render_files(params(user_data={"a": 2})))["meta-data"]
    assert one.startswith(b"instance-id: iid-") and one != two
    assert one == dict(ci.render_files(params(user_data={"a": 1})))["meta-data"]


def test_bad_type_is_rejected():
    with pytest.raises(ValidationError, match="user_data must be a dict or a string, got int"):
        ci.render_files(params(user_data=5))


def test_iso_round_trip():
    files = ci.render_files(params(user_data={"x": "y"}, network_config="version: 2\n"))
    digest = ci.content_digest(files)
    seed = ci.read_iso(ci.build_iso(files, digest))
    assert seed["label"] == "cidata"
    assert seed["digest"] == digest[: ci.DIGEST_CHARS]
    assert seed["files"] == dict(files)


@pytest.mark.parametrize("data", [b"", b"not an iso" * 1000, bytes(70000)])
def test_read_iso_of_garbage_is_none(data):
    assert ci.read_iso(data) is None


def test_file_seed_is_idempotent(tmp_path):
    path = str(tmp_path / "seed.iso")
    target = ci.FileTarget(path)
    p = params(user_data={"hostname": "h1"}, meta_data={"instance-id": "i-1"})
    checked = ci.ensure_target(target, p, check_mode=True)
    assert checked["changed"] and not os.path.exists(path)
    first = ci.ensure_target(target, p)
    assert first["changed"] and first["files"] == ["user-data", "meta-data"] and first["path"] == path
    assert "# --- user-data ---\n#cloud-config\nhostname: h1\n" in first["diff"]["after"] and first["diff"]["before"] == ""
    with open(path, "rb") as handle:
        assert ci.read_iso(handle.read())["files"]["meta-data"] == b"instance-id: i-1\n"
    second = ci.ensure_target(target, p)
    assert not second["changed"] and second["digest"] == first["digest"] and second["diff"]["before"] == second["diff"]["after"]
    third = ci.ensure_target(target, params(user_data={"hostname": "h2"}, meta_data={"instance-id": "i-1"}), check_mode=True)
    assert third["changed"] and "hostname: h1" in third["diff"]["before"] and "hostname: h2" in third["diff"]["after"]
    assert not ci.ensure_target(target, p)["changed"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".virtops-seed-")]
    gone = ci.ensure_target(target, params(state="absent"))
    assert gone["changed"] and not os.path.exists(path)
    assert not ci.ensure_target(target, params(state="absent"))["changed"]


@pytest.mark.parametrize("state", ["present", "absent"])
def test_bad_input_a_foreign_file_is_refused_unless_forced(tmp_path, state):
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    data = path.read_bytes()
    for check_mode in (True, False):
        with pytest.raises(ValidationError, match=r"is not a cloud-init seed .*set force=true"):
            ci.ensure_target(ci.FileTarget(str(path)), params(state=state), check_mode)
    assert path.read_bytes() == data
    forced = ci.ensure_target(ci.FileTarget(str(path)), params(state=state, force=True), False)
    assert forced["changed"] and "(not a seed ISO)" in forced["diff"]["before"]
    if state == "present":
        assert ci.read_iso(path.read_bytes())["label"] == "cidata"
    else:
        assert not path.exists()


def test_a_seed_built_elsewhere_is_replaced_without_force(tmp_path):
    path = tmp_path / "seed.iso"
    files = ci.render_files(params(user_data="#cloud-config\n"))
    path.write_bytes(ci.build_iso(files, "0" * 64))
    result = ci.ensure_target(ci.FileTarget(str(path)), params(), False)
    assert result["changed"] and ci.read_iso(path.read_bytes())["digest"] == result["digest"][: ci.DIGEST_CHARS]
    assert ci.ensure_target(ci.FileTarget(str(path)), params(state="absent"), False)["changed"] and not path.exists()


def test_bad_input_path_is_a_directory_or_link(tmp_path):
    with pytest.raises(ValidationError, match="is a directory; give the seed ISO's file name"):
        ci.ensure_target(ci.FileTarget(str(tmp_path)), params(), True)
    os.symlink("/etc/hostname", str(tmp_path / "link.iso"))
    with pytest.raises(ValidationError, match="is a symbolic link"):
        ci.ensure_target(ci.FileTarget(str(tmp_path / "link.iso")), params(), False)
    with pytest.raises(ValidationError, match="contains control characters"):
        ci.ensure_cloud_init_seed(None, params(path=str(tmp_path / "a\nb.iso")), False)


def test_bad_input_non_utf8_user_data():
    with pytest.raises(ValidationError, match="user_data is not valid UTF-8 text"):
        ci.render_files(params(user_data="#cloud-config\nx: \udcff\n"))


def test_a_seed_with_non_utf8_files_diffs_without_crashing(tmp_path):
    path = tmp_path / "seed.iso"
    path.write_bytes(ci.build_iso([("user-data", b"#cloud-config\n\xff\xfe\n"), ("meta-data", b"instance-id: x\n")], "1" * 64))
    result = ci.ensure_target(ci.FileTarget(str(path)), params(), True)
    assert result["changed"] and "\ufffd" in result["diff"]["before"]


@pytest.mark.parametrize("mode,expected", [("0600", 0o600), (0o640, 0o640), ("644", 0o644)])
def test_mode_is_applied_and_idempotent(tmp_path, mode, expected):
    path = str(tmp_path / "seed.iso")
    assert ci.ensure_target(ci.FileTarget(path), params(mode=mode), False)["changed"]
    assert os.stat(path).st_mode & 0o7777 == expected
    assert not ci.ensure_target(ci.FileTarget(path), params(mode=mode), False)["changed"]
    os.chmod(path, 0o666)
    assert ci.ensure_target(ci.FileTarget(path), params(mode=mode), True)["changed"]
    assert ci.ensure_target(ci.FileTarget(path), params(mode=mode), False)["changed"] and os.stat(path).st_mode & 0o7777 == expected


@pytest.mark.parametrize("kw,message", [(dict(mode="u=rw"), "is not an octal mode"), (dict(owner="virtops-no-such-user"), "does not exist")])
def test_bad_input_file_attributes(tmp_path, kw, message):
    with pytest.raises(ValidationError, match=message):
        ci.ensure_target(ci.FileTarget(str(tmp_path / "s.iso")), params(**kw), True)
    assert not (tmp_path / "s.iso").exists()


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, check=False).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_fault_full_and_read_only_file_systems_fail_clearly(small_fs):
    path = str(small_fs / "seed.iso")
    big = params(user_data="#cloud-config\n# " + os.urandom(200 << 10).hex() + "\n")
    for check_mode in (True, False):
        with pytest.raises(HostError, match=r"the file system has \d+ bytes free, the seed needs \d+; nothing was changed"):
            ci.ensure_target(ci.FileTarget(path), big, check_mode)
    assert os.listdir(small_fs) == []
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    for check_mode in (True, False):
        with pytest.raises(HostError, match="is on a read-only file system; nothing was changed"):
            ci.ensure_target(ci.FileTarget(path), params(), check_mode)


def test_missing_directory(tmp_path):
    target = ci.FileTarget(str(tmp_path / "no" / "seed.iso"))
    with pytest.raises(ValidationError, match="does not exist"):
        ci.ensure_target(target, params())


def test_missing_pool(test_conn):
    with pytest.raises(ValidationError, match="storage pool 'virtops-test-missing' does not exist"):
        ci.VolumeTarget(test_conn, "virtops-test-missing", "seed.iso")


def test_absent_volume_reads_as_absent(test_conn):
    target = ci.VolumeTarget(test_conn, "default-pool", "virtops-test-seed.iso")
    assert target.read() == (False, None)
    assert target.describe() == {"pool": "default-pool", "volume": "virtops-test-seed.iso", "path": None}


def test_fault_upload_into_a_full_pool_is_read_back_and_fails(small_fs):
    """Real libvirtd, a dir pool on a 256 KiB tmpfs, the free-space check bypassed: the upload itself must not report success."""
    from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError
    from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LibvirtClient, libvirt

    if libvirt is None or not os.path.exists("/run/libvirt/libvirt-sock"):
        pytest.skip("needs libvirt-python and the real libvirtd")
    name = "virtops-test-seed-unit-full"
    subprocess.run(["virsh", "-c", "qemu:///system", "pool-create-as", name, "dir", "--target", str(small_fs)], check=True, capture_output=True)
    try:
        with LibvirtClient.open("qemu:///system") as client:
            target = ci.VolumeTarget(client, name, "big.iso")
            files = ci.render_files(params(user_data="#cloud-config\n# " + os.urandom(300 << 10).hex() + "\n"))
            iso = ci.build_iso(files, ci.content_digest(files))
            with pytest.raises(HostError, match="storage pool virtops-test-seed-unit-full has"):
                target.check_writable(len(iso))
            with pytest.raises((HostError, LibvirtError)) as failed:
                target.write(iso)
            client.call("refresh", target.pool.refresh, 0)
            assert client.lookup_volume(target.pool, "big.iso") is None
            print("full pool upload failed with: %s" % failed.value.msg)
    finally:
        subprocess.run(["virsh", "-c", "qemu:///system", "pool-destroy", name], check=False, capture_output=True)


class _ZeroVolume(ci.VolumeTarget):
    """A volume whose stream 'succeeds' and then holds zeros, as libvirt 9.0's did on a full sparse target."""

    def __init__(self):  # pylint: disable=super-init-not-called
        self.volume_name, self.pool_name, self.created, self.removed = "seed.iso", "p", True, False
        self.volume = object()

    def _upload(self, data):
        pass

    def _download(self, length):
        return bytes(length)

    def remove(self):
        self.removed = True


def test_fault_upload_that_reads_back_other_bytes_fails_and_removes_the_new_volume():
    target = _ZeroVolume()
    target.volume = None
    target.created = False
    target.client = type("C", (), {"call": staticmethod(lambda _what, func, *args: func(*args))})()
    target.pool = type("P", (), {"createXML": staticmethod(lambda _xml, _flags: object())})()
    with pytest.raises(HostError, match=r"reading it back gave other bytes .*the volume was removed"):
        target.write(b"seed bytes")
    assert target.removed and target.volume is None


# -- seeds: several in one task -------------------------------------------------------------------
def test_seeds_batch_builds_each_then_changes_nothing(tmp_path):
    p = params(path=None, pool=None, volume=None, user_data={"hostname": "all"})
    p["seeds"] = [{"path": str(tmp_path / "a.iso")}, {"path": str(tmp_path / "b.iso"), "user_data": {"hostname": "b"}}]
    predicted = ci.ensure_cloud_init_seed(None, p, True)
    assert [r["changed"] for r in predicted["results"]] == [True, True] and not (tmp_path / "a.iso").exists()
    first = ci.ensure_cloud_init_seed(None, p, False)
    files = {r["name"]: ci.read_iso((tmp_path / r["name"].rsplit("/", 1)[1]).read_bytes())["files"] for r in first["results"]}
    assert files[str(tmp_path / "a.iso")]["user-data"] == b"#cloud-config\nhostname: all\n"
    assert files[str(tmp_path / "b.iso")]["user-data"] == b"#cloud-config\nhostname: b\n"
    again = ci.ensure_cloud_init_seed(None, p, False)
    assert not again["changed"] and again["diff"] == []


def test_bad_input_seeds_batch_checks_every_entry_first(tmp_path):
    p = params(path=None, pool=None, volume=None)
    p["seeds"] = [{"path": str(tmp_path / "a.iso")}, {"pool": "default"}]
    with pytest.raises(ValidationError, match=r"seeds\[1\] \(default/None\): give path .* or pool and volume.*nothing was changed"):
        ci.ensure_cloud_init_seed(None, p, False)
    assert not (tmp_path / "a.iso").exists()
