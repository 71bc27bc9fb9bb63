# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import multiprocessing
import pathlib

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _ksm
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends


@pytest.fixture
def fs(fakehost):
    return HostFS(fakehost["root"])


def ensure(fs, params, check_mode=False, **kwargs):
    return _ksm.ensure_ksm(Backends(hostfs=fs, root=fs.root), params, check_mode, **kwargs)


def _val(fs, name):
    return fs.read_int("/sys/kernel/mm/ksm/%s" % name)


@pytest.mark.parametrize(
    "params, written",
    [
        ({"pages_to_scan": 500}, {"pages_to_scan": 500}),
        ({"sleep_millisecs": 50, "run": 0}, {"sleep_millisecs": 50, "run": 0}),
        ({"run": 2}, {"run": 2}),
    ],
)
def test_settings_are_written_then_idempotent(fs, params, written):
    result = ensure(fs, params)
    assert result["changed"] is True
    for name, value in written.items():
        assert _val(fs, name) == value
        assert result["after"][name] == value
    assert ensure(fs, params)["changed"] is False


def test_check_mode_predicts_without_writing(fs):
    checked = ensure(fs, {"pages_to_scan": 777}, check_mode=True)
    assert checked["changed"] is True
    assert _val(fs, "pages_to_scan") == 100
    real = ensure(fs, {"pages_to_scan": 777})
    assert real["changed"] is True
    assert checked["after"] == real["after"]
    assert checked["diff"]["after"] == real["diff"]["after"]
    assert "pages_to_scan = 100" in real["diff"]["before"]
    assert "pages_to_scan = 777" in real["diff"]["after"]


def test_counters_are_returned(fs):
    result = ensure(fs, {"run": 1})
    assert result["changed"] is False
    assert result["ksm"]["pages_sharing"] == 40
    assert result["ksm"]["pages_shared"] == 12


def test_merge_across_nodes_unmerges_first(fs):
    """Pages are shared: run=2, wait until pages_shared is 0 (the 'kernel' empties it), write, put run back."""
    runs = []

    def kernel_unmerges(_seconds):
        runs.append(_val(fs, "run"))
        fs.write("/sys/kernel/mm/ksm/pages_shared", 0)

    result = ensure(fs, {"merge_across_nodes": False}, sleep=kernel_unmerges)
    assert result["changed"] is True
    assert runs == [2]
    assert _val(fs, "merge_across_nodes") == 0
    assert _val(fs, "run") == 1


def test_merge_across_nodes_fails_when_pages_stay_shared(fs):
    with pytest.raises(HostError) as err:
        ensure(fs, {"merge_across_nodes": False, "unmerge_timeout": 0}, sleep=lambda _s: None)
    assert "12 pages are still shared" in err.value.msg
    assert _val(fs, "merge_across_nodes") == 1
    assert _val(fs, "run") == 1


def test_merge_across_nodes_without_unmerge_is_refused(fs):
    with pytest.raises(HostError) as err:
        ensure(fs, {"merge_across_nodes": False, "unmerge": False})
    assert "set unmerge=true" in err.value.msg
    assert _val(fs, "run") == 1


def test_persistent_tmpfiles_rule(fs):
    params = {"run": 1, "pages_to_scan": 200, "persistent": True}
    first = ensure(fs, params)
    assert first["changed"] is True
    text = pathlib.Path(fs.path(_ksm.TMPFILES)).read_text(encoding="utf-8")
    assert "w /sys/kernel/mm/ksm/pages_to_scan - - - - 200\n" in text
    assert text.rstrip().endswith("w /sys/kernel/mm/ksm/run - - - - 1")
    assert ensure(fs, params)["changed"] is False


def test_fault_read_only_etc_changes_no_ksm_value(fs, monkeypatch):
    # the real read-only bind mount is the faults integration target's; here the probe's answer stands for it
    monkeypatch.setattr(_ksm, "unwritable", lambda _fs, paths: {path: "Read-only file system" for path in paths})
    before = {name: _val(fs, name) for name in ("run", "pages_to_scan")}
    with pytest.raises(HostError, match=r"virtops-ksm.conf \(Read-only file system\): the file system is read-only .* nothing was changed"):
        ensure(fs, {"run": 1, "pages_to_scan": 321, "persistent": True})
    assert {name: _val(fs, name) for name in ("run", "pages_to_scan")} == before
    assert not pathlib.Path(fs.path(_ksm.TMPFILES)).exists()
    assert ensure(fs, {"run": 1, "pages_to_scan": 321, "persistent": True}, check_mode=True)["changed"] is True


def test_merge_across_nodes_is_a_tristate_in_results(fs):
    result = ensure(fs, {"run": 1, "merge_across_nodes": True})
    assert result["changed"] is False
    assert result["before"]["merge_across_nodes"] is True
    assert result["ksm"]["merge_across_nodes"] is True


def test_persistent_keeps_settings_another_task_wrote(fs):
    """Two ksm tasks with persistent=true: the second one's rule keeps the first one's settings."""
    ensure(fs, {"pages_to_scan": 300, "persistent": True})
    second = ensure(fs, {"sleep_millisecs": 70, "persistent": True})
    assert second["changed"] is True
    text = pathlib.Path(fs.path(_ksm.TMPFILES)).read_text(encoding="utf-8")
    assert "w /sys/kernel/mm/ksm/pages_to_scan - - - - 300\n" in text
    assert "w /sys/kernel/mm/ksm/sleep_millisecs - - - - 70\n" in text
    # the first task again: nothing to do, the second task's setting stays
    assert ensure(fs, {"pages_to_scan": 300, "persistent": True})["changed"] is False
    assert "sleep_millisecs - - - - 70" in pathlib.Path(fs.path(_ksm.TMPFILES)).read_text(encoding="utf-8")


def _persist_one(root, name, value):
    ensure(HostFS(root), {name: value, "persistent": True})


def test_fault_concurrent_persistent_runs_both_land(fs):
    """Concurrent processes writing different settings to the rule under its lock: every setting is there."""
    settings = [("pages_to_scan", 111), ("sleep_millisecs", 222), ("run", 1), ("merge_across_nodes", False)]
    fs.write("/sys/kernel/mm/ksm/pages_shared", 0)  # so merge_across_nodes can change without unmerging
    ctx = multiprocessing.get_context("fork")
    for _round in range(3):
        pathlib.Path(fs.path(_ksm.TMPFILES)).unlink(missing_ok=True)
        procs = [ctx.Process(target=_persist_one, args=(fs.root, name, value)) for name, value in settings]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        assert _ksm.rule_settings(pathlib.Path(fs.path(_ksm.TMPFILES)).read_text(encoding="utf-8")) == {
            "pages_to_scan": 111,
            "sleep_millisecs": 222,
            "run": 1,
            "merge_across_nodes": 0,
        }


@pytest.mark.parametrize(
    "params, message",
    [
        ({"pages_to_scan": -1}, "must be 0 or more"),
        ({"sleep_millisecs": "fast"}, "must be an integer"),
    ],
)
def test_bad_input(fs, params, message):
    with pytest.raises(ValidationError) as err:
        ensure(fs, params)
    assert message in err.value.msg


def test_no_ksm_in_kernel(tmp_path):
    with pytest.raises(HostError) as err:
        ensure(HostFS(str(tmp_path)), {"run": 1})
    assert "CONFIG_KSM" in err.value.msg
