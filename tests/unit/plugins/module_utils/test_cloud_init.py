# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cloud_init_seed logic: real pycdlib ISOs in a temp directory, pool errors on test:///default."""

from __future__ import annotations

import os

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _cloud_init as ci
from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError

pytestmark = pytest.mark.skipif(ci.pycdlib is None, reason="pycdlib is not installed")


def params(**kw):
    base = dict(user_data=None, meta_data=None, network_config=None, vendor_data=None, state="present")
    base.update(kw)
    return base


@pytest.mark.parametrize("kw,expected", [
    (dict(user_data={"hostname": "h1"}), {"user-data": b"#cloud-config\nhostname: h1\n"}),
    (dict(user_data="#!/bin/sh\necho hi\n"), {"user-data": b"#!/bin/sh\necho hi\n"}),
    (dict(), {"user-data": b"#cloud-config\n{}\n"}),
    (dict(meta_data={"instance-id": "i-1"}), {"meta-data": b"instance-id: i-1\n"}),
    (dict(network_config={"version": 2}), {"network-config": b"version: 2\n"}),
])
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
    assert seed["digest"] == digest[:ci.DIGEST_CHARS]
    assert seed["files"] == dict(files)


@pytest.mark.parametrize("data", [b"", b"not an iso" * 1000, bytes(70000)])
def test_read_iso_of_garbage_is_none(data):
    assert ci.read_iso(data) is None


def test_file_seed_is_idempotent(tmp_path):
    path = str(tmp_path / "seed.iso")
    target = ci.FileTarget(path, os.replace)
    p = params(user_data={"hostname": "h1"}, meta_data={"instance-id": "i-1"})
    checked = ci.ensure_seed(target, p, check_mode=True)
    assert checked["changed"] and not os.path.exists(path)
    first = ci.ensure_seed(target, p)
    assert first["changed"] and first["files"] == ["user-data", "meta-data"] and first["path"] == path
    assert "# --- user-data ---\n#cloud-config\nhostname: h1\n" in first["diff"]["after"] and first["diff"]["before"] == ""
    with open(path, "rb") as handle:
        assert ci.read_iso(handle.read())["files"]["meta-data"] == b"instance-id: i-1\n"
    second = ci.ensure_seed(target, p)
    assert not second["changed"] and second["digest"] == first["digest"] and second["diff"]["before"] == second["diff"]["after"]
    third = ci.ensure_seed(target, params(user_data={"hostname": "h2"}, meta_data={"instance-id": "i-1"}), check_mode=True)
    assert third["changed"] and "hostname: h1" in third["diff"]["before"] and "hostname: h2" in third["diff"]["after"]
    assert not ci.ensure_seed(target, p)["changed"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".virtops-seed-")]
    gone = ci.ensure_seed(target, params(state="absent"))
    assert gone["changed"] and not os.path.exists(path)
    assert not ci.ensure_seed(target, params(state="absent"))["changed"]


def test_a_foreign_file_is_replaced(tmp_path):
    path = tmp_path / "seed.iso"
    path.write_bytes(b"hello")
    result = ci.ensure_seed(ci.FileTarget(str(path), os.replace), params())
    assert result["changed"] and "(not a seed ISO)" in result["diff"]["before"]
    assert ci.read_iso(path.read_bytes())["label"] == "cidata"


def test_missing_directory(tmp_path):
    target = ci.FileTarget(str(tmp_path / "no" / "seed.iso"), os.replace)
    with pytest.raises(ValidationError, match="does not exist"):
        ci.ensure_seed(target, params())


def test_missing_pool(test_conn):
    with pytest.raises(ValidationError, match="storage pool 'virtops-test-missing' does not exist"):
        ci.VolumeTarget(test_conn, "virtops-test-missing", "seed.iso")


def test_absent_volume_reads_as_absent(test_conn):
    target = ci.VolumeTarget(test_conn, "default-pool", "virtops-test-seed.iso")
    assert target.read() == (False, None)
    assert target.describe() == {"pool": "default-pool", "volume": "virtops-test-seed.iso", "path": None}
