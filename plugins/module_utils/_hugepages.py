# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""hugepages: hugepage pools through sysfs, their boot-time configuration, hugetlbfs mounts.

The plan (what to write where) is computed first from what sysfs and /etc hold now, and
validated in full (page size, counts, the mount point and its fstab line, that the files can be
written); check mode and diff use that same plan and only skip the writes. Allocation goes through
a *writer* (``fs.write`` on a real host): the kernel may give fewer pages than asked, so every
write is followed by a re-read. A test passes a writer that behaves like a kernel short of memory.

Every configuration file (fstab, sysctl.d, tmpfiles.d, grub.d) is read, changed and written under
its file lock for the whole run, so concurrent runs both land their change. Only fstab lines of
type hugetlbfs are ever changed.
"""

from __future__ import annotations

import os
import re

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._host_facts import (
    HUGEPAGES,
    NODES,
    apply_files,
    default_hugepage_size_kb,
    escape_octal,
    gather_hugepages,
    hugepage_sizes_kb,
    locked_files,
    mounts,
    node_ids,
    read_raw,
    unescape_octal,
    unwritable,
)
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import validate_path
from ansible_collections.virtops.kvm.plugins.module_utils._units import parse_size

GIGANTIC_KB = 1048576
SYSCTL_FILE = "/etc/sysctl.d/80-virtops-hugepages.conf"
TMPFILES_FILE = "/etc/tmpfiles.d/virtops-hugepages-%dkB.conf"
GRUB_FILE = "/etc/default/grub.d/virtops-hugepages-%dkB.cfg"
FSTAB = "/etc/fstab"
HEADER = "# Managed by virtops.kvm.hugepages; edits are overwritten.\n"
_PAGE_SIZE = re.compile(r"^\s*(\d+)\s*([kmg])(?:i?b)?\s*$", re.IGNORECASE)
_TMPFILES_LINE = re.compile(r"^w\s+(\S+)/nr_hugepages\s+-\s+-\s+-\s+-\s+(\d+)\s*$")


def parse_size_kb(text):
    """'2M', '1G', '2048kB', '2MiB', '1GB' -> size in kB; ValidationError for anything else.

    Page sizes are binary whatever the spelling (the kernel writes ``2048kB`` and means KiB), so the
    unit is read as its ``*iB`` form by the collection's one size parser.
    """
    match = _PAGE_SIZE.match(str(text))
    if not match or int(match.group(1)) == 0:
        raise ValidationError("size %r is not a page size: write it like 2M, 1G or 2048kB" % (text,))
    size = parse_size("%s%siB" % (match.group(1), match.group(2).upper()), what="size", minimum=1024)
    return size // 1024


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


def _where(node):
    return "system-wide" if node is None else "on node %d" % node


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


# -- persistence ---------------------------------------------------------------------------------
def _tmpfiles_text(fs, size_kb, plan):
    """The tmpfiles rule for this pool: the planned counts, and the other nodes' lines another task wrote kept."""
    planned = {_pool_dir(size_kb, entry["node"]): entry["final"] for entry in plan}
    kept = {}
    for line in (read_raw(fs, TMPFILES_FILE % size_kb) or "").splitlines():
        match = _TMPFILES_LINE.match(line.strip())
        if match and match.group(1) not in planned:
            kept[match.group(1)] = int(match.group(2))
    kept.update(planned)
    return HEADER + "".join("w %s/nr_hugepages - - - - %d\n" % (path, count) for path, count in sorted(kept.items()))


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
        files[tmpfiles] = _tmpfiles_text(fs, size_kb, plan)
    return files


# -- the mount point -----------------------------------------------------------------------------
def validate_mount(value):
    """The mount point, validated: absolute, no control characters or surrounding white space, no '..', not /."""
    path = validate_path(value, "mount")
    if path == "/":
        raise ValidationError("mount / is the root file system: give a directory of its own for hugetlbfs, such as /dev/hugepages1G")
    return path


def fstab_with_mount(text, path, pagesize, present):
    """``text`` of /etc/fstab with the hugetlbfs line for ``path`` added, replaced or removed.

    Only lines of type hugetlbfs are touched; a line of another type at ``path`` is refused
    (ValidationError), every other line is kept byte for byte. Spaces in ``path`` are written as
    fstab's octal escapes (``\\040``).
    """
    wanted = "hugetlbfs %s hugetlbfs pagesize=%s 0 0\n" % (escape_octal(path), pagesize)
    lines, found = [], False
    for line in (text or "").splitlines(keepends=True):
        fields = line.split()
        if len(fields) >= 3 and not fields[0].startswith("#") and unescape_octal(fields[1]).rstrip("/") == path.rstrip("/"):
            if fields[2] != "hugetlbfs":
                raise ValidationError(
                    "mount %s is in /etc/fstab as a %s file system (%r): this module only manages hugetlbfs lines, so /etc/fstab "
                    "was left untouched. Choose another mount point for hugetlbfs" % (path, fields[2], line.strip())
                )
            if present and not found:
                lines.append(wanted)
            found = True
            continue
        lines.append(line)
    if present and not found:
        if lines and not lines[-1].endswith("\n"):
            lines.append("\n")
        lines.append(wanted)
    return "".join(lines)


