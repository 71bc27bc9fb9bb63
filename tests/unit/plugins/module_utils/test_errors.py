# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exception hierarchy: what the one boundary (``_runner.run_module``, tested in test_runner.py) turns into ``fail_json``."""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError, HostError, ValidationError, VirtopsError


def test_details_travel_with_the_message():
    exc = ValidationError("asked for X, found Y: do Z", line=3)
    assert isinstance(exc, VirtopsError)
    assert exc.msg == "asked for X, found Y: do Z"
    assert exc.details == {"line": 3}


def test_command_errors_are_host_errors_and_keep_the_command_output():
    exc = CommandError("qemu-img failed", cmd=["qemu-img", "info"], rc=1, stdout="", stderr="no such file")
    assert isinstance(exc, HostError)
    assert (exc.rc, exc.stderr) == (1, "no such file")
    assert exc.details["cmd"] == ["qemu-img", "info"]
