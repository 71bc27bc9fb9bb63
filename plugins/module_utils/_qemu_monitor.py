# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""One QEMU monitor command on a running guest (the logic of ``qemu_monitor``).

Read-only commands (QMP ``query-*``, HMP ``info ...``) report ``changed=false`` and also run in
check mode; any other command reports ``changed=true`` and is skipped in check mode. The command
goes through libvirt's ``qemuMonitorCommand``; libvirt marks the guest tainted (``custom-monitor``).
"""

from __future__ import annotations

import json

from ansible_collections.virtops.kvm.plugins.module_utils._domain_state import state_of
from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError, VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import (
    VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT,
    VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
    qemu_monitor_command,
)

_MONITOR_STATES = ("running", "paused", "blocked", "pmsuspended")


def parse_command(command, hmp):
    """``(text sent to libvirt, read_only)`` for a QMP dict/JSON text, or HMP text."""
    if hmp:
        if not isinstance(command, str) or not command.strip():
            raise ValidationError("with hmp=true, command is the HMP text (for example 'info registers')")
        words = command.split()
        return command.strip(), words[0] == "info"
    if isinstance(command, str):
        try:
            command = json.loads(command)
        except ValueError as exc:
            raise ValidationError("command is neither a QMP dict nor JSON text (%s); set hmp=true for HMP text" % exc) from exc
    if not isinstance(command, dict) or not isinstance(command.get("execute"), str):
        raise ValidationError("a QMP command is a dict with an 'execute' key (and optional 'arguments')")
    unknown = sorted(set(command) - {"execute", "arguments"})
    if unknown:
        raise ValidationError("a QMP command has only 'execute' and 'arguments' keys, not %s" % ", ".join(unknown))
    return json.dumps(command, sort_keys=True), command["execute"].startswith("query-")


def ensure_qemu_monitor(backends, params, check_mode):
    hmp = bool(params.get("hmp"))
    text, read_only = parse_command(params["command"], hmp)
    dom = backends.libvirt.lookup_domain(params["name"])
    if dom is None:
        raise ValidationError("guest %r does not exist" % params["name"])
    state = state_of(dom)[0]
    if state not in _MONITOR_STATES:
        raise ValidationError("guest %s is %s: the QEMU monitor exists only while it runs" % (params["name"], state))
    result = dict(changed=not read_only, read_only=read_only, skipped_in_check_mode=False, command=text)
    if check_mode and not read_only:
        result["skipped_in_check_mode"] = True
        result["reply"] = None
        return result
    flags = VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP if hmp else VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT
    raw = qemu_monitor_command(dom, text, flags)
    result["reply"] = raw if hmp else parse_qmp_reply(raw, text)
    return result


def parse_qmp_reply(raw, text):
    """QMP's ``return`` value; a QMP ``error`` becomes a clear failure with QEMU's class and description."""
    try:
        reply = json.loads(raw)
    except ValueError as exc:
        raise VirtopsError("QEMU's reply to %s is not JSON: %s" % (text, raw)) from exc
    if isinstance(reply, dict) and "error" in reply:
        error = reply["error"] or {}
        raise VirtopsError(
            "QEMU refused %s: %s: %s" % (text, error.get("class", "GenericError"), error.get("desc", "no description")),
            error_class=error.get("class"),
            error_desc=error.get("desc"),
        )
    return reply.get("return") if isinstance(reply, dict) else reply
