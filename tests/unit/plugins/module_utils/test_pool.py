# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LibvirtClient, libvirt
from ansible_collections.virtops.kvm.plugins.module_utils._pool import ensure_pool, prepare_intent
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends

NAME = "virtops-test-pool-unit"
SYSTEM_NAME = "virtops-test-storage-unit-pool"
DIR_XML = "<pool type='dir'><target><path>/virtops-test-pool</path></target></pool>"


@pytest.fixture(autouse=True)
def _clean(test_conn):
    """test:///default is shared while any connection to it is open: leave no pool behind."""
    yield
    pool = test_conn.lookup_pool(NAME)
    if pool is not None:
        if pool.isActive():
            pool.destroy()
        pool.undefine()


def manage_pool(client, params, check_mode=False):
    return ensure_pool(Backends(libvirt=client), params, check_mode)


def params(**kw):
    base = dict(name=NAME, xml=DIR_XML, state="present", autostart=None, build=False, delete_on_absent=False, delete_mounted=False)
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "xml, match",
    [
        ("<pool type='dir'><target>", "not well-formed XML"),
        ("<network/>", "root element, found <network>"),
        ("<pool><target/></pool>", "needs a type attribute"),
        ("<pool type='dir'><name>other</name></pool>", "names the pool 'other'"),
    ],
)
def test_bad_intent_is_refused(xml, match):
    with pytest.raises(ValidationError, match=match):
        prepare_intent(NAME, xml)


def test_missing_name_is_added():
    root = prepare_intent(NAME, DIR_XML)
    assert root.findtext("name") == NAME


def test_define_build_start_autostart_then_unchanged(test_conn):
    first = manage_pool(test_conn, params(state="active", build=True, autostart=True))
    assert first["changed"] is True
    assert first["actions"] == ["define", "build", "start", "autostart"]
    assert first["pool"]["state"] == "active"
    assert first["pool"]["autostart"] is True
    assert first["pool"]["target_path"] == "/virtops-test-pool"
    assert first["diff"][0]["before"] == ""
    assert "<path>/virtops-test-pool</path>" in first["diff"][0]["after"]
    assert first["diff"][1]["after"] == "state: active\nautostart: true\n"
    again = manage_pool(test_conn, params(state="active", build=True, autostart=True))
    assert again["changed"] is False
    assert again["actions"] == []
    assert "diff" not in again  # nothing changed: no diff computed


def test_check_mode_reports_without_acting(test_conn):
    result = manage_pool(test_conn, params(state="active"), check_mode=True)
    assert result["changed"] is True
    assert result["actions"] == ["define", "start"]
    assert test_conn.lookup_pool(NAME) is None


@pytest.mark.parametrize(
    "xml, changed",
    [
        (DIR_XML, False),
        ("<pool type='dir'><name>%s</name><target><path>/virtops-test-pool</path></target></pool>" % NAME, False),
        ("<pool type='dir'><target><path>/virtops-test-pool/</path></target></pool>", False),
        ("<pool type='dir'><capacity unit='bytes'>0</capacity><target><path>/virtops-test-pool</path></target></pool>", False),
        ("<pool type='dir'><target><path>/virtops-test-pool-2</path></target></pool>", True),
    ],
)
def test_redefine_only_when_intent_differs(test_conn, xml, changed):
    manage_pool(test_conn, params(state="active"))
    result = manage_pool(test_conn, params(xml=xml, state="active"))
    assert result["changed"] is changed
    assert result["pending_restart"] is changed
    assert ("define" in result["actions"]) is changed


def test_existing_pool_without_xml_only_changes_state(test_conn):
    manage_pool(test_conn, params(state="active"))
    result = manage_pool(test_conn, params(xml=None, state="inactive"))
    assert result["actions"] == ["stop"]
    assert result["pool"]["state"] == "inactive"


def test_new_pool_needs_xml(test_conn):
    with pytest.raises(ValidationError, match="no xml was given"):
        manage_pool(test_conn, params(xml=None))


@pytest.mark.parametrize("delete, actions", [(False, ["stop", "undefine"]), (True, ["delete", "undefine"])])
def test_absent(test_conn, delete, actions):
    manage_pool(test_conn, params(state="active"))
    result = manage_pool(test_conn, params(xml=None, state="absent", delete_on_absent=delete))
    assert result["actions"] == actions
    assert result["pool"] == {}
    assert test_conn.lookup_pool(NAME) is None
    assert manage_pool(test_conn, params(xml=None, state="absent"))["changed"] is False


def test_intent_is_normalised_with_a_warning():
    warnings = []
    root = prepare_intent(NAME, "<pool type='dir'><capacity>1</capacity><available>1</available><target><path>/p//</path></target></pool>", warnings)
    assert root.findtext("target/path") == "/p"
    assert root.find("capacity") is None and root.find("available") is None
    assert len(warnings) == 2 and "<capacity> is what libvirt reports" in warnings[0]


@pytest.mark.parametrize("name", ["a/b", "", " lead", "tab\tname", "nl\n"])
def test_bad_input_name_fails_in_check_mode_too(test_conn, name):
    for check_mode in (True, False):
        with pytest.raises(ValidationError, match=r"pool name .* is not valid"):
            manage_pool(test_conn, params(name=name, state="active"), check_mode=check_mode)
    assert [p for p in test_conn.conn.listAllStoragePools() if p.name() == name] == []


@pytest.fixture
def system_conn():
    """The real libvirtd (test:///default starts any dir pool, whether its directory exists or not)."""
    if libvirt is None:
        pytest.skip("libvirt-python is not installed")
    try:
        client = LibvirtClient.open("qemu:///system")
    except Exception as exc:  # pylint: disable=broad-exception-caught
        pytest.skip("qemu:///system unreachable: %s" % exc)
    yield client
    pool = client.lookup_pool(SYSTEM_NAME)
    if pool is not None:
        if pool.isActive():
            pool.destroy()
        pool.undefine()
    client.close()


def test_fault_start_failure_undefines_the_pool_it_defined(system_conn, tmp_path):
    xml = "<pool type='dir'><target><path>%s</path></target></pool>" % (tmp_path / "missing")
    p = params(name=SYSTEM_NAME, xml=xml, state="active")
    assert manage_pool(system_conn, p, check_mode=True)["actions"] == ["define", "start"]
    with pytest.raises(LibvirtError, match=r"cannot start pool .*; pool %s, which this run defined, was undefined again" % SYSTEM_NAME):
        manage_pool(system_conn, p)
    assert system_conn.lookup_pool(SYSTEM_NAME) is None
    (tmp_path / "missing").mkdir()
    assert manage_pool(system_conn, p)["pool"]["state"] == "active"  # the rerun converges


def test_fault_start_failure_of_an_existing_pool_keeps_it_defined(system_conn, tmp_path):
    xml = "<pool type='dir'><target><path>%s</path></target></pool>" % (tmp_path / "gone")
    (tmp_path / "gone").mkdir()
    manage_pool(system_conn, params(name=SYSTEM_NAME, xml=xml))
    (tmp_path / "gone").rmdir()
    with pytest.raises(LibvirtError, match="cannot start pool"):
        manage_pool(system_conn, params(name=SYSTEM_NAME, xml=xml, state="active"))
    assert system_conn.lookup_pool(SYSTEM_NAME) is not None  # not ours to undefine
