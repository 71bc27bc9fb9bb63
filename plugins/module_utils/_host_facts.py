# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Host facts and host-file helpers shared by the host modules (host_info, hugepages, ksm, apparmor_local).

Everything reads through a :class:`~._hostfs.HostFS`, so a fake tree exercises the same code as a
real host. Tri-states are encoded one way everywhere: ``True``/``False``, and ``None`` when the
host does not say (:func:`tristate`).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError

HUGEPAGES = "/sys/kernel/mm/hugepages"
NODES = "/sys/devices/system/node"
KSM = "/sys/kernel/mm/ksm"
APPARMOR_ENABLED = "/sys/module/apparmor/parameters/enabled"
KSM_FIELDS = (
    "run",
    "pages_to_scan",
    "sleep_millisecs",
    "merge_across_nodes",
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
    "max_page_sharing",
    "use_zero_pages",
)
# KSM knobs that are on/off switches: reported as tri-states, not 0/1
KSM_SWITCHES = ("merge_across_nodes", "use_zero_pages")
_TRUE = ("y", "yes", "1", "on", "true")
_FALSE = ("n", "no", "0", "off", "false")


def tristate(value):
    """``True``/``False`` for the kernel's spellings (``Y``/``N``, ``1``/``0``), ``None`` when unknown or unread."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


# -- /proc/mounts ------------------------------------------------------------------------------
def unescape_octal(field):
    """A /proc/mounts or fstab field with its ``\\040``-style escapes decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def escape_octal(path):
    """``path`` as fstab and /proc/mounts write it: space, tab, newline and backslash as octal escapes."""
    return "".join("\\%03o" % ord(ch) if ch in " \t\n\\" else ch for ch in path)


def mounts(fs):
    """``[{source, path, fstype, options}]`` of /proc/mounts (paths unescaped)."""
    found = []
    for line in fs.read_lines("/proc/mounts"):
        parts = line.split()
        if len(parts) >= 4:
            found.append({"source": unescape_octal(parts[0]), "path": unescape_octal(parts[1]), "fstype": parts[2], "options": parts[3]})
    return found


def hugetlbfs_mounts(fs):
    result = []
    for mount in mounts(fs):
        if mount["fstype"] == "hugetlbfs":
            options = dict(o.partition("=")[::2] for o in mount["options"].split(","))
            result.append({"path": mount["path"], "pagesize": options.get("pagesize")})
    return result


# -- NUMA and hugepages ------------------------------------------------------------------------
def node_ids(fs):
    ids = []
    for entry in fs.listdir(NODES):
        match = re.match(r"node(\d+)$", entry)
        if match:
            ids.append(int(match.group(1)))
    return sorted(ids)


def default_hugepage_size_kb(fs):
    for line in fs.read_lines("/proc/meminfo"):
        match = re.match(r"Hugepagesize:\s+(\d+) kB", line)
        if match:
            return int(match.group(1))
    return None


def hugepage_sizes_kb(fs):
    """Page sizes (kB) the kernel offers, from the directories of /sys/kernel/mm/hugepages."""
    return sorted(int(m.group(1)) for m in (re.match(r"hugepages-(\d+)kB$", e) for e in fs.listdir(HUGEPAGES)) if m)


def _pool(fs, base, with_reserved):
    pool = {
        "total": fs.read_int(base + "/nr_hugepages"),
        "free": fs.read_int(base + "/free_hugepages"),
        "surplus": fs.read_int(base + "/surplus_hugepages"),
    }
    if with_reserved:
        pool["reserved"] = fs.read_int(base + "/resv_hugepages")
    return pool


def gather_hugepages(fs):
    pools = {}
    for size in hugepage_sizes_kb(fs):
        entry = "hugepages-%dkB" % size
        pool = _pool(fs, "%s/%s" % (HUGEPAGES, entry), with_reserved=True)
        pool["size_kb"] = size
        pool["nodes"] = {}
        for node in node_ids(fs):
            base = "%s/node%d/hugepages/%s" % (NODES, node, entry)
            if fs.isdir(base):
                pool["nodes"][str(node)] = _pool(fs, base, with_reserved=False)
        pools["%dkB" % size] = pool
    return {"default_size_kb": default_hugepage_size_kb(fs), "pools": pools, "mounts": hugetlbfs_mounts(fs)}


# -- AppArmor and KSM --------------------------------------------------------------------------
def gather_apparmor(fs):
    """``enabled`` is a tri-state: ``None`` when the kernel has no AppArmor module to ask."""
    return {"enabled": tristate(fs.read(APPARMOR_ENABLED)), "kernel_module": fs.isdir("/sys/module/apparmor")}


def gather_ksm(fs):
    if not fs.isdir(KSM):
        return {"available": False}
    facts = {"available": True}
    for field in KSM_FIELDS:
        value = fs.read_int("%s/%s" % (KSM, field))
        facts[field] = tristate(value) if field in KSM_SWITCHES and value is not None else value
    return facts


# -- host files --------------------------------------------------------------------------------
def read_raw(fs, host_path):
    """The exact text of a host file (no newline translation, undecodable bytes kept), or ``None`` when absent."""
    try:
        with open(fs.path(host_path), "rb") as handle:
            return handle.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostError("cannot read %s: %s" % (host_path, os.strerror(exc.errno) if exc.errno else exc)) from exc


def encode_raw(text):
    """Inverse of :func:`read_raw`: the bytes to write back."""
    return text.encode("utf-8", "surrogateescape")


@contextlib.contextmanager
def locked_files(fs, host_paths):
    """Hold :meth:`HostFS.locked` on every path (in a fixed order, so two runs cannot deadlock)."""
    with contextlib.ExitStack() as stack:
        for path in sorted(set(host_paths)):
            stack.enter_context(fs.locked(path))
        yield


def _writable_dir(real_dir):
    """Nearest existing directory of ``real_dir``: probed with a temporary file (root ignores modes, not EROFS)."""
    probe = real_dir
    while not os.path.isdir(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".virtops-probe-")
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)
    os.close(fd)
    os.unlink(tmp)
    return None


def unwritable(fs, host_paths):
    """``{host path: reason}`` for the files that could not be written or removed now (read-only /etc, ...)."""
    problems = {}
    for path in sorted(set(host_paths)):
        reason = _writable_dir(os.path.dirname(fs.path(path)))
        if reason:
            problems[path] = reason
    return problems


def apply_files(fs, wanted):
    """Write (content) or remove (``None``) each file of ``wanted``; returns the paths changed."""
    changed = []
    for path, content in sorted(wanted.items()):
        if content is None:
            if fs.remove(path):
                changed.append(path)
        elif fs.write_atomic(path, encode_raw(content), mode=0o644):
            changed.append(path)
    return changed


def cpuinfo_first(fs):
    """Key/values of the first processor block of /proc/cpuinfo."""
    info = {}
    for line in fs.read_lines("/proc/cpuinfo"):
        if not line.strip():
            if info:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info