def _mount_state(fs, mount):
    """True when ``mount`` is mounted as hugetlbfs now; ValidationError when something else is mounted there."""
    for entry in mounts(fs):
        if entry["path"].rstrip("/") == mount.rstrip("/"):
            if entry["fstype"] != "hugetlbfs":
                raise ValidationError(
                    "mount %s is in use as a %s file system (%s): mounting hugetlbfs there would hide it; choose another mount point"
                    % (mount, entry["fstype"], entry["source"])
                )
            return True
    return False


def bootloader_command(fs, runner, confined):
    """``update-grub`` where it exists (in the tree under a fake root), else ``grub2-mkconfig``."""
    in_tree = any(fs.exists("%s/update-grub" % d) for d in ("/usr/sbin", "/sbin"))
    found = in_tree if confined else runner is not None and runner.which("update-grub")
    return ["update-grub"] if found else ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]


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
        raise HostError(
            "%s; %s. The previous count (%d) was restored; no file was changed." % (asked, hint, entry["current"]),
            asked=entry["final"],
            allocated=got,
            size_kb=size_kb,
            node=entry["node"],
        )
    surplus = fs.read_int(_pool_dir(size_kb, entry["node"]) + "/surplus_hugepages", 0)
    if entry["final"] < entry["current"] and surplus:
        warnings.append(
            "lowered to %d pages of %d kB %s, but %d pages are in use and stay allocated as surplus until freed"
            % (entry["final"], size_kb, _where(entry["node"]), surplus)
        )


# -- plan ----------------------------------------------------------------------------------------
def _size(fs, params):
    available = hugepage_sizes_kb(fs)
    size_kb = parse_size_kb(params["size"]) if params.get("size") else default_hugepage_size_kb(fs)
    if size_kb not in available:
        raise ValidationError(
            "this kernel has no %s pool for size %s; it offers: %s"
            % (_pool_dir(size_kb), params.get("size") or size_kb, ", ".join(size_label(s) for s in available) or "none")
        )
    return size_kb


def files_to_lock(fs, params):
    """Every configuration file the run may read and write (locked for the whole run)."""
    paths = []
    if params.get("mount"):
        paths.append(FSTAB)
    if params.get("persistent"):
        size_kb = parse_size_kb(params["size"]) if params.get("size") else default_hugepage_size_kb(fs)
        paths += [SYSCTL_FILE, TMPFILES_FILE % size_kb, GRUB_FILE % size_kb]
    return paths


def plan_hugepages(fs, runner, params, confined):
    """Everything the run will do, validated; nothing is changed."""
    size_kb = _size(fs, params)
    state = params.get("state") or "present"
    mode = params.get("mode") or "exact"
    mount = validate_mount(params["mount"]) if params.get("mount") else None
    plan = []
    for node, wanted in _targets(fs, params, size_kb):
        current = fs.read_int(_pool_dir(size_kb, node) + "/nr_hugepages", 0)
        final = max(current, wanted) if mode == "at_least" and state == "present" else wanted
        plan.append({"node": node, "current": current, "final": final, "size_kb": size_kb})
    files = persistent_files(fs, size_kb, plan, state) if params.get("persistent") else {}
    mounted = False
    if mount:
        mounted = _mount_state(fs, mount)
        fstab_before = read_raw(fs, FSTAB)
        files[FSTAB] = fstab_with_mount(fstab_before, mount, size_label(size_kb), state == "present")
        if fstab_before is None and state == "absent":
            files[FSTAB] = None
    file_before = {path: read_raw(fs, path) for path in files}
    file_changes = {path: content for path, content in files.items() if file_before[path] != content}
    mount_change = bool(mount) and mounted != (state == "present")
    commands = []
    grub_changed = any(path.startswith("/etc/default/grub.d/") for path in file_changes)
    if grub_changed:
        commands.append(bootloader_command(fs, runner, confined))
    if mount_change:
        if state == "present":
            commands.append(["mount", "-t", "hugetlbfs", "-o", "pagesize=%s" % size_label(size_kb), "hugetlbfs", mount])
        else:
            commands.append(["umount", mount])
    return {
        "size_kb": size_kb,
        "state": state,
        "mount": mount,
        "pools": plan,
        "files": files,
        "file_before": file_before,
        "file_changes": file_changes,
        "mount_change": mount_change,
        "count_changes": [entry for entry in plan if entry["current"] != entry["final"]],
        "grub_changed": grub_changed,
        "commands": commands,
        "skipped": list(commands) if confined else [],
    }


