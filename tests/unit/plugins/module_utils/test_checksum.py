# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checksum parsing and read-back hashing; hash_volume on the real libvirtd (test:///default cannot download)."""

from __future__ import annotations

import hashlib

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _checksum as c
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LibvirtClient, libvirt

SHA256_ABC = hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize(
    "text, algorithm, digest",
    [
        ("sha256:" + SHA256_ABC, "sha256", SHA256_ABC),
        (SHA256_ABC.upper(), "sha256", SHA256_ABC),
        ("SHA-256:" + SHA256_ABC, "sha256", SHA256_ABC),
        ("md5:" + hashlib.md5(b"abc").hexdigest(), "md5", hashlib.md5(b"abc").hexdigest()),
        ("sha512:" + hashlib.sha512(b"abc").hexdigest(), "sha512", hashlib.sha512(b"abc").hexdigest()),
    ],
)
def test_parse_checksum(text, algorithm, digest):
    parsed = c.parse_checksum(text)
    assert (parsed.algorithm, parsed.digest) == (algorithm, digest)
    assert parsed.matches(hashlib.new(algorithm, b"abc").hexdigest())
    assert not parsed.matches(hashlib.new(algorithm, b"abd").hexdigest())


def test_no_checksum_is_nothing_to_verify():
    assert c.parse_checksum(None) is None
    assert c.Hasher(None).matches()


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is blank"),
        ("   ", "is blank"),
        ("sha256:", "has no digest"),
        ("shake_128:abcd", "no fixed digest length"),
        ("whirlpool:abcd", "unknown algorithm 'whirlpool'"),
        ("sha256:xyz", "not hexadecimal"),
        ("sha256:abcd", "has 64 hex digits, this one has 4"),
        ("abcd", "has 64 hex digits"),
    ],
)
def test_bad_input_checksum_is_a_clear_error(text, message):
    with pytest.raises(ValidationError, match=message):
        c.parse_checksum(text, "checksum")


def test_hasher_streams():
    hasher = c.Hasher(c.parse_checksum("sha256:" + SHA256_ABC))
    hasher.update(b"a")
    hasher.update(b"bc")
    assert hasher.length == 3 and hasher.hexdigest() == SHA256_ABC and hasher.matches()
    hasher.update(b"d")
    assert not hasher.matches()


def test_hash_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abcdef")
    assert c.hash_file(str(path)) == hashlib.sha256(b"abcdef").hexdigest()
    assert c.hash_file(str(path), "sha256", length=3) == SHA256_ABC
    with pytest.raises(HostError, match="3 bytes fewer"):
        c.hash_file(str(path), length=9)
    with pytest.raises(HostError, match="cannot read"):
        c.hash_file(str(tmp_path / "missing"))


@pytest.fixture
def system_pool(tmp_path):
    """A dir pool on the real libvirtd in a temporary directory, removed afterwards."""
    if libvirt is None:
        pytest.skip("libvirt-python is not installed")
    try:
        client = LibvirtClient.open("qemu:///system")
    except Exception as exc:  # pylint: disable=broad-exception-caught
        pytest.skip("qemu:///system unreachable: %s" % exc)
    xml = "<pool type='dir'><name>virtops-test-storage-unit-ck</name><target><path>%s</path></target></pool>" % tmp_path
    pool = client.conn.storagePoolCreateXML(xml, 0)
    yield client, pool
    pool.destroy()
    client.close()


def test_hash_volume_reads_back_what_is_stored(system_pool):
    client, pool = system_pool
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one chunk
    vol = pool.createXML("<volume><name>v.raw</name><capacity unit='bytes'>%d</capacity><target><format type='raw'/></target></volume>" % len(data), 0)
    stream = client.conn.newStream(0)
    vol.upload(stream, 0, len(data), 0)
    stream.send(data)
    stream.finish()
    assert c.hash_volume(client, vol, len(data)) == hashlib.sha256(data).hexdigest()
    assert c.hash_volume(client, vol, 10, "md5") == hashlib.md5(data[:10]).hexdigest()
    vol.delete(0)
