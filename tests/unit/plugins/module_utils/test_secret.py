# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""secret logic: XML and digest helpers with lxml; the secret lifecycle on the real libvirtd.

libvirt's test:///default driver has no secret driver, so the lifecycle tests use qemu:///system
(skipped when it is unreachable) with secrets whose usage ids start with /virtops-test-unit-.
"""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _secret as s
from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LibvirtClient, libvirt

UUID = "7d7f3c2a-4b7e-4f0e-9c1d-2a3b4c5d6e7f"


@pytest.mark.parametrize("usage_type,element", [("volume", "volume"), ("ceph", "name"), ("iscsi", "target"), ("tls", "name"), ("vtpm", "name")])
def test_xml_round_trip(usage_type, element):
    props = {"uuid": UUID, "usage_type": usage_type, "usage_id": "id-1", "description": "d", "private": True, "ephemeral": False}
    xml = s.build_secret_xml(props, s.make_marker(b"pw"))
    assert "<%s>id-1</%s>" % (element, element) in xml
    parsed = s.parse_secret_xml(xml)
    assert {k: parsed[k] for k in props} == props
    assert s.marker_matches(parsed["marker"], b"pw") and not s.marker_matches(parsed["marker"], b"other")


@pytest.mark.parametrize("text,user,has_marker", [
    (None, None, False),
    ("plain", "plain", False),
    ("desc [virtops-value pbkdf2-sha256:10:00ff:abcd]", "desc", True),
    ("[virtops-value pbkdf2-sha256:10:00ff:abcd]", None, True),
    ("desc [virtops-value md5:x]", "desc [virtops-value md5:x]", False),
])
def test_split_description(text, user, has_marker):
    got_user, marker = s.split_description(text)
    assert got_user == user and (marker is not None) == has_marker


def test_marker_uses_a_fresh_salt():
    assert s.make_marker(b"pw") != s.make_marker(b"pw")
    salt = bytes(16)
    assert s.make_marker(b"pw", salt=salt, iterations=10) == s.make_marker(b"pw", salt=salt, iterations=10)


@pytest.mark.parametrize("value,encoding,expected", [("abc", "text", b"abc"), ("YWJj", "base64", b"abc"), (None, "text", None)])
def test_decode_value(value, encoding, expected):
    assert s.decode_value(value, encoding) == expected


def test_bad_base64():
    with pytest.raises(ValidationError, match="not valid base64"):
        s.decode_value("***", "base64")


@pytest.mark.parametrize("text,expected", [(UUID, True), (UUID.replace("-", ""), True), ("/var/lib/x.qcow2", False), ("", False)])
def test_is_uuid(text, expected):
    assert s.is_uuid(text) is expected


@pytest.fixture
def system_conn():
    if libvirt is None:
        pytest.skip("libvirt-python is not installed")
    try:
        client = LibvirtClient.open("qemu:///system")
    except Exception as exc:  # pylint: disable=broad-exception-caught
        pytest.skip("qemu:///system unreachable: %s" % exc)
    yield client
    for usage in ("/virtops-test-unit-a", "/virtops-test-unit-b"):
        found = client.lookup_secret_by_usage(1, usage)
        if found is not None:
            found.undefine()
    client.close()


def sparams(**kw):
    base = dict(uuid=None, usage_type="volume", usage_id="/virtops-test-unit-a", description=None, private=False, ephemeral=True,
                value=None, value_encoding="text", state="present")
    base.update(kw)
    return base


@pytest.mark.parametrize("private", [False, True])
def test_secret_lifecycle(system_conn, private):
    p = sparams(private=private, value="pw1", description="unit")
    checked = s.ensure_secret(system_conn, p, check_mode=True)
    assert checked["changed"] and s.find_secret(system_conn, usage_type="volume", usage_id="/virtops-test-unit-a") is None
    first = s.ensure_secret(system_conn, p)
    assert first["changed"] and first["secret"]["has_value"] and "value" not in first["secret"]
    assert "pw1" not in str(first)
    again = s.ensure_secret(system_conn, p)
    assert not again["changed"] and again["diff"]["before"] == again["diff"]["after"]
    secret = s.resolve_secret(system_conn, "/virtops-test-unit-a")
    assert s.resolve_secret(system_conn, secret.UUIDString()).UUIDString() == secret.UUIDString()
    assert ("<description>unit [virtops-value" in secret.XMLDesc()) is private
    new_value = s.ensure_secret(system_conn, dict(p, value="pw2"))
    assert new_value["changed"] and new_value["diff"]["after"].endswith("value: (new)\n")
    assert not s.ensure_secret(system_conn, dict(p, value="pw2"))["changed"]
    if not private:
        assert secret.value() == b"pw2"
    gone = s.ensure_secret(system_conn, sparams(state="absent"))
    assert gone["changed"] and not s.ensure_secret(system_conn, sparams(state="absent"))["changed"]


def test_flipping_private_recreates_with_the_same_uuid(system_conn):
    first = s.ensure_secret(system_conn, sparams(value="pw"))
    flipped = s.ensure_secret(system_conn, sparams(private=True, value="pw"))
    assert flipped["changed"] and flipped["secret"]["uuid"] == first["secret"]["uuid"] and flipped["secret"]["private"]
    with pytest.raises(ValidationError, match="pass value"):
        s.ensure_secret(system_conn, sparams(private=False))


@pytest.mark.parametrize("kw,message", [
    (dict(usage_type=None, usage_id=None), "by uuid or by usage_type"),
    (dict(uuid="not-a-uuid"), "is not a UUID"),
    (dict(value="***", value_encoding="base64"), "not valid base64"),
])
def test_bad_input_changes_nothing(system_conn, kw, message):
    with pytest.raises(ValidationError, match=message):
        s.ensure_secret(system_conn, sparams(**kw))
    assert s.find_secret(system_conn, usage_type="volume", usage_id="/virtops-test-unit-a") is None


def test_resolve_missing_secret(system_conn):
    with pytest.raises(ValidationError, match="no libvirt secret with volume usage id '/virtops-test-unit-b'"):
        s.resolve_secret(system_conn, "/virtops-test-unit-b")
