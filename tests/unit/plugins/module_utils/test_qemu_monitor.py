# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qemu_monitor logic: command parsing, read-only detection, check mode and QMP errors.

libvirt's test driver has no QEMU monitor, so the monitor call is replaced here; the integration
target qemu_monitor sends the same commands to a real guest.
"""

from __future__ import annotations

import json

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _qemu_monitor as qm
from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError, VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends


@pytest.fixture
def sent(monkeypatch):
    calls = []

    def fake(dom, text, flags):
        calls.append((dom.name(), text, flags))
        if flags:
            return "RAX=0000000000000000\r\n"
        execute = json.loads(text)["execute"]
        if execute == "query-status":
            return json.dumps({"return": {"status": "running", "running": True}, "id": "libvirt-1"})
        if execute == "set_link":
            return json.dumps({"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}, "id": "libvirt-2"})
        return json.dumps({"return": {}, "id": "libvirt-3"})

    monkeypatch.setattr(qm, "qemu_monitor_command", fake)
    return calls


def run(conn, check=False, **params):
    params.setdefault("name", "test")
    return qm.ensure_qemu_monitor(Backends(libvirt=conn), params, check)


@pytest.mark.parametrize("command", [{"execute": "query-status"}, '{"execute": "query-status"}'])
def test_query_is_read_only_and_runs_in_check_mode(test_conn, sent, command):
    result = run(test_conn, check=True, command=command)
    assert result["changed"] is False and result["read_only"] and result["reply"] == {"status": "running", "running": True}
    assert sent == [("test", '{"execute": "query-status"}', 0)]


def test_hmp_info_is_read_only(test_conn, sent):
    result = run(test_conn, check=True, command="info registers", hmp=True)
    assert not result["changed"] and "RAX" in result["reply"] and sent[0][2] == 1


def test_changing_command_skipped_in_check_mode_and_sent_otherwise(test_conn, sent):
    command = {"execute": "system_wakeup"}
    check = run(test_conn, check=True, command=command)
    assert check["changed"] and check["skipped_in_check_mode"] and sent == []
    real = run(test_conn, command=command)
    assert real["changed"] and not real["skipped_in_check_mode"] and real["reply"] == {} and len(sent) == 1
    assert run(test_conn, command="stop", hmp=True)["changed"]


def test_qmp_error_has_class_and_description(test_conn, sent):
    with pytest.raises(VirtopsError, match="DeviceNotFound: Device 'nope' not found") as info:
        run(test_conn, command={"execute": "set_link", "arguments": {"name": "nope", "up": False}})
    assert info.value.details["error_class"] == "DeviceNotFound"


@pytest.mark.parametrize(
    "params,text",
    [
        (dict(command="info registers"), "neither a QMP dict nor JSON"),
        (dict(command={"arguments": {}}), "'execute' key"),
        (dict(command={"execute": "query-status", "id": 1}), "not id"),
        (dict(command="", hmp=True), "HMP text"),
        (dict(name="virtops-test-nope", command={"execute": "query-status"}), "does not exist"),
    ],
)
def test_bad_input_sends_nothing(test_conn, sent, params, text):
    with pytest.raises(ValidationError, match=text):
        run(test_conn, **params)
    assert sent == []


def test_shut_off_guest_has_no_monitor(test_conn, sent):
    dom = test_conn.lookup_domain("test")
    dom.destroy()
    try:
        with pytest.raises(ValidationError, match="shutoff"):
            run(test_conn, command={"execute": "query-status"})
        assert sent == []
    finally:  # test:///default may be shared with other tests of this process
        dom.create()
