# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import hashlib
import os
import struct
import subprocess

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError, VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LibvirtClient, libvirt
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends
from ansible_collections.virtops.kvm.plugins.module_utils._volume import (
    ensure_volume,
    probe_format,
    qcow2_virtual_size,
    volume_xml,
    wanted_capacity,
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


def params(**kw):
    base = dict(
        pool=POOL,
        name="virtops-test-vol",
        state="present",
        capacity=None,
        allow_shrink=False,
        format=None,
        clone_from=None,
        backing_store=None,
        upload_from=None,
        checksum=None,
        validate_certs=True,
        timeout=30,
        encryption=None,
        secret=None,
        wipe=False,
    )
    base.update(kw)
    return base


def manage_volume(p, client, check_mode=False):
    return ensure_volume(Backends(libvirt=client), p, check_mode)


@pytest.mark.parametrize(
    "text, expected",
    [("1048576", MIB), ("1MiB", MIB), ("1M", MIB), ("1 GiB", 1024 * MIB), ("1GB", 10**9), ("2k", 2048), ("10G", 10 * 1024 * MIB)],
)
def test_capacity(text, expected):
    assert wanted_capacity(dict(capacity=text)) == expected


@pytest.mark.parametrize(
    "text, fmt, match",
    [
        ("ten", None, "is not a size"),
        ("1.5G", None, "is not a size"),
        ("-1G", None, "is not a size"),
        ("1 parsecs", None, "unknown size unit"),
        ("0", None, "too small: it must be at least 512 bytes"),
        ("100", "raw", "too small"),
        ("8EiB", None, "too large"),
        ("99999999999999999999999G", "raw", "too large"),
        ("4PiB", "qcow2", "too large for a qcow2 volume: at most 2PiB"),
    ],
)
def test_bad_input_capacity(text, fmt, match):
    with pytest.raises(ValidationError, match=match):
        wanted_capacity(dict(capacity=text), fmt)


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
    first = manage_volume(params(capacity="1MiB"), test_conn)
    assert first["changed"] is True
    assert first["actions"] == ["create"]
    assert first["volume"]["capacity"] == MIB
    assert first["volume"]["format"] == "qcow2"
    assert "state: present" in first["diff"]["after"]
    again = manage_volume(params(capacity="1MiB"), test_conn)
    assert again["changed"] is False and "diff" not in again
    assert manage_volume(params(capacity="1048576"), test_conn)["changed"] is False
    clone = manage_volume(params(name="virtops-test-vol-clone", clone_from="virtops-test-vol"), test_conn)
    assert clone["actions"] == ["create"]
    assert clone["volume"]["capacity"] == MIB


def test_check_mode_creates_nothing(test_conn):
    result = manage_volume(params(capacity="1MiB"), test_conn, check_mode=True)
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
    manage_volume(params(capacity="1MiB"), test_conn)
    with pytest.raises(ValidationError, match=match):
        manage_volume(params(**kw), test_conn)
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
        (dict(name="a/b", capacity="1M"), "volume name 'a/b' is not valid"),
        (dict(name="..", capacity="1M"), "is not valid"),
        (dict(capacity="0"), "too small"),
        (dict(capacity="3PiB"), "too large for a qcow2 volume"),
        (dict(upload_from="/x.img", checksum=""), "checksum is blank"),
        (dict(upload_from="/x.img", checksum="sha256:"), "has no digest"),
        (dict(upload_from="/x.img", checksum="shake_128:abcd"), "no fixed digest length"),
        (dict(upload_from="/x.img", checksum="nosuch:abcd"), "unknown algorithm"),
        (dict(upload_from="relative.img"), "is not absolute"),
        (dict(backing_store="virtops-test-missing"), "is not a volume of pool"),
        (dict(backing_store="/x.qcow2", format="raw"), "cannot have a backing store"),
    ],
)
def test_bad_input_creates_nothing(test_conn, kw, match):
    for check_mode in (True, False):  # check mode fails where the real run fails
        with pytest.raises(ValidationError, match=match):
            manage_volume(params(**kw), test_conn, check_mode=check_mode)
    pool = test_conn.lookup_pool(POOL)
    assert test_conn.lookup_volume(pool, "virtops-test-vol") is None


