# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""ksm: Kernel Same-page Merging settings in /sys/kernel/mm/ksm, at runtime and through a tmpfiles rule.

``merge_across_nodes`` can only be written while no page is shared: the kernel answers EBUSY
otherwise. :func:`ensure_ksm` then unmerges (``run`` = 2), waits for ``pages_shared`` to drop to
zero, writes the setting and puts ``run`` back, or fails saying what is still shared.

The boot-time rule is merged, not replaced: settings another ksm task made persistent stay in it.
It is read, merged and written under its file lock, so concurrent runs both land their change.
"""

from __future__ import annotations

import re
import time

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._host_facts import KSM, gather_ksm, locked_files, read_raw, unwritable

SETTINGS = ("pages_to_scan", "sleep_millisecs", "merge_across_nodes", "run")
SWITCHES = ("merge_across_nodes",)
TMPFILES = "/etc/tmpfiles.d/virtops-ksm.conf"
TMPFILES_HEADER = "# Managed by virtops.kvm.ksm: KSM settings applied at boot by systemd-tmpfiles."
RUN_UNMERGE = 2
_RULE = re.compile(r"^w\s+%s/(\w+)\s+-\s+-\s+-\s+-\s+(\d+)\s*$" % re.escape(KSM))


def desired_settings(params):
    """The settings the user asked for: switches as booleans, the others as the integers sysfs holds."""
    wanted = {}
    for name in SETTINGS:
        value = params.get(name)
        if value is None:
            continue
        if name in SWITCHES:
            wanted[name] = bool(value)
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("%s must be an integer, got %r" % (name, value))
        if value < 0:
            raise ValidationError("%s must be 0 or more, got %d" % (name, value))
        wanted[name] = value
    return wanted


def _sysfs(value):
    """What sysfs takes for a setting: 1/0 for a switch, the integer otherwise."""
    return int(value)


def rule_settings(text):
    """``{name: int}`` of the settings a tmpfiles rule written by this module holds."""
    found = {}
    for line in (text or "").splitlines():
        match = _RULE.match(line.strip())
        if match and match.group(1) in SETTINGS:
            found[match.group(1)] = int(match.group(2))
    return found


def tmpfiles_rule(settings):
    """A systemd-tmpfiles configuration writing ``settings`` to sysfs at boot (``run`` last)."""
    lines = [TMPFILES_HEADER]
    for name in SETTINGS:
        if name in settings:
            lines.append("w %s/%s - - - - %d" % (KSM, name, _sysfs(settings[name])))
    return "\n".join(lines) + "\n"


def _wait_unshared(fs, timeout, sleep):
    deadline = time.monotonic() + timeout
    while True:
        shared = fs.read_int(KSM + "/pages_shared", 0)
        if shared == 0:
            return 0
        if time.monotonic() >= deadline:
            return shared
        sleep(0.2)


def _write_merge_across_nodes(fs, value, current, params, sleep):
    """Write merge_across_nodes, unmerging first when pages are shared (the kernel refuses otherwise)."""
    shared = current.get("pages_shared") or 0
    unmerge_timeout = params.get("unmerge_timeout", 60)
    if shared and not params.get("unmerge", True):
        raise HostError(
            "merge_across_nodes can only change while no pages are shared, and %d pages are shared now: "
            "set unmerge=true to let the module unmerge them (run=2) first, or stop KSM (run=2) yourself" % shared,
            pages_shared=shared,
        )
    previous_run = current["run"]
    if shared:
        fs.write(KSM + "/run", RUN_UNMERGE)
        left = _wait_unshared(fs, unmerge_timeout, sleep)
        if left:
            fs.write(KSM + "/run", previous_run)
            raise HostError(
                "merge_across_nodes=%s needs every KSM page unmerged first; after run=2 and %ss, %d pages are still shared. "
                "run was put back to %d. Retry with a longer unmerge_timeout." % (str(value).lower(), unmerge_timeout, left, previous_run),
                pages_shared=left,
            )
    fs.write(KSM + "/merge_across_nodes", _sysfs(value))
    if shared:
        fs.write(KSM + "/run", previous_run)


def _plan(fs, params):
    if not fs.isdir(KSM):
        raise HostError("%s does not exist: this kernel has no KSM (CONFIG_KSM); nothing can be set" % KSM)
    wanted = desired_settings(params)
    current = gather_ksm(fs)
    if "merge_across_nodes" in wanted and current.get("merge_across_nodes") is None:
        raise ValidationError("merge_across_nodes is not offered by this kernel (%s/merge_across_nodes is missing; the host is not NUMA)" % KSM)
    before = {name: current.get(name) for name in SETTINGS}
    after = dict(before)
    after.update(wanted)
    changes = {name: value for name, value in wanted.items() if current.get(name) != value}
    before_file = after_file = None
    if params.get("persistent"):
        before_file = read_raw(fs, TMPFILES)
        merged = rule_settings(before_file)
        merged.update(wanted)
        after_file = tmpfiles_rule(merged)
    return current, before, after, changes, before_file, after_file


def _check_writable(fs):
    """Refuse before any KSM value changes when the boot-time rule cannot be written (a read-only /etc)."""
    problems = unwritable(fs, [TMPFILES])
    if problems:
        raise HostError(
            "cannot write %s (%s): the file system is read-only or not writable, so nothing was changed: the KSM settings "
            "were not touched either. Make it writable and run again" % (TMPFILES, problems[TMPFILES]),
            unwritable=[TMPFILES],
        )


def ensure_ksm(backends, params, check_mode, *, sleep=time.sleep):
    """The module's entry point: bring KSM to ``params`` (``sleep`` is how the run waits for the kernel)."""
    fs = backends.hostfs
    persistent = bool(params.get("persistent"))
    with locked_files(fs, [TMPFILES] if persistent else []):
        current, before, after, changes, before_file, after_file = _plan(fs, params)
        file_changed = persistent and before_file != after_file
        if file_changed and not check_mode:
            _check_writable(fs)
        if not check_mode:
            for name in ("pages_to_scan", "sleep_millisecs"):
                if name in changes:
                    fs.write("%s/%s" % (KSM, name), changes[name])
            if "merge_across_nodes" in changes:
                _write_merge_across_nodes(fs, changes["merge_across_nodes"], current, params, sleep)
            if "run" in changes:
                fs.write(KSM + "/run", changes["run"])
            if file_changed:
                fs.write_atomic(TMPFILES, after_file, mode=0o644)
    if check_mode:
        counters = dict(current)
        counters.update(after)
    else:
        counters = gather_ksm(fs)
    result = {
        "changed": bool(changes) or bool(file_changed),
        "ksm": counters,
        "before": before,
        "after": after,
        "warnings": [],
        "diff": {
            "before": _diff_text(before, before_file if persistent else None),
            "after": _diff_text(after, after_file),
            "before_header": KSM,
            "after_header": KSM,
        },
    }
    if persistent:
        result["tmpfiles"] = TMPFILES
    return result


def _diff_text(settings, file_text):
    text = "".join("%s = %s\n" % (name, settings[name]) for name in SETTINGS)
    if file_text is not None:
        text += "# %s\n%s" % (TMPFILES, file_text)
    return text
