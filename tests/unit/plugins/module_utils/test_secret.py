# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""secret logic: XML and digest helpers with lxml; the secret lifecycle on the real libvirtd.

libvirt's test:///default driver has no secret driver, so the lifecycle tests use qemu:///system
(skipped when it is unreachable) with secrets whose usage ids start with /virtops-test-unit-.
"""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _secret as s
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LibvirtClient, libvirt
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt_objects import find_secret, is_uuid, resolve_secret
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends

UUID = "7d7f3c2a-4b7e-4f0e-9c1d-2a3b4c5d6e7f"


@pytest.mark.parametrize("usage_type,element", [("volume", "volume"), ("ceph", "name"), ("iscsi", "target"), ("tls", "name"), ("vtpm", "name")])
def test_xml_round_trip(usage_type, element):
    props = {"uuid": UUID, "usage_type": usage_type, "usage_id": "id-1", "description": "d", "private": True, "ephemeral": False}
    xml = s.build_secret_xml(props, s.make_marker(b"pw"))
    assert "<%s>id-1</%s>" % (element, element) in xml
    parsed = s.parse_secret_xml(xml)
    assert {k: parsed[k] for k in props} == props
    assert s.marker_matches(parsed["marker"], b"pw") and not s.marker_matches(parsed["marker"], b"other")


@pytest.mark.parametrize(
    "text,user,has_marker",
    [
        (None, None, False),
        ("plain", "plain", False),
        ("desc [virtops-value pbkdf2-sha256:10:00ff:abcd]", "desc", True),
        ("[virtops-value pbkdf2-sha256:10:00ff:abcd]", None, True),
        ("desc [virtops-value md5:x]", "desc [virtops-value md5:x]", False),
    ],
)
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
    assert is_uuid(text) is expected


@pytest.fixture
def system_conn():
    if libvirt is None:
        pytest.skip("libvirt-python is not installed")
    try:
        client = LibvirtClient.open("qemu:///system")
    except Exception as exc:  # pylint: disable=broad-exception-caught
        pytest.skip("qemu:///system unreachable: %s" % exc)
    yield Backends(libvirt=client)
    for usage in ("/virtops-test-unit-a", "/virtops-test-unit-b"):
        found = client.lookup_secret_by_usage(1, usage)
        if found is not None:
            found.undefine()
    client.close()


def ensure(backends, params, check_mode=False):
    return s.ensure_secret(backends, params, check_mode)


def sparams(**kw):
    base = dict(
        uuid=None,
        usage_type="volume",
        usage_id="/virtops-test-unit-a",
        description=None,
        private=False,
        ephemeral=True,
        value=None,
        value_encoding="text",
        state="present",
    )
    base.update(kw)
    return base


@pytest.mark.parametrize("private", [False, True])
def test_secret_lifecycle(system_conn, private):
    p = sparams(private=private, value="pw1", description="unit")
    checked = ensure(system_conn, p, True)
    assert checked["changed"] and find_secret(system_conn.libvirt, usage_type="volume", usage_id="/virtops-test-unit-a") is None
    first = ensure(system_conn, p)
    assert first["changed"] and first["secret"]["has_value"] and "value" not in first["secret"]
    assert "pw1" not in str(first)
    again = ensure(system_conn, p)
    assert not again["changed"] and "diff" not in again
    secret = resolve_secret(system_conn.libvirt, "/virtops-test-unit-a")
    assert resolve_secret(system_conn.libvirt, secret.UUIDString()).UUIDString() == secret.UUIDString()
    assert ("<description>unit [virtops-value" in secret.XMLDesc()) is private
    new_value = ensure(system_conn, dict(p, value="pw2"))
    assert new_value["changed"] and new_value["diff"]["after"].endswith("value: (new)\n")
    assert not ensure(system_conn, dict(p, value="pw2"))["changed"]
    if not private:
        assert secret.value() == b"pw2"
    gone = ensure(system_conn, sparams(state="absent"))
    assert gone["changed"] and not ensure(system_conn, sparams(state="absent"))["changed"]


def test_flipping_private_recreates_with_the_same_uuid(system_conn):
    first = ensure(system_conn, sparams(value="pw"))
    flipped = ensure(system_conn, sparams(private=True, value="pw"))
    assert flipped["changed"] and flipped["secret"]["uuid"] == first["secret"]["uuid"] and flipped["secret"]["private"]
    with pytest.raises(ValidationError, match="pass value"):
        ensure(system_conn, sparams(private=False))


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(usage_type=None, usage_id=None), "by uuid or by usage_type"),
        (dict(uuid="not-a-uuid"), "is not a UUID"),
        (dict(value="***", value_encoding="base64"), "not valid base64"),
        (dict(usage_id="/virtops-test-unit-a\n"), "usage_id .* contains control characters"),
        (dict(usage_id="/virtops-test-unit-\x01a"), "usage_id .* contains control characters"),
        (dict(description="line\x01"), "description .* contains control characters"),
        (dict(description="line\r\n"), "description .* contains control characters"),
    ],
)
def test_bad_input_changes_nothing(system_conn, kw, message):
    with pytest.raises(ValidationError, match=message):
        ensure(system_conn, sparams(**kw))
    assert find_secret(system_conn.libvirt, usage_type="volume", usage_id="/virtops-test-unit-a") is None


def test_resolve_missing_secret(system_conn):
    with pytest.raises(ValidationError, match="no libvirt secret with volume usage id '/virtops-test-unit-b'"):
        resolve_secret(system_conn.libvirt, "/virtops-test-unit-b")


def test_description_keeps_tabs_and_newlines(system_conn):
    p = sparams(description="line one\n\tline two", value="pw")
    assert ensure(system_conn, p)["changed"]
    again = ensure(system_conn, p)
    assert not again["changed"] and again["secret"]["description"] == "line one\n\tline two"


# A value over libvirt's RPC limit (REMOTE_SECRET_VALUE_MAX, 64 KiB) is a real setValue failure of the daemon.
TOO_BIG = "x" * 65537


@pytest.mark.parametrize("private", [False, True])
def test_fault_set_value_fails_then_next_run_is_not_converged(system_conn, private):
    p = sparams(private=private, value="pw1")
    first = ensure(system_conn, p)
    uuid = first["secret"]["uuid"]
    marker_before = s.parse_secret_xml(find_secret(system_conn.libvirt, uuid=uuid).XMLDesc(0))["marker"]
    with pytest.raises(LibvirtError, match=r"cannot set the value of secret .*\(the value libvirt held before is kept\): value length greater than maximum"):
        ensure(system_conn, dict(p, value=TOO_BIG))
    secret = find_secret(system_conn.libvirt, uuid=uuid)
    stored = s.parse_secret_xml(secret.XMLDesc(0))
    assert stored["marker"] == marker_before  # the marker still describes the value libvirt holds
    if not private:
        assert secret.value() == b"pw1"
    # the failed value is not taken for converged: check mode and the real run still want to set it
    assert ensure(system_conn, dict(p, value=TOO_BIG), True)["changed"]
    with pytest.raises(LibvirtError):
        ensure(system_conn, dict(p, value=TOO_BIG))
    assert not ensure(system_conn, p)["changed"]


def test_fault_new_secret_whose_value_fails_is_removed(system_conn):
    with pytest.raises(LibvirtError, match="defined was removed again"):
        ensure(system_conn, sparams(private=True, value=TOO_BIG))
    assert find_secret(system_conn.libvirt, usage_type="volume", usage_id="/virtops-test-unit-a") is None
    assert ensure(system_conn, sparams(private=True, value="pw"))["changed"]


@pytest.mark.parametrize("private", [False, True])
def test_fault_recreate_with_refused_value_keeps_the_old_secret(system_conn, private):
    p = sparams(private=private, value="pw1")
    uuid = ensure(system_conn, p)["secret"]["uuid"]
    with pytest.raises(LibvirtError, match=r"libvirt refused the value \(nothing was changed\)"):
        ensure(system_conn, sparams(private=not private, value=TOO_BIG))
    secret = find_secret(system_conn.libvirt, uuid=uuid)
    assert secret is not None and s.parse_secret_xml(secret.XMLDesc(0))["private"] is private
    if not private:
        assert secret.value() == b"pw1"
    assert not ensure(system_conn, p)["changed"]


class _RefuseFirstSetValue:
    """A real connection where the first setValue on a secret with a usage fails (a fault after undefine)."""

    def __init__(self, conn):
        self._conn = conn
        self.failed = False

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def secretDefineXML(self, xml, flags=0):  # libvirt's name
        secret = self._conn.secretDefineXML(xml, flags)
        return _Refusing(secret, self) if "<usage" in xml else secret


class _Refusing:
    def __init__(self, secret, conn):
        self._secret = secret
        self._conn = conn

    def __getattr__(self, name):
        return getattr(self._secret, name)

    def setValue(self, value, flags=0):  # libvirt's name
        if not self._conn.failed:
            self._conn.failed = True
            raise libvirt.libvirtError("injected fault: setValue refused")
        return self._secret.setValue(value, flags)


@pytest.mark.parametrize("private", [False, True])
def test_fault_recreate_failing_after_undefine_restores_the_old_secret(system_conn, private):
    p = sparams(private=private, value="pw1")
    uuid = ensure(system_conn, p)["secret"]["uuid"]
    faulty = Backends(libvirt=LibvirtClient(_RefuseFirstSetValue(system_conn.libvirt.conn), "qemu:///system"))
    with pytest.raises(LibvirtError, match="restored"):
        ensure(faulty, sparams(private=not private, value="pw2"))
    secret = find_secret(system_conn.libvirt, uuid=uuid)
    stored = s.parse_secret_xml(secret.XMLDesc(0))
    assert stored["private"] is private and stored["usage_id"] == "/virtops-test-unit-a"
    if private:
        assert stored["marker"] is None  # its value could not be restored: the next run must set it
        assert ensure(system_conn, p)["changed"]
    else:
        assert secret.value() == b"pw1"
    assert not ensure(system_conn, p)["changed"]