def test_absent_deletes_and_is_idempotent(test_conn):
    manage_volume(params(capacity="1MiB"), test_conn)
    result = manage_volume(params(state="absent"), test_conn)
    assert result["actions"] == ["delete"]
    assert result["volume"] == {}
    assert manage_volume(params(state="absent"), test_conn)["changed"] is False
    assert manage_volume(params(pool="virtops-test-missing", state="absent"), test_conn)["changed"] is False


def test_bad_input_tiny_backing_file_is_refused(test_conn, tmp_path):
    tiny = tmp_path / "tiny.img"
    tiny.write_bytes(b"x" * 10)
    for check_mode in (True, False):
        with pytest.raises(ValidationError, match="holds 10 bytes: a disk image holds at least one 512-byte sector"):
            manage_volume(params(backing_store=str(tiny)), test_conn, check_mode=check_mode)
    assert test_conn.lookup_volume(test_conn.lookup_pool(POOL), "virtops-test-vol") is None


# ---------------------------------------------------------------- on the real libvirtd (qemu-img's rounding, streams, full file systems)

SYSTEM_POOL = "virtops-test-storage-unit-vol"


def _system_client():
    if libvirt is None:
        pytest.skip("libvirt-python is not installed")
    try:
        return LibvirtClient.open("qemu:///system")
    except Exception as exc:  # pylint: disable=broad-exception-caught
        pytest.skip("qemu:///system unreachable: %s" % exc)


def _start_pool(client, path):
    xml = "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (SYSTEM_POOL, path)
    return client.conn.storagePoolCreateXML(xml, 0)


@pytest.fixture
def system_pool(tmp_path):
    """A transient dir pool on the real libvirtd in a temporary directory."""
    client = _system_client()
    (tmp_path / "pool").mkdir()
    pool = _start_pool(client, tmp_path / "pool")
    yield client, pool, tmp_path / "pool"
    for vol in pool.listAllVolumes():
        vol.delete(0)
    pool.destroy()
    client.close()


@pytest.fixture
def full_pool(tmp_path):
    """A transient dir pool on a 1 MiB tmpfs mounted for this test (root only)."""
    client = _system_client()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs (needs root)")
    try:
        pool = _start_pool(client, mnt)
        yield client, pool, mnt
        pool.destroy()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        client.close()


def sys_params(**kw):
    return params(pool=SYSTEM_POOL, name="v.img", **kw)


@pytest.mark.parametrize("capacity, fmt", [("512", "qcow2"), ("1000", "qcow2"), ("513", "raw")])
def test_small_capacity_is_created_once_and_converges(system_pool, capacity, fmt):
    client = system_pool[0]
    first = manage_volume(sys_params(capacity=capacity, format=fmt), client)
    assert first["changed"] and first["volume"]["capacity"] >= int(capacity)
    assert manage_volume(sys_params(capacity=capacity, format=fmt), client)["changed"] is False


def test_fault_full_pool_upload_fails_clearly_and_leaves_nothing(full_pool, tmp_path):
    client, pool, mnt = full_pool
    source = tmp_path / "big.raw"
    source.write_bytes(os.urandom(2 * MIB))
    p = params(pool=SYSTEM_POOL, name="big.raw", upload_from=str(source))
    assert manage_volume(p, client, check_mode=True)["actions"] == ["upload"]
    # libvirt 9.0 reports ENOSPC on some file systems and stores zeros silently on others (this tmpfs):
    # either way the run fails, says the pool is full, and removes the volume
    for _run in range(2):  # the rerun fails the same way: nothing was left behind
        with pytest.raises(Exception, match=r"(does not hold what was uploaded|No space left on device).* full.*the new volume was removed again"):
            manage_volume(p, client)
        pool.refresh(0)
        assert pool.listVolumes() == [] and os.listdir(mnt) == []


class _ZeroingStreams:
    """A real connection whose upload streams write zeros in place of the data: libvirt's silent short write."""

    def __init__(self, conn):
        self._conn = conn

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def newStream(self, flags=0):  # libvirt's name
        return _ZeroingStream(self._conn.newStream(flags))