def _check_writable(fs, plan):
    """Refuse before any page changes when a file or the mount point cannot be written (read-only /etc...)."""
    paths = list(plan["file_changes"])
    if plan["mount"] and plan["state"] == "present" and not fs.isdir(plan["mount"]):
        paths.append(plan["mount"])
    problems = unwritable(fs, paths)
    if problems:
        listing = "; ".join("%s: %s" % (path, reason) for path, reason in sorted(problems.items()))
        raise HostError(
            "cannot write %s, so nothing was changed: the hugepage counts were not touched either. Make it writable "
            "(is /etc mounted read-only?) and run again" % listing,
            unwritable=sorted(problems),
        )


# -- apply ---------------------------------------------------------------------------------------
def _apply(fs, runner, plan, params, *, writer, warnings):
    for entry in plan["count_changes"]:
        _allocate(fs, writer, entry, params, warnings)
    try:
        apply_files(fs, plan["file_changes"])
    except HostError as exc:
        counts = ", ".join("%d pages %s" % (entry["final"], _where(entry["node"])) for entry in plan["count_changes"])
        done = "the hugepage counts were already changed (%s) but " % counts if counts else ""
        raise HostError("%s%sthe configuration files were not all written: %s" % (done, "" if done else "nothing was changed: ", exc.msg)) from exc
    mount = plan["mount"]
    if mount and plan["state"] == "present" and not fs.isdir(mount):
        os.makedirs(fs.path(mount), mode=0o755, exist_ok=True)
    if not plan["skipped"]:
        for cmd in plan["commands"]:
            runner.run(cmd)


def _predicted_pool(before_pool, plan):
    after = dict(before_pool, nodes={k: dict(v) for k, v in before_pool.get("nodes", {}).items()})
    for entry in plan:
        if entry["node"] is None:
            after["total"] = entry["final"]
        else:
            after["nodes"].setdefault(str(entry["node"]), {})["total"] = entry["final"]
    return after


def _diff_text(plan, field, contents, files):
    text = "".join("nr_hugepages %s = %d\n" % (_where(entry["node"]), entry[field]) for entry in plan)
    for path in sorted(files):
        content = contents.get(path)
        text += "# %s\n%s" % (path, "(absent)\n" if content is None else content)
    return text


def ensure_hugepages(backends, params, check_mode, *, writer=None):
    """The module's entry point: bring one hugepage pool to ``params``.

    ``writer(path, value)`` writes a pool's count (``fs.write`` by default; tests pass a short kernel).
    """
    fs = backends.hostfs
    runner = backends.commands if not backends.confined else None
    writer = writer or fs.write
    warnings = []
    with locked_files(fs, files_to_lock(fs, params)):
        plan = plan_hugepages(fs, runner, params, backends.confined)
        key = "%dkB" % plan["size_kb"]
        before_pool = gather_hugepages(fs)["pools"][key]
        if check_mode:
            after_pool = _predicted_pool(before_pool, plan["pools"])
        else:
            _check_writable(fs, plan)
            _apply(fs, runner, plan, params, writer=writer, warnings=warnings)
            after_pool = gather_hugepages(fs)["pools"][key]
    if plan["grub_changed"] and plan["skipped"]:
        grub_files = ", ".join(p for p in plan["file_changes"] if "grub" in p)
        warnings.append("the kernel command line changed in %s; run %s and reboot" % (grub_files, " ".join(plan["commands"][0])))
    return {
        "changed": bool(plan["count_changes"] or plan["file_changes"] or plan["mount_change"]),
        "size_kb": plan["size_kb"],
        "before": before_pool,
        "after": after_pool,
        "reboot_required": plan["grub_changed"],
        "files": sorted(plan["file_changes"]),
        "commands": plan["commands"],
        "commands_skipped": plan["skipped"],
        "warnings": warnings,
        "diff": {
            "before": _diff_text(plan["pools"], "current", plan["file_before"], plan["files"]),
            "after": _diff_text(plan["pools"], "final", plan["files"], plan["files"]),
            "before_header": "hugepages-%dkB" % plan["size_kb"],
            "after_header": "hugepages-%dkB" % plan["size_kb"],
        },
    }
