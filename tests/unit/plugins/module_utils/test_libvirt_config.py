# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt_config: libvirt's grammar, typed values, comments kept, absent comments out, bad input untouched."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt_config import ensure_libvirt_config, parse_config, parse_value
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends

LIBVIRTD = """# Master libvirt daemon configuration file
#
# Limit on concurrent clients
#max_clients = 5000
#
#access_drivers = [ "polkit" ]

# Logging
#log_filters="1:qemu 3:remote"
#some_future_list = [
#    "a",
#    "b"
#]
#some_future_int = 3
"""

QEMU = """# qemu driver
#user = "libvirt-qemu"
#cgroup_device_acl = [
#    "/dev/null", "/dev/full", "/dev/zero",
#    "/dev/kvm"
#]
security_driver = "apparmor"
"""


def _backends(root):
    return Backends(hostfs=HostFS(str(root)), commands=None, netlink=None, root=str(root))


@pytest.fixture
def tree(tmp_path):
    etc = tmp_path / "etc" / "libvirt"
    etc.mkdir(parents=True)
    (etc / "libvirtd.conf").write_text(LIBVIRTD)
    (etc / "qemu.conf").write_text(QEMU)
    return tmp_path


def _run(tree, check_mode=False, **params):
    params.setdefault("state", "present")
    params.setdefault("file", "libvirtd.conf")
    return ensure_libvirt_config(_backends(tree), params, check_mode)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('"a b"', "a b"),
        ("'x\"y'", 'x"y'),
        ('"""multi\nline"""', "multi\nline"),
        ("-12", -12),
        ('[ "a", "b", ]', ["a", "b"]),
        ('[\n  "a", # comment\n  "b"\n]', ["a", "b"]),
        ("[]", []),
    ],
)
def test_parse_value_reads_libvirt_grammar(text, value):
    assert parse_value(text)[0] == value


def test_parse_config_finds_active_and_commented_multiline_entries():
    entries = {(e.key, e.commented): e for e in parse_config(QEMU)}
    acl = entries[("cgroup_device_acl", True)]
    assert acl.value == ["/dev/null", "/dev/full", "/dev/zero", "/dev/kvm"]
    assert (acl.start, acl.end) == (2, 6)
    assert entries[("security_driver", False)].value == "apparmor"


def test_set_inserts_after_commented_default_and_keeps_comments(tree):
    result = _run(tree, settings={"max_clients": 42, "log_filters": "1:qemu"})
    text = (tree / "etc/libvirt/libvirtd.conf").read_text()
    assert result["changed"] and result["restart_required"] and result["daemon"] == "libvirtd"
    assert result["changed_keys"] == ["log_filters", "max_clients"]
    assert "#max_clients = 5000\nmax_clients = 42\n" in text
    assert 'log_filters = "1:qemu"\n' in text
    assert text.startswith("# Master libvirt daemon configuration file\n")
    assert result["settings"] == {"max_clients": 42, "log_filters": "1:qemu"}
    assert [d["after"] for d in result["diff"]] == ["max_clients = 42\n", 'log_filters = "1:qemu"\n']
    again = _run(tree, settings={"max_clients": 42, "log_filters": "1:qemu"})
    assert not again["changed"] and not again["restart_required"]
    assert (tree / "etc/libvirt/libvirtd.conf").read_text() == text


def test_same_value_as_default_uncomments_it(tree):
    result = _run(tree, settings={"max_clients": 5000})
    text = (tree / "etc/libvirt/libvirtd.conf").read_text()
    assert result["changed"]
    assert "\nmax_clients = 5000\n" in text and "#max_clients" not in text


def test_check_mode_predicts_and_writes_nothing(tree):
    before = (tree / "etc/libvirt/libvirtd.conf").read_text()
    result = _run(tree, check_mode=True, settings={"max_clients": 7})
    assert result["changed"] and result["settings"] == {"max_clients": 7}
    assert (tree / "etc/libvirt/libvirtd.conf").read_text() == before
    real = _run(tree, settings={"max_clients": 7})
    assert real["changed"] == result["changed"] and real["diff"] == result["diff"]


