# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import struct
import types

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._volume import (
    manage_volume,
    parse_size,
    probe_format,
    qcow2_virtual_size,
    volume_xml,
)
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml

POOL = "default-pool"  # test:///default's pool
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _clean(test_conn):
    """test:///default is shared while any connection to it is open: leave no volume behind."""
    yield
    pool = test_conn.lookup_pool(POOL)
    for name in ("virtops-test-vol", "virtops-test-vol-clone"):
        vol = test_conn.lookup_volume(pool, name)
        if vol is not None:
            vol.delete(0)


def module(check_mode=False, **kw):
    params = dict(pool=POOL, name="virtops-test-vol", state="present", capacity=None, allow_shrink=False, format=None, clone_from=None,
                  backing_store=None, upload_from=None, checksum=None, validate_certs=True, timeout=30, encryption=None, secret=None, wipe=False)
    params.update(kw)
    return types.SimpleNamespace(params=params, check_mode=check_mode, _diff=True)


@pytest.mark.parametrize(
    "text, expected",
    [("1048576", MIB), ("1MiB", MIB), ("1M", MIB), ("1 GiB", 1024 * MIB), ("1GB", 10**9), ("2k", 2048), ("10G", 10 * 1024 * MIB)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["ten", "1.5G", "-1G", "1 parsecs"])
def test_parse_size_refuses_garbage(text):
    with pytest.raises(ValidationError):
        parse_size(text)


@pytest.mark.parametrize(
    "head, fmt, size",
    [(b"QFI\xfb" + b"\0" * 20 + struct.pack(">Q", 5 * MIB), "qcow2", 5 * MIB), (b"\0" * 64, "raw", None), (b"QFI\xfb", "qcow2", None)],
)
def test_probe_header(head, fmt, size):
    assert probe_format(head) == fmt
    assert qcow2_virtual_size(head) == size


def test_volume_xml_overlay_and_encryption():
    overlay = parse_xml(volume_xml("o", MIB, "qcow2", backing=dict(path="/p/base.qcow2", format="qcow2")))
    assert overlay.findtext("backingStore/path") == "/p/base.qcow2"
    assert overlay.find("target/compat").text == "1.1"
    enc = parse_xml(volume_xml("e", MIB, "raw", secret_uuid="0b6f5e1c-3f0c-4f4c-9d4c-0d4c5b0f6a11"))
    assert enc.find("target/encryption").get("format") == "luks"
    assert enc.find("target/encryption/secret").get("uuid") == "0b6f5e1c-3f0c-4f4c-9d4c-0d4c5b0f6a11"
    assert enc.find("target/compat") is None


def test_create_then_unchanged_then_clone(test_conn):
    first = manage_volume(module(capacity="1MiB"), test_conn)
    assert first["changed"] is True
    assert first["actions"] == ["create"]
    assert first["volume"]["capacity"] == MIB
    assert first["volume"]["format"] == "qcow2"
    assert "state: present" in first["diff"]["after"]
    assert manage_volume(module(capacity="1MiB"), test_conn)["changed"] is False
    assert manage_volume(module(capacity="1048576"), test_conn)["changed"] is False
    clone = manage_volume(module(name="virtops-test-vol-clone", clone_from="virtops-test-vol"), test_conn)
    assert clone["actions"] == ["create"]
    assert clone["volume"]["capacity"] == MIB


def test_check_mode_creates_nothing(test_conn):
    result = manage_volume(module(check_mode=True, capacity="1MiB"), test_conn)
    assert result["changed"] is True
    assert result["volume"] == {}
    pool = test_conn.lookup_pool(POOL)
    assert test_conn.lookup_volume(pool, "virtops-test-vol") is None


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(capacity="512KiB"), "shrinking loses the data"),
        (dict(format="raw"), "format cannot change in place"),
        (dict(encryption="luks", secret="0b6f5e1c-3f0c-4f4c-9d4c-0d4c5b0f6a11"), "encryption is chosen when a volume is created"),
    ],
)
def test_existing_volume_refuses_what_cannot_change(test_conn, kw, match):
    manage_volume(module(capacity="1MiB"), test_conn)
    with pytest.raises(ValidationError, match=match):
        manage_volume(module(**kw), test_conn)
    vol = test_conn.lookup_volume(test_conn.lookup_pool(POOL), "virtops-test-vol")
    assert vol.info()[1] == MIB


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(pool="virtops-test-missing", capacity="1M"), "pool virtops-test-missing does not exist"),
        (dict(), "capacity is needed"),
        (dict(capacity="1M", encryption="luks"), "needs secret"),
        (dict(clone_from="a", upload_from="/b"), "only one of"),
        (dict(upload_from="/virtops-test-nonexistent.img"), "does not exist"),
        (dict(checksum="sha256:00", capacity="1M"), "applies to upload_from only"),
        (dict(backing_store="virtops-test-missing"), "is not a volume of pool"),
        (dict(backing_store="/x.qcow2", format="raw"), "cannot have a backing store"),
    ],
)
def test_bad_input_creates_nothing(test_conn, kw, match):
    with pytest.raises(ValidationError, match=match):
        manage_volume(module(**kw), test_conn)
    pool = test_conn.lookup_pool(POOL)
    assert test_conn.lookup_volume(pool, "virtops-test-vol") is None


def test_absent_deletes_and_is_idempotent(test_conn):
    manage_volume(module(capacity="1MiB"), test_conn)
    result = manage_volume(module(state="absent"), test_conn)
    assert result["actions"] == ["delete"]
    assert result["volume"] == {}
    assert manage_volume(module(state="absent"), test_conn)["changed"] is False
    assert manage_volume(module(pool="virtops-test-missing", state="absent"), test_conn)["changed"] is False