class _ZeroingStream:
    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def send(self, data):
        return self._stream.send(bytes(len(data)))


def test_fault_upload_that_stored_zeros_is_caught_by_the_read_back(system_pool, tmp_path):
    client, pool, path = system_pool
    source = tmp_path / "data.raw"
    data = os.urandom(MIB + 4096)
    source.write_bytes(data)
    faulty = LibvirtClient(_ZeroingStreams(client.conn), "qemu:///system")
    p = sys_params(upload_from=str(source), checksum="sha256:" + hashlib.sha256(data).hexdigest())
    with pytest.raises(HostError, match=r"does not hold what was uploaded.*libvirt reported no error.*the new volume was removed again"):
        manage_volume(p, faulty)
    pool.refresh(0)
    assert pool.listVolumes() == []
    done = manage_volume(p, client)  # a working upload passes the same read-back
    assert done["checksum"] == hashlib.sha256(data).hexdigest()
    assert (path / "v.img").read_bytes() == data


def test_fault_oversize_raw_upload_fails_and_leaves_nothing(system_pool, tmp_path):
    client, pool, _path = system_pool
    source = tmp_path / "data.raw"
    source.write_bytes(os.urandom(4096))
    # ext4 files end at 16 TiB: libvirt cannot make the 32 TiB raw file
    with pytest.raises(Exception, match=r"cannot create volume v.img .*File too large"):
        manage_volume(sys_params(upload_from=str(source), capacity="32TiB"), client)
    pool.refresh(0)
    assert pool.listVolumes() == []


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_bad_input_upload_capacity_below_the_image_is_refused_in_check_mode_and_for_real(system_pool, tmp_path, fmt):
    client, pool, path = system_pool
    image = tmp_path / ("image." + fmt)
    if fmt == "raw":
        image.write_bytes(os.urandom(64 * 1024))
    else:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "8M"], check=True)
    p = sys_params(upload_from=str(image), capacity="4KiB")
    messages = []
    for check_mode in (True, False):
        with pytest.raises(ValidationError, match=r"capacity 4KiB is smaller than upload_from .* bytes\); a volume cannot start smaller than its image") as err:
            manage_volume(p, client, check_mode=check_mode)
        messages.append(err.value.msg)
        pool.refresh(0)
        assert pool.listVolumes() == [] and os.listdir(path) == []
    assert messages[0] == messages[1]


@pytest.mark.parametrize("fmt, capacity, want", [("raw", None, 64 * 1024), ("raw", "1MiB", MIB), ("qcow2", None, 8 * MIB), ("qcow2", "16MiB", 16 * MIB)])
def test_upload_capacity_is_what_check_mode_predicts(system_pool, tmp_path, fmt, capacity, want):
    client = system_pool[0]
    image = tmp_path / ("image." + fmt)
    if fmt == "raw":
        image.write_bytes(os.urandom(64 * 1024))
    else:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "8M"], check=True)
    p = sys_params(upload_from=str(image), capacity=capacity)
    predicted = manage_volume(p, client, check_mode=True)
    assert "capacity: %d" % want in predicted["diff"]["after"]
    done = manage_volume(p, client)
    assert done["volume"]["capacity"] == want and done["volume"]["format"] == fmt
    assert "capacity: %d" % done["volume"]["capacity"] in predicted["diff"]["after"]
    assert manage_volume(p, client)["changed"] is False


# -- volumes: several in one task -----------------------------------------------------------------
def batch(**kw):
    """Top-level params of a ``volumes`` task (no name), entries as given."""
    base = params(name=None, volumes=[])
    base.update(kw)
    return base