def test_absent_comments_out_and_is_idempotent(tree):
    result = _run(tree, settings={"security_driver": None}, state="absent", file="qemu.conf")
    text = (tree / "etc/libvirt/qemu.conf").read_text()
    assert result["changed"] and result["settings"] == {"security_driver": None}
    assert '#security_driver = "apparmor"\n' in text
    assert not _run(tree, settings={"security_driver": "x"}, state="absent", file="qemu.conf")["changed"]
    back = _run(tree, settings={"security_driver": "apparmor"}, file="qemu.conf")
    assert back["changed"] and (tree / "etc/libvirt/qemu.conf").read_text() == QEMU


def test_list_key_from_table_and_replacement_in_place(tree):
    acl = ["/dev/null", "/dev/kvm", "/dev/vfio/vfio"]
    result = _run(tree, file="qemu.conf", settings={"cgroup_device_acl": acl, "security_driver": "none"})
    text = (tree / "etc/libvirt/qemu.conf").read_text()
    assert result["changed"]
    assert '#]\ncgroup_device_acl = [ "/dev/null", "/dev/kvm", "/dev/vfio/vfio" ]\n' in text
    assert 'security_driver = "none"\n' in text and "apparmor" not in text
    assert result["settings"]["cgroup_device_acl"] == acl


def test_unknown_key_type_inferred_from_commented_default(tree):
    assert _run(tree, settings={"some_future_list": ["x"], "some_future_int": 4})["changed"]
    with pytest.raises(ValidationError, match="some_future_list wants a list of strings"):
        _run(tree, settings={"some_future_list": "x"})


def test_unknown_key_without_default_warns(tree):
    result = _run(tree, settings={"brand_new": "v"})
    assert result["changed"] and "brand_new" in result["warnings"][0]


def test_daemon_file_follows_modular_daemons(tree):
    (tree / "run/libvirt").mkdir(parents=True)
    (tree / "run/libvirt/virtqemud-sock").write_text("")
    result = _run(tree, file="daemon", settings={"max_clients": 3})
    assert result["path"] == "/etc/libvirt/virtqemud.conf" and result["daemon"] == "virtqemud"
    assert (tree / "etc/libvirt/virtqemud.conf").read_text().endswith("max_clients = 3\n")
    assert _run(tree, file="qemu.conf", settings={"user": "qemu"})["daemon"] == "virtqemud"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"file": "nosuch.conf"}, "unknown file 'nosuch.conf'"),
        ({"file": "../shadow"}, "not a libvirt configuration file name"),
        ({"settings": {"max_clients": "many"}}, "max_clients wants a integer"),
        ({"settings": {"listen_tcp": 2}}, "listen_tcp wants a boolean"),
        ({"settings": {"tcp_port": 16509}}, "tcp_port wants a string"),
        ({"settings": {"access_drivers": "polkit"}}, r'write it as a list, e.g. \["polkit"\]'),
        ({"settings": {"1bad": 1}}, "is not a libvirt configuration key"),
        ({"settings": {"bad key": 1}}, "is not a libvirt configuration key"),
        ({"settings": {"log_outputs": "1:file:/x\n2:y"}}, "control characters"),
        ({"settings": {"log_outputs": "a\"b'c"}}, "both kinds of quotes"),
        ({"settings": {}}, "non-empty dict"),
    ],
)
def test_bad_input_leaves_file_untouched(tree, params, message):
    before = (tree / "etc/libvirt/libvirtd.conf").read_text()
    params = {"file": "libvirtd.conf", "settings": {"max_clients": 1}, **params}
    with pytest.raises(ValidationError, match=message):
        _run(tree, **params)
    assert (tree / "etc/libvirt/libvirtd.conf").read_text() == before


def test_bad_input_unparsable_file_is_refused(tree):
    (tree / "etc/libvirt/libvirtd.conf").write_text("max_clients = = 3\n")
    with pytest.raises(HostError, match="line 1 is not libvirt's configuration grammar"):
        _run(tree, file="libvirtd.conf", settings={"max_clients": 1})
    assert (tree / "etc/libvirt/libvirtd.conf").read_text() == "max_clients = = 3\n"


def test_real_package_files_round_trip(tmp_path):
    """Every file this machine's libvirt ships parses; a set then absent leaves only commented lines."""
    import pathlib

    files = sorted(pathlib.Path("/etc/libvirt").glob("*.conf"))
    if not files:
        pytest.skip("libvirt's configuration files are not installed here")
    for path in files:
        entries = parse_config(path.read_text())
        assert all(e.key for e in entries), path
