# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError, run_module


class Exited(Exception):
    pass


class FakeModule:
    """Records what the boundary hands to exit_json/fail_json (both end the module)."""

    def __init__(self):
        self.result = None

    def exit_json(self, **kwargs):
        self.result = ("exit", kwargs)
        raise Exited()

    def fail_json(self, **kwargs):
        self.result = ("fail", kwargs)
        raise Exited()


def test_result_is_exited():
    module = FakeModule()
    with pytest.raises(Exited):
        run_module(module, lambda m, x: {"changed": x}, True)
    assert module.result == ("exit", {"changed": True})


def test_domain_errors_become_fail_json_with_details():
    def runner(_module):
        raise ValidationError("asked for X, found Y: do Z", line=3)

    module = FakeModule()
    with pytest.raises(Exited):
        run_module(module, runner)
    assert module.result == ("fail", {"msg": "asked for X, found Y: do Z", "line": 3})


def test_bugs_fail_with_a_traceback():
    def runner(_module):
        raise KeyError("boom")

    module = FakeModule()
    with pytest.raises(Exited):
        run_module(module, runner)
    kind, kwargs = module.result
    assert kind == "fail"
    assert "unexpected error" in kwargs["msg"]
    assert "KeyError" in kwargs["exception"]