def test_batch_creates_then_changes_nothing_and_entries_inherit_the_task(test_conn):
    p = batch(capacity="1MiB", volumes=[{"name": "virtops-test-vol"}, {"name": "virtops-test-vol-clone", "capacity": "2MiB", "format": "raw"}])
    predicted = manage_volume(p, test_conn, check_mode=True)
    names = ["default-pool/virtops-test-vol", "default-pool/virtops-test-vol-clone"]
    assert [(r["name"], r["actions"]) for r in predicted["results"]] == [(names[0], ["create"]), (names[1], ["create"])]
    assert test_conn.lookup_volume(test_conn.lookup_pool(POOL), "virtops-test-vol") is None
    first = manage_volume(p, test_conn)
    assert first["changed"] and len(first["diff"]) == 2
    assert [r["volume"]["capacity"] for r in first["results"]] == [MIB, 2 * MIB]
    assert first["results"][1]["volume"]["format"] == "raw"
    second = manage_volume(p, test_conn)
    assert not second["changed"] and second["diff"] == [] and [r["changed"] for r in second["results"]] == [False, False]


def test_batch_check_mode_plans_an_overlay_and_a_clone_on_a_base_made_earlier_in_the_task(test_conn, tmp_path):
    # what the kvm_guest role's first run does in check mode: the base does not exist yet
    image = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "3M"], check=True)
    p = batch(
        volumes=[
            {"name": "virtops-test-vol", "upload_from": str(image)},
            {"name": "virtops-test-vol-top", "backing_store": "virtops-test-vol", "capacity": "4MiB"},
            {"name": "virtops-test-vol-clone", "clone_from": "virtops-test-vol"},
        ]
    )
    predicted = manage_volume(p, test_conn, check_mode=True)
    assert [r["actions"] for r in predicted["results"]] == [["upload"], ["create"], ["create"]]
    assert test_conn.lookup_volume(test_conn.lookup_pool(POOL), "virtops-test-vol") is None
    after = [r["diff"]["after"] for r in predicted["results"]]
    assert "format: qcow2" in after[0] and "capacity: %d" % (3 * MIB) in after[0]
    assert "backing_store: /default-pool/virtops-test-vol" in after[1] and "capacity: %d" % (4 * MIB) in after[1]
    assert "capacity: %d" % (3 * MIB) in after[2]
    # the same rules as for a base that exists: an overlay smaller than its planned base is refused
    small = batch(volumes=[p["volumes"][0], {"name": "virtops-test-vol-top", "backing_store": "virtops-test-vol", "capacity": "1MiB"}])
    with pytest.raises(VirtopsError, match=r"volumes\[1\] .*smaller than backing_store virtops-test-vol .*check mode: nothing was changed"):
        manage_volume(small, test_conn, check_mode=True)
    # (the real run of this list, upload included, is the volume integration target's batch step: the
    # test driver has no volume upload)


def test_batch_check_mode_still_refuses_a_base_no_entry_makes(test_conn):
    p = batch(volumes=[{"name": "virtops-test-vol-top", "backing_store": "virtops-test-vol-nobase"}])
    with pytest.raises(VirtopsError, match="is not a volume of pool default-pool"):
        manage_volume(p, test_conn, check_mode=True)


def test_batch_bad_entry_fails_before_anything_is_created(test_conn):
    p = batch(capacity="1MiB", volumes=[{"name": "virtops-test-vol"}, {"name": "bad/name"}])
    with pytest.raises(ValidationError, match=r"volumes\[1\] \(default-pool/bad/name\): .*nothing was changed"):
        manage_volume(p, test_conn)
    assert test_conn.lookup_volume(test_conn.lookup_pool(POOL), "virtops-test-vol") is None
    with pytest.raises(ValidationError, match=r"volumes\[0\] and volumes\[1\] both name default-pool/virtops-test-vol"):
        manage_volume(batch(capacity="1MiB", volumes=[{"name": "virtops-test-vol"}, {"name": "virtops-test-vol"}]), test_conn)


def test_batch_failure_names_the_entry_and_keeps_what_came_before(test_conn):
    p = batch(capacity="1MiB", volumes=[{"name": "virtops-test-vol"}, {"name": "virtops-test-vol-clone", "pool": "no-such-pool"}])
    with pytest.raises(VirtopsError, match=r"volumes\[1\] \(no-such-pool/virtops-test-vol-clone\) failed: .*before it were handled") as caught:
        manage_volume(p, test_conn)
    assert caught.value.details["failed"] == "no-such-pool/virtops-test-vol-clone"
    assert [r["name"] for r in caught.value.details["results"]] == ["default-pool/virtops-test-vol"]
    assert test_conn.lookup_volume(test_conn.lookup_pool(POOL), "virtops-test-vol") is not None


