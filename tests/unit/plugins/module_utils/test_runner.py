# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module contract: run_module owns diff, warnings and errors; Backends confine a fake root."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import is_local_uri
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends, finish, run_module


class Exited(Exception):
    pass


class FakeModule:
    """Records what the boundary hands to Ansible (exit_json/fail_json end the module)."""

    def __init__(self, params=None, check_mode=False, diff=False):
        self.params = params or {}
        self.check_mode = check_mode
        self._diff = diff
        self.result = None
        self.warnings = []

    def warn(self, text):
        self.warnings.append(text)

    def atomic_move(self, src, dst):
        raise AssertionError("not used here")

    def exit_json(self, **kwargs):
        self.result = ("exit", kwargs)
        raise Exited()

    def fail_json(self, **kwargs):
        self.result = ("fail", kwargs)
        raise Exited()


def _run(module, runner):
    with pytest.raises(Exited):
        run_module(module, runner)
    return module.result


def test_runner_gets_backends_params_and_check_mode():
    seen = {}

    def ensure(backends, params, check_mode):
        seen.update(backends=backends, params=params, check_mode=check_mode)
        return {"changed": False}

    module = FakeModule(params={"name": "x"}, check_mode=True)
    assert _run(module, ensure) == ("exit", {"changed": False})
    assert isinstance(seen["backends"], Backends)
    assert seen["params"] == {"name": "x"}
    assert seen["check_mode"] is True


@pytest.mark.parametrize(
    ("diff_mode", "changed", "has_diff"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_diff_only_in_diff_mode_and_when_changed(diff_mode, changed, has_diff):
    def ensure(_backends, _params, _check_mode):
        return {"changed": changed, "diff": {"before": "a", "after": "b"}}

    kind, result = _run(FakeModule(diff=diff_mode), ensure)
    assert kind == "exit"
    assert ("diff" in result) is has_diff


def test_warnings_are_emitted_not_returned():
    def ensure(_backends, _params, _check_mode):
        return {"changed": False, "warnings": ["could not validate"]}

    module = FakeModule()
    kind, result = _run(module, ensure)
    assert kind == "exit"
    assert "warnings" not in result
    assert module.warnings == ["could not validate"]


def test_domain_errors_become_fail_json_with_details_and_warnings():
    def ensure(_backends, _params, _check_mode):
        raise ValidationError("asked for X, found Y: do Z", line=3, warnings=["half way"])

    module = FakeModule()
    assert _run(module, ensure) == ("fail", {"msg": "asked for X, found Y: do Z", "line": 3})
    assert module.warnings == ["half way"]


def test_bugs_fail_with_traceback():
    def ensure(_backends, _params, _check_mode):
        raise KeyError("oops")

    kind, result = _run(FakeModule(), ensure)
    assert kind == "fail"
    assert result["msg"].startswith("unexpected error")
    assert "Traceback" in result["exception"]


def test_finish_keeps_other_keys():
    result, warnings = finish({"changed": True, "diff": {"before": 1, "after": 2}, "warnings": ["w"], "x": 1}, True)
    assert result == {"changed": True, "diff": {"before": 1, "after": 2}, "x": 1}
    assert warnings == ["w"]


def test_fake_root_confines_netlink_and_host_steps(tmp_path):
    backends = Backends(root=str(tmp_path), uri="qemu:///system")
    assert backends.confined is True
    assert backends.netlink is None
    assert backends.host_local is False
    assert backends.hostfs.root == str(tmp_path)


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("qemu:///system", True),
        ("qemu+unix:///system", True),
        ("qemu://localhost/system", True),
        ("qemu+ssh://root@hv1/system", False),
        ("qemu+tls://hv2/system", False),
        ("test:///default", False),
        ("", False),
        ("not a uri", False),
    ],
)
def test_is_local_uri(uri, local):
    assert is_local_uri(uri) is local


def test_libvirt_client_built_once_and_closed(test_conn):
    backends = Backends(libvirt=test_conn)
    assert backends.libvirt is test_conn
    assert backends.uri == "test:///default"
    assert backends.host_local is False
