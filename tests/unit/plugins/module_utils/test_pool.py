# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._pool import manage_pool, prepare_intent

NAME = "virtops-test-pool-unit"
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


def params(**kw):
    base = dict(name=NAME, xml=DIR_XML, state="present", autostart=None, build=False, delete_on_absent=False)
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
    first = manage_pool(test_conn, params(state="active", build=True, autostart=True), want_diff=True)
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