def test_single_volume_needs_pool_and_name(test_conn):
    with pytest.raises(ValidationError, match="pool is required"):
        manage_volume(params(pool=None, capacity="1MiB"), test_conn)


class _DaemonDiesMidUpload:
    """A real connection whose upload stream fails after the first chunk and whose volumes cannot be deleted
    any more: what the module sees when libvirtd is killed during an upload."""

    def __init__(self, conn):
        self._conn = conn
        self.dead = False

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def newStream(self, flags=0):  # libvirt's name
        return _DyingStream(self._conn.newStream(flags), self)

    def storagePoolLookupByName(self, name):  # libvirt's name
        return _DyingPool(self._conn.storagePoolLookupByName(name), self)


class _DyingStream:
    def __init__(self, stream, owner):
        self._stream, self._owner, self._sent = stream, owner, 0

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def send(self, data):
        if self._sent:
            self._owner.dead = True
            raise libvirt.libvirtError("End of file while reading data: Input/output error")
        self._sent += 1
        return self._stream.send(data)


class _DyingPool:
    def __init__(self, pool, owner):
        self._pool, self._owner = pool, owner

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def createXML(self, xml, flags=0):  # libvirt's name
        return _DyingVolume(self._pool.createXML(xml, flags), self._owner)


class _DyingVolume:
    def __init__(self, vol, owner):
        self._vol, self._owner = vol, owner

    def __getattr__(self, name):
        return getattr(self._vol, name)

    def delete(self, flags=0):
        if self._owner.dead:
            raise libvirt.libvirtError("Cannot write data: Broken pipe")
        return self._vol.delete(flags)


def test_fault_upload_cut_off_where_nothing_can_delete_it_is_uploaded_again(system_pool, tmp_path):
    """An upload cut off with libvirtd gone leaves a marked remainder: the rerun uploads again, then converges"""
    client, pool, path = system_pool
    source = tmp_path / "data.raw"
    data = os.urandom(3 * MIB)
    source.write_bytes(data)
    p = sys_params(upload_from=str(source), checksum="sha256:" + hashlib.sha256(data).hexdigest())
    dying = LibvirtClient(_DaemonDiesMidUpload(client.conn), "qemu:///system")
    with pytest.raises(VirtopsError, match=r"cannot upload into volume v.img.*it is marked incomplete, the next run uploads it again"):
        manage_volume(p, dying)
    pool.refresh(0)
    assert sorted(pool.listVolumes()) == ["v.img", "v.img.virtops-incomplete"]
    assert (path / "v.img").read_bytes() != data  # the remainder: only the first chunk
    check = manage_volume(p, client, check_mode=True)
    assert check["changed"] and check["actions"] == ["delete", "upload"]
    assert "remainder of an interrupted upload" in check["warnings"][0]
    done = manage_volume(p, client)
    assert done["changed"] and done["actions"] == check["actions"]
    assert (path / "v.img").read_bytes() == data
    pool.refresh(0)
    assert pool.listVolumes() == ["v.img"]
    assert manage_volume(p, client)["changed"] is False


def test_fault_marked_remainder_without_upload_from_is_refused_or_removed(system_pool, tmp_path):
    """A marked remainder is never taken as converged: without upload_from it is refused; state=absent removes both"""
    client, pool, _path = system_pool
    source = tmp_path / "data.raw"
    source.write_bytes(os.urandom(2 * MIB))
    dying = LibvirtClient(_DaemonDiesMidUpload(client.conn), "qemu:///system")
    with pytest.raises(VirtopsError):
        manage_volume(sys_params(upload_from=str(source)), dying)
    with pytest.raises(ValidationError, match=r"remainder of an interrupted upload.*upload it again with upload_from"):
        manage_volume(sys_params(capacity="2MiB"), client)
    gone = manage_volume(sys_params(state="absent"), client)
    assert gone["changed"] and gone["actions"] == ["delete"]
    pool.refresh(0)
    assert pool.listVolumes() == []
    assert manage_volume(sys_params(state="absent"), client)["changed"] is False
