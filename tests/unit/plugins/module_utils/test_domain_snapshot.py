# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain_snapshot logic against libvirt's test:///default driver (which keeps snapshots in memory)."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._domain_snapshot import ensure_domain_snapshot, list_snapshots
from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends


def run(conn, check=False, **params):
    params.setdefault("domain", "test")
    return ensure_domain_snapshot(Backends(libvirt=conn), params, check)


@pytest.fixture(autouse=True)
def no_snapshots_left(test_conn):
    """test:///default may be shared within the process: remove the snapshots a test made."""
    yield
    dom = test_conn.lookup_domain("test")
    for snap in dom.listAllSnapshots(1):  # VIR_DOMAIN_SNAPSHOT_LIST_ROOTS
        snap.delete(1)  # VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN


def names(conn):
    return [(item["name"], item["parent"], item["current"]) for item in list_snapshots(conn.lookup_domain("test"))]


def test_create_twice_and_check_mode_predicts(test_conn):
    predicted = run(test_conn, check=True, name="s1", description="first")
    assert predicted["changed"] and predicted["action"] == "created" and names(test_conn) == []
    real = run(test_conn, name="s1", description="first")
    assert real["changed"]
    strip = [{k: v for k, v in item.items() if k != "creation_time"} for item in real["snapshots"]]
    assert strip == [{k: v for k, v in item.items() if k != "creation_time"} for item in predicted["snapshots"]]
    assert real["snapshots"][0]["kind"] == "internal" and real["snapshots"][0]["state"] == "running"
    assert real["snapshots"][0]["creation_time"] > 0
    again = run(test_conn, name="s1", description="first")
    assert not again["changed"] and again["action"] == "none"
    assert real["diff"]["before"] == "" and "* s1" in real["diff"]["after"]


def test_current_reverts_only_when_not_already_there(test_conn):
    run(test_conn, name="s1")
    run(test_conn, name="s2")
    assert names(test_conn) == [("s1", None, False), ("s2", "s1", True)]
    check = run(test_conn, check=True, name="s1", state="current")
    assert check["changed"] and names(test_conn)[1][2]
    real = run(test_conn, name="s1", state="current")
    assert real["changed"] and real["action"] == "reverted"
    assert [i["current"] for i in real["snapshots"]] == [i["current"] for i in check["snapshots"]] == [True, False]
    assert not run(test_conn, name="s1", state="current")["changed"]


def test_absent_twice_and_children(test_conn):
    for name in ("a", "b", "c"):
        run(test_conn, name=name)
    check = run(test_conn, check=True, name="b", state="absent", children=True)
    assert [i["name"] for i in check["snapshots"]] == ["a"] and len(names(test_conn)) == 3
    real = run(test_conn, name="b", state="absent", children=True)
    assert real["changed"] and names(test_conn) == [("a", None, True)]
    assert [(i["name"], i["current"]) for i in check["snapshots"]] == [("a", True)]
    assert not run(test_conn, name="b", state="absent")["changed"]


def test_delete_middle_reparents_like_the_prediction(test_conn):
    for name in ("a", "b", "c"):
        run(test_conn, name=name)
    check = run(test_conn, check=True, name="b", state="absent")
    run(test_conn, name="b", state="absent")
    assert [(i["name"], i["parent"], i["current"]) for i in check["snapshots"]] == names(test_conn) == [("a", None, False), ("c", "a", True)]


@pytest.mark.parametrize(
    "params,text",
    [
        (dict(domain="virtops-test-nope", name="s"), "does not exist"),
        (dict(name="bad\nname"), "control characters"),
        (dict(name="x/y"), "invalid snapshot name"),
        (dict(name="nope", state="current"), "no snapshot 'nope'"),
        (dict(name="s", quiesce=True), "guest agent"),
        (dict(name="s", disks=[dict(name="vdz")]), "no disk 'vdz'"),
        (dict(name="s", memory_file="/tmp/m"), "kind=external"),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(test_conn, params, text):
    with pytest.raises(ValidationError, match=text):
        run(test_conn, **params)
    assert names(test_conn) == []


def test_external_with_memory_on_shut_off_guest(test_conn):
    dom = test_conn.lookup_domain("test")
    dom.destroy()
    try:
        with pytest.raises(ValidationError, match="needs a running guest"):
            run(test_conn, name="s", kind="external", memory_file="/tmp/virtops-test-mem")
        assert names(test_conn) == []
    finally:  # test:///default may be shared with other tests of this process
        dom.create()


def test_domain_info_lists_snapshots_read_only(test_conn):
    from ansible_collections.virtops.kvm.plugins.module_utils._domain_info import gather_domains

    run(test_conn, name="s1", description="d")
    (guest,) = gather_domains(test_conn, name="test", include_snapshots=True)
    assert [(i["name"], i["description"], i["current"], i["kind"]) for i in guest["snapshots"]] == [("s1", "d", True, "internal")]
    (plain,) = gather_domains(test_conn, name="test")
    assert "snapshots" not in plain
