# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hugepage pools: runtime allocation through sysfs, persistence, hugetlbfs mounts.

The plan (what to write where) is computed first from what sysfs and /etc hold now; check mode
and diff use that same plan and only skip the writes. Allocation goes through a *writer*
(``fs.write`` on a real host): the kernel may give fewer pages than asked, so every write is
followed by a re-read. A test passes a writer that behaves like a kernel short of memory.
"""

from __future__ import annotations

import os
import re

from ansible_collections.virtops.kvm.plugins.module_utils._command import CommandRunner
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._host_info import (
    HUGEPAGES,
    NODES,
    default_hugepage_size_kb,
    gather_hugepages,
    hugetlbfs_mounts,
    node_ids,
)
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import hostfs_for

GIGANTIC_KB = 1048576
SYSCTL_FILE = "/etc/sysctl.d/80-virtops-hugepages.conf"
TMPFILES_FILE = "/etc/tmpfiles.d/virtops-hugepages-%dkB.conf"
GRUB_FILE = "/etc/default/grub.d/virtops-hugepages-%dkB.cfg"
FSTAB = "/etc/fstab"
HEADER = "# Managed by virtops.kvm.hugepages; edits are overwritten.\n"
_UNITS = {"": 1, "k": 1, "m": 1024, "g": 1024 * 1024}


def parse_size_kb(text):
    """'2M', '1G', '2048kB', '2MiB', '1GB' -> size in kB; ValidationError for anything else."""
    match = re.match(r"^\s*(\d+)\s*([kmg])(?:i?b)?\s*$", str(text), re.IGNORECASE)
    if not match or int(match.group(1)) == 0:
        raise ValidationError("size %r is not a page size: write it like 2M, 1G or 2048kB" % (text,))
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def size_label(size_kb):
    """The short form the kernel command line and hugetlbfs use: 2M, 1G, 64K."""
    if size_kb % GIGANTIC_KB == 0:
        return "%dG" % (size_kb // GIGANTIC_KB)
    if size_kb % 1024 == 0:
        return "%dM" % (size_kb // 1024)
    return "%dK" % size_kb


def _mem_total_kb(fs, node=None):
    path = "/proc/meminfo" if node is None else "%s/node%d/meminfo" % (NODES, node)
    for line in fs.read_lines(path):
        match = re.match(r"(?:Node \d+ )?MemTotal:\s+(\d+) kB", line)
        if match:
            return int(match.group(1))
    return None


def _pool_dir(size_kb, node=None):
    if node is None:
        return "%s/hugepages-%dkB" % (HUGEPAGES, size_kb)
    return "%s/node%d/hugepages/hugepages-%dkB" % (NODES, node, size_kb)


def _targets(fs, params, size_kb):
    """[(node or None, wanted count)] from count/nodes/state, validated against the host."""
    absent = params.get("state") == "absent"
    nodes = params.get("nodes")
    count = params.get("count")
    if nodes:
        known = node_ids(fs)
        targets = []
        for key, value in sorted(nodes.items(), key=lambda item: str(item[0])):
            try:
                node, pages = int(str(key).replace("node", "")), int(value)
            except (TypeError, ValueError) as exc:
                raise ValidationError("nodes must map NUMA node numbers to page counts, got %r: %r" % (key, value)) from exc
            if node not in known or not fs.isdir(_pool_dir(size_kb, node)):
                raise ValidationError("NUMA node %s does not exist on this host (nodes: %s)" % (key, ", ".join(str(n) for n in known) or "none"))
            targets.append((node, 0 if absent else pages))
    else:
        if count is None and not absent:
            raise ValidationError("state=present needs count (pages system-wide) or nodes (pages per NUMA node)")
        targets = [(None, 0 if absent else count)]
    for node, wanted in targets:
        if wanted < 0:
            raise ValidationError("page counts must be 0 or more, got %d" % wanted)
        mem = _mem_total_kb(fs, node)
        if mem is not None and wanted * size_kb > mem:
            raise ValidationError(
                "asked for %d pages of %d kB (%d MiB) %s, but it has only %d MiB of memory in total: ask for fewer pages"
                % (wanted, size_kb, wanted * size_kb // 1024, _where(node), mem // 1024)
            )
    return targets


def _where(node):
    return "system-wide" if node is None else "on node %d" % node


# -- persistence ---------------------------------------------------------------------------------
def persistent_files(fs, size_kb, plan, state):
    """{host path: desired content or None (remove)} for the boot-time configuration of this pool."""
    files = {}
    default_kb = default_hugepage_size_kb(fs)
    system_only = len(plan) == 1 and plan[0]["node"] is None
    grub, tmpfiles = GRUB_FILE % size_kb, TMPFILES_FILE % size_kb
    if state == "absent":
        files[grub] = files[tmpfiles] = None
        if size_kb == default_kb:
            files[SYSCTL_FILE] = None
        return files
    if size_kb >= GIGANTIC_KB:
        pages = "%d" % plan[0]["final"] if system_only else ",".join("%d:%d" % (entry["node"], entry["final"]) for entry in plan)
        files[grub] = HEADER + 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT hugepagesz=%s hugepages=%s"\n' % (size_label(size_kb), pages)
    elif system_only and size_kb == default_kb:
        files[SYSCTL_FILE] = HEADER + "vm.nr_hugepages = %d\n" % plan[0]["final"]
    else:
        lines = ["w %s/nr_hugepages - - - - %d" % (_pool_dir(size_kb, entry["node"]), entry["final"]) for entry in plan]
        files[tmpfiles] = HEADER + "\n".join(lines) + "\n"
    return files


def fstab_with_mount(text, path, pagesize, present):
    """``text`` of /etc/fstab with the hugetlbfs line for ``path`` added, replaced or removed."""
    wanted = "hugetlbfs %s hugetlbfs pagesize=%s 0 0" % (path, pagesize)
    lines, found = [], False
    for line in (text or "").splitlines():
        fields = line.split()
        if fields and not line.lstrip().startswith("#") and len(fields) >= 2 and fields[1].rstrip("/") == path.rstrip("/"):
            if present and not found:
                lines.append(wanted)
            found = True
            continue
        lines.append(line)
    if present and not found:
        lines.append(wanted)
    return "\n".join(lines) + "\n" if lines else ""


def _read_file(fs, path):
    text = None
    if fs.exists(path):
        try:
            with open(fs.path(path), encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise HostError("cannot read %s: %s" % (path, exc)) from exc
    return text


def bootloader_command(runner):
    if runner is not None and runner.which("update-grub"):
        return ["update-grub"]
    return ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]


# -- allocation ----------------------------------------------------------------------------------
def _compact(fs, writer):
    """Give the kernel contiguous memory back: drop clean caches, compact every zone."""
    for path, value in (("/proc/sys/vm/drop_caches", 3), ("/proc/sys/vm/compact_memory", 1)):
        if fs.exists(path):
            writer(path, value)


def _allocate(fs, writer, entry, params, warnings):
    size_kb = entry["size_kb"]
    path = _pool_dir(size_kb, entry["node"]) + "/nr_hugepages"
    writer(path, entry["final"])
    got = fs.read_int(path)
    raising = entry["final"] > entry["current"]
    if raising and got is not None and got < entry["final"] and params.get("compact"):
        _compact(fs, writer)
        writer(path, entry["final"])
        got = fs.read_int(path)
    entry["got"] = got
    if raising and got is not None and got < entry["final"]:
        asked = "asked for %d pages of %d kB %s, the kernel allocated %d" % (entry["final"], size_kb, _where(entry["node"]), got)
        if params.get("allow_partial"):
            warnings.append(asked + "; kept (allow_partial=true)")
            return
        writer(path, entry["current"])
        hint = "free memory is fragmented: retry with compact=true or allocate at boot (persistent=true)"
        if params.get("compact"):
            hint = "memory stayed short after compaction: allocate at boot (persistent=true) or ask for fewer pages"
        raise HostError("%s; %s. The previous count (%d) was restored." % (asked, hint, entry["current"]),
                        asked=entry["final"], allocated=got, size_kb=size_kb, node=entry["node"])
    surplus = fs.read_int(_pool_dir(size_kb, entry["node"]) + "/surplus_hugepages", 0)
    if entry["final"] < entry["current"] and surplus:
        warnings.append("lowered to %d pages of %d kB %s, but %d pages are in use and stay allocated as surplus until freed"
                        % (entry["final"], size_kb, _where(entry["node"]), surplus))


# -- the runner ----------------------------------------------------------------------------------
def ensure_hugepages(fs, params, runner=None, check_mode=False, writer=None):
    """Bring one hugepage pool to ``params``; returns the module result with a ``diff`` key."""
    writer = writer or fs.write
    available = [int(m.group(1)) for m in (re.match(r"hugepages-(\d+)kB$", e) for e in fs.listdir(HUGEPAGES)) if m]
    size_kb = parse_size_kb(params["size"]) if params.get("size") else default_hugepage_size_kb(fs)
    if size_kb not in available:
        raise ValidationError("this kernel has no %s pool for size %s; it offers: %s"
                              % (_pool_dir(size_kb), params.get("size") or size_kb, ", ".join(size_label(s) for s in sorted(available)) or "none"))
    state = params.get("state") or "present"
    mode = params.get("mode") or "exact"
    plan = []
    for node, wanted in _targets(fs, params, size_kb):
        current = fs.read_int(_pool_dir(size_kb, node) + "/nr_hugepages", 0)
        final = max(current, wanted) if mode == "at_least" and state == "present" else wanted
        plan.append({"node": node, "current": current, "final": final, "size_kb": size_kb})

    key = "%dkB" % size_kb
    before_pool = gather_hugepages(fs)["pools"][key]
    files = persistent_files(fs, size_kb, plan, state) if params.get("persistent") else {}
    mount = params.get("mount")
    if mount:
        fstab_before = _read_file(fs, FSTAB)
        files[FSTAB] = fstab_with_mount(fstab_before, mount, size_label(size_kb), state == "present")
        if fstab_before is None and state == "absent":
            files[FSTAB] = None
    file_before = {path: _read_file(fs, path) for path in files}
    file_changes = {path: content for path, content in files.items() if file_before[path] != content}

    mounted = any(m["path"].rstrip("/") == mount.rstrip("/") for m in hugetlbfs_mounts(fs)) if mount else False
    mount_change = bool(mount) and mounted != (state == "present")
    count_changes = [entry for entry in plan if entry["current"] != entry["final"]]
    grub_changed = any(path.startswith("/etc/default/grub.d/") for path in file_changes)
    on_host = fs.root == "/"

    commands, skipped, warnings = [], [], []
    if grub_changed:
        commands.append(bootloader_command(runner))
    if mount_change:
        if state == "present":
            commands.append(["mount", "-t", "hugetlbfs", "-o", "pagesize=%s" % size_label(size_kb), "hugetlbfs", mount])
        else:
            commands.append(["umount", mount])

    if not check_mode:
        for entry in count_changes:
            _allocate(fs, writer, entry, params, warnings)
        for path, content in file_changes.items():
            if content is None:
                fs.remove(path)
            else:
                fs.write_atomic(path, content, mode=0o644)
        if mount and state == "present" and not fs.isdir(mount):
            os.makedirs(fs.path(mount), mode=0o755, exist_ok=True)
        for cmd in commands:
            if on_host and runner is not None:
                runner.run(cmd)
            else:
                skipped.append(cmd)
        after_pool = gather_hugepages(fs)["pools"][key]
    else:
        after_pool = dict(before_pool, nodes={k: dict(v) for k, v in before_pool.get("nodes", {}).items()})
        for entry in plan:
            if entry["node"] is None:
                after_pool["total"] = entry["final"]
            else:
                after_pool["nodes"].setdefault(str(entry["node"]), {})["total"] = entry["final"]
        skipped = list(commands) if not on_host else []

    result = {
        "changed": bool(count_changes or file_changes or mount_change),
        "size_kb": size_kb,
        "before": before_pool,
        "after": after_pool,
        "reboot_required": grub_changed,
        "files": sorted(file_changes),
        "commands": commands,
        "commands_skipped": skipped,
        "warnings": warnings,
        "diff": {
            "before": _diff_text(plan, "current", file_before, files),
            "after": _diff_text(plan, "final", files, files),
            "before_header": "hugepages-%dkB" % size_kb,
            "after_header": "hugepages-%dkB" % size_kb,
        },
    }
    if grub_changed and skipped:
        grub_files = ", ".join(p for p in file_changes if "grub" in p)
        warnings.append("the kernel command line changed in %s; run %s and reboot" % (grub_files, " ".join(commands[0])))
    return result


def _diff_text(plan, field, contents, files):
    text = "".join("nr_hugepages %s = %d\n" % (_where(entry["node"]), entry[field]) for entry in plan)
    for path in sorted(files):
        content = contents.get(path)
        text += "# %s\n%s" % (path, "(absent)\n" if content is None else content)
    return text


def run_hugepages(module):
    """Module runner."""
    fs = hostfs_for(module, module.params["root"])
    result = ensure_hugepages(fs, module.params, runner=CommandRunner(module), check_mode=module.check_mode)
    diff = result.pop("diff")
    for warning in result.pop("warnings"):
        module.warn(warning)
    if module._diff:
        result["diff"] = diff
    return result
