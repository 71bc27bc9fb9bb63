# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Settings in libvirt's configuration files (libvirtd.conf, virtqemud.conf, qemu.conf, virtlogd.conf...).

The files use libvirt's own grammar (``virconf``): ``key = value`` where a value is a string
(``"..."``, ``'...'`` or ``\"\"\"...\"\"\"``), an integer, or a list ``[ "a", "b" ]`` that may span
lines and hold comments; ``#`` starts a comment; a statement may end with ``;``. The packages ship
every setting commented out with its default (``#max_clients = 5000``), so :func:`ensure_libvirt_config`
edits the file line by line: it replaces an active assignment in place, uncomments or inserts a new
one next to the package's commented default, and restores the default (``state=absent``) by
commenting the assignment out. Everything else in the file (the package's comments) is kept.

Values are checked by type before anything is written: a table of common keys' types, and for
other keys the type of the commented default in the file. A daemon refuses to start on a value of
the wrong type, so a wrong type is a :class:`ValidationError` and the file stays as it was.
"""

from __future__ import annotations

import re

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError

CONFIG_DIR = "/etc/libvirt"
KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.conf\Z")

# The special file name: the configuration file of the daemon that runs the QEMU driver.
DAEMON_FILE = "daemon"
# Sockets and units that show a host runs libvirt's modular daemons (virtqemud...) rather than libvirtd.
MODULAR_MARKERS = (
    "/run/libvirt/virtqemud-sock",
    "/etc/systemd/system/sockets.target.wants/virtqemud.socket",
    "/etc/systemd/system/multi-user.target.wants/virtqemud.service",
)
MONOLITHIC_MARKERS = (
    "/run/libvirt/libvirt-sock",
    "/etc/systemd/system/sockets.target.wants/libvirtd.socket",
    "/etc/systemd/system/multi-user.target.wants/libvirtd.service",
)

STR, INT, BOOL, LIST, STR_OR_LIST, STR_OR_INT = "string", "integer", "boolean (0 or 1)", "list of strings", "string or list of strings", "string or integer"

# Keys every daemon configuration file (libvirtd.conf, virtqemud.conf, virtnetworkd.conf...) knows.
_DAEMON_KEYS = {
    "listen_tls": BOOL,
    "listen_tcp": BOOL,
    "tls_port": STR,
    "tcp_port": STR,
    "listen_addr": STR,
    "unix_sock_group": STR,
    "unix_sock_ro_perms": STR,
    "unix_sock_rw_perms": STR,
    "unix_sock_admin_perms": STR,
    "unix_sock_dir": STR,
    "auth_unix_ro": STR,
    "auth_unix_rw": STR,
    "auth_tcp": STR,
    "auth_tls": STR,
    "access_drivers": LIST,
    "key_file": STR,
    "cert_file": STR,
    "ca_file": STR,
    "crl_file": STR,
    "tls_no_sanity_certificate": BOOL,
    "tls_no_verify_certificate": BOOL,
    "tls_allowed_dn_list": LIST,
    "sasl_allowed_username_list": LIST,
    "tls_priority": STR,
    "max_clients": INT,
    "max_queued_clients": INT,
    "max_anonymous_clients": INT,
    "min_workers": INT,
    "max_workers": INT,
    "prio_workers": INT,
    "max_client_requests": INT,
    "admin_min_workers": INT,
    "admin_max_workers": INT,
    "admin_max_clients": INT,
    "admin_max_queued_clients": INT,
    "admin_max_client_requests": INT,
    "log_level": INT,
    "log_filters": STR,
    "log_outputs": STR,
    "audit_level": INT,
    "audit_logging": BOOL,
    "host_uuid": STR,
    "host_uuid_source": STR,
    "keepalive_interval": INT,
    "keepalive_count": INT,
    "keepalive_required": BOOL,
    "admin_keepalive_interval": INT,
    "admin_keepalive_count": INT,
    "ovs_timeout": INT,
    "mdns_adv": BOOL,
    "mdns_name": STR,
}
_QEMU_KEYS = {
    "default_tls_x509_cert_dir": STR,
    "default_tls_x509_verify": BOOL,
    "vnc_listen": STR,
    "vnc_auto_unix_socket": BOOL,
    "vnc_tls": BOOL,
    "vnc_tls_x509_verify": BOOL,
    "vnc_password": STR,
    "vnc_sasl": BOOL,
    "spice_listen": STR,
    "spice_tls": BOOL,
    "spice_password": STR,
    "spice_sasl": BOOL,
    "remote_display_port_min": INT,
    "remote_display_port_max": INT,
    "websocket_port_min": INT,
    "websocket_port_max": INT,
    "security_driver": STR_OR_LIST,
    "security_default_confined": BOOL,
    "security_require_confined": BOOL,
    "user": STR,
    "group": STR,
    "dynamic_ownership": BOOL,
    "remember_owner": BOOL,
    "cgroup_controllers": LIST,
    "cgroup_device_acl": LIST,
    "save_image_format": STR,
    "dump_image_format": STR,
    "snapshot_image_format": STR,
    "auto_dump_path": STR,
    "auto_dump_bypass_cache": BOOL,
    "auto_start_bypass_cache": BOOL,
    "hugetlbfs_mount": STR_OR_LIST,
    "bridge_helper": STR,
    "set_process_name": BOOL,
    "max_processes": INT,
    "max_files": INT,
    "max_threads_per_process": INT,
    "max_core": STR_OR_INT,
    "dump_guest_core": BOOL,
    "mac_filter": BOOL,
    "relaxed_acs_check": BOOL,
    "lock_manager": STR,
    "max_queued": INT,
    "keepalive_interval": INT,
    "keepalive_count": INT,
    "seccomp_sandbox": INT,
    "migration_address": STR,
    "migration_host": STR,
    "migration_port_min": INT,
    "migration_port_max": INT,
    "log_timestamp": BOOL,
    "nvram": LIST,
    "stdio_handler": STR,
    "gluster_debug_level": INT,
    "virtiofsd_debug": BOOL,
    "memory_backing_dir": STR,
    "namespaces": LIST,
    "nbd_tls": BOOL,
    "migrate_tls_force": BOOL,
    "swtpm_user": STR,
    "swtpm_group": STR,
    "capability_filters": LIST,
    "deprecation_behavior": STR,
    "clear_emulator_capabilities": BOOL,
    "vxhs_tls": BOOL,
    "chardev_tls": BOOL,
    "backup_tls_x509_verify": BOOL,
    "pr_helper": STR,
    "slirp_helper": STR,
    "dbus_daemon": STR,
    "shared_filesystems": LIST,
}
_LOGD_KEYS = {
    "log_level": INT,
    "log_filters": STR,
    "log_outputs": STR,
    "max_clients": INT,
    "admin_max_clients": INT,
    "max_size": INT,
    "max_backups": INT,
    "max_age_days": INT,
}
_LOCKD_KEYS = {"log_level": INT, "log_filters": STR, "log_outputs": STR, "max_clients": INT, "admin_max_clients": INT}
_CLIENT_KEYS = {"uri_default": STR, "uri_aliases": LIST}

# file name -> (the daemon that reads it, or a driver's daemon pair (monolithic, modular), or None; key types)
FILES = {
    "libvirtd.conf": ("libvirtd", _DAEMON_KEYS),
    "virtqemud.conf": ("virtqemud", _DAEMON_KEYS),
    "virtnetworkd.conf": ("virtnetworkd", _DAEMON_KEYS),
    "virtstoraged.conf": ("virtstoraged", _DAEMON_KEYS),
    "virtnodedevd.conf": ("virtnodedevd", _DAEMON_KEYS),
    "virtsecretd.conf": ("virtsecretd", _DAEMON_KEYS),
    "virtinterfaced.conf": ("virtinterfaced", _DAEMON_KEYS),
    "virtnwfilterd.conf": ("virtnwfilterd", _DAEMON_KEYS),
    "virtproxyd.conf": ("virtproxyd", _DAEMON_KEYS),
    "virtlxcd.conf": ("virtlxcd", _DAEMON_KEYS),
    "virtchd.conf": ("virtchd", _DAEMON_KEYS),
    "qemu.conf": (("libvirtd", "virtqemud"), _QEMU_KEYS),
    "qemu-lockd.conf": (
        ("libvirtd", "virtqemud"),
        {"auto_disk_leases": BOOL, "require_lease_for_disks": BOOL, "file_lockspace_dir": STR, "lvm_lockspace_dir": STR, "scsi_lockspace_dir": STR},
    ),
    "qemu-sanlock.conf": (("libvirtd", "virtqemud"), {}),
    "lxc.conf": (("libvirtd", "virtlxcd"), {}),
    "libxl.conf": (("libvirtd", "virtxend"), {}),
    "virtlogd.conf": ("virtlogd", _LOGD_KEYS),
    "virtlockd.conf": ("virtlockd", _LOCKD_KEYS),
    "libvirt.conf": (None, _CLIENT_KEYS),
    "libvirt-admin.conf": (None, _CLIENT_KEYS),
}


# -- libvirt's grammar ---------------------------------------------------------------------------
class ParseError(Exception):
    """Text that is not libvirt's configuration grammar (``pos`` is the offset where it went wrong)."""

    def __init__(self, msg, pos):
        super().__init__(msg)
        self.msg = msg
        self.pos = pos


def _skip_blank(text, pos, newlines=False):
    """Skip spaces and tabs (and, inside a list, newlines and comments)."""
    while pos < len(text):
        char = text[pos]
        if char in " \t\r" or (newlines and char == "\n"):
            pos += 1
        elif newlines and char == "#":
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end + 1
        else:
            break
    return pos


def _parse_string(text, pos):
    if text.startswith('"""', pos):
        end = text.find('"""', pos + 3)
        if end < 0:
            raise ParseError('unterminated """ string', pos)
        return text[pos + 3 : end], end + 3
    quote = text[pos]
    end = text.find(quote, pos + 1)
    newline = text.find("\n", pos + 1)
    if end < 0 or (0 <= newline < end):
        raise ParseError("unterminated string", pos)
    return text[pos + 1 : end], end + 1


def parse_value(text, pos=0):
    """One value at ``text[pos:]``: returns ``(value, end)``; strings, integers and lists of them."""
    if pos >= len(text):
        raise ParseError("a value is missing", pos)
    char = text[pos]
    if char in "\"'":
        return _parse_string(text, pos)
    if char == "[":
        items = []
        pos = _skip_blank(text, pos + 1, newlines=True)
        while True:
            if pos >= len(text):
                raise ParseError("unterminated list", pos)
            if text[pos] == "]":
                return items, pos + 1
            item, pos = parse_value(text, pos)
            if isinstance(item, list):
                raise ParseError("lists cannot hold lists", pos)
            items.append(item)
            pos = _skip_blank(text, pos, newlines=True)
            if pos < len(text) and text[pos] == ",":
                pos = _skip_blank(text, pos + 1, newlines=True)
            elif pos < len(text) and text[pos] != "]":
                raise ParseError("expected ',' or ']' in a list", pos)
    match = re.compile(r"[+-]?[0-9]+").match(text, pos)
    if match:
        return int(match.group(0)), match.end()
    raise ParseError("expected a string, an integer or a list", pos)


_ASSIGN = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_.]*)[ \t]*=[ \t]*")


def parse_statement(text, pos):
    """An assignment starting at ``pos`` (beginning of a line): ``(key, value, end)``, ``end`` after its newline."""
    match = _ASSIGN.match(text, pos)
    if not match:
        raise ParseError("expected 'key = value'", pos)
    value, end = parse_value(text, match.end())
    end = _skip_blank(text, end)
    if end < len(text) and text[end] == ";":
        end = _skip_blank(text, end + 1)
    if end < len(text) and text[end] == "#":
        newline = text.find("\n", end)
        end = len(text) if newline < 0 else newline
    if end < len(text) and text[end] != "\n":
        raise ParseError("unexpected text after the value of %s" % match.group(1), end)
    return match.group(1), value, min(end + 1, len(text))


class Entry:
    """An assignment in the file: ``lines[start:end]`` hold it; ``commented`` for a package default."""

    def __init__(self, key, value, start, end, commented=False):
        self.key, self.value, self.start, self.end, self.commented = key, value, start, end, commented


def _line_offsets(lines):
    offsets, total = [], 0
    for line in lines:
        offsets.append(total)
        total += len(line)
    return offsets


def parse_config(text):
    """The file's assignments, active and commented-out, as :class:`Entry` objects (line spans).

    Raises :class:`ParseError` for an active line libvirt would not accept either.
    """
    lines = text.splitlines(True)
    offsets = _line_offsets(lines)
    line_of = {offset: index for index, offset in enumerate(offsets)}
    entries = []
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        if not stripped:
            index += 1
            continue
        if stripped.startswith("#"):
            entry = _commented_entry(lines, index)
            if entry is not None:
                entries.append(entry)
            index += 1
            continue
        key, value, end = parse_statement(text, offsets[index])
        end_line = line_of.get(end, len(lines))
        entries.append(Entry(key, value, index, end_line))
        index = end_line
    return entries


def _uncomment(line):
    head, _hash, rest = line.partition("#")
    return head + rest


def _commented_entry(lines, index):
    """A commented-out assignment (``#key = value``, maybe a multi-line list) starting at ``lines[index]``."""
    first = _uncomment(lines[index])
    if not _ASSIGN.match(first):
        return None
    text = first
    for end in range(index + 1, min(index + 60, len(lines)) + 1):
        try:
            key, value, _end = parse_statement(text if text.endswith("\n") else text + "\n", 0)
            return Entry(key, value, index, end, commented=True)
        except ParseError as exc:
            if "unterminated" not in exc.msg and "',' or ']'" not in exc.msg:
                return None
        if end >= len(lines) or not lines[end].lstrip().startswith("#"):
            return None
        text += _uncomment(lines[end])
    return None


def format_value(value):
    """A value written in libvirt's grammar."""
    if isinstance(value, list):
        return "[ %s ]" % ", ".join(format_value(item) for item in value)
    if isinstance(value, int):
        return str(value)
    return "'%s'" % value if '"' in value else '"%s"' % value


# -- values and their types ----------------------------------------------------------------------
def _kind_of(value):
    if isinstance(value, list):
        return LIST
    return INT if isinstance(value, int) else STR


def _check_string(key, value):
    if _CONTROL.search(value):
        raise ValidationError("%s: the value %r contains control characters (newline, tab...), which libvirt's strings cannot hold" % (key, value))
    if '"' in value and "'" in value:
        raise ValidationError("%s: the value %r holds both kinds of quotes; libvirt's strings have no escapes, so it cannot be written" % (key, value))
    return value


def coerce_value(key, value, kind, where):
    """``value`` as libvirt stores it for a key of type ``kind``, or :class:`ValidationError`."""
    wants = "%s wants a %s (%s)" % (key, kind, where)
    if kind == BOOL:
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return int(value)
        raise ValidationError("%s; got %r: give true/false or 0/1" % (wants, value))
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == INT:
        if is_int or (isinstance(value, bool) and where.startswith("inferred")):
            return int(value)
        raise ValidationError("%s; got %r (%s): give a number without quotes" % (wants, value, type(value).__name__))
    if isinstance(value, str) and kind in (STR, STR_OR_LIST, STR_OR_INT):
        return _check_string(key, value)
    if is_int and kind == STR_OR_INT:
        return value
    if isinstance(value, (list, tuple)) and kind in (LIST, STR_OR_LIST):
        if not all(isinstance(item, str) for item in value):
            raise ValidationError("%s; got %r: every item must be a string" % (wants, value))
        return [_check_string(key, item) for item in value]
    hint = (
        'write it as a list, e.g. ["%s"]' % value
        if kind == LIST and isinstance(value, str)
        else "quote it"
        if kind == STR and is_int
        else "check the key's documentation"
    )
    raise ValidationError("%s; got %r (%s): %s" % (wants, value, type(value).__name__, hint))


def key_kind(name, key, entries):
    """The type of ``key`` in file ``name`` and where it comes from; ``(None, None)`` when unknown."""
    known = FILES.get(name, (None, {}))[1]
    if key in known:
        return known[key], "libvirt's type for this key in %s" % name
    for entry in entries:
        if entry.key == key:
            return _kind_of(entry.value), "inferred from the file's %s" % ("commented default" if entry.commented else "current value")
    return None, None


# -- the file and its daemon ---------------------------------------------------------------------
def modular_daemons(fs):
    """True when the host runs libvirt's modular daemons (virtqemud...) instead of libvirtd."""
    if any(fs.exists(path) for path in MODULAR_MARKERS):
        return not any(fs.exists(path) for path in MONOLITHIC_MARKERS[:1])
    return False


def resolve_file(fs, name):
    """``(file name, host path, daemon or None)`` for the ``file`` option."""
    text = "" if name is None else str(name)
    if text == DAEMON_FILE:
        text = "virtqemud.conf" if modular_daemons(fs) else "libvirtd.conf"
    if not _FILE_RE.match(text):
        raise ValidationError(
            "file %r is not a libvirt configuration file name: give a name like libvirtd.conf or qemu.conf (it is looked up in %s)" % (name, CONFIG_DIR)
        )
    path = "%s/%s" % (CONFIG_DIR, text)
    if text not in FILES:
        if not fs.exists(path):
            raise ValidationError(
                "unknown file %r: it is neither one of libvirt's configuration files (%s, %s) nor present in %s"
                % (name, ", ".join(sorted(FILES)), DAEMON_FILE, CONFIG_DIR)
            )
        return text, path, None
    daemon = FILES[text][0]
    if isinstance(daemon, tuple):
        daemon = daemon[1] if modular_daemons(fs) else daemon[0]
    return text, path, daemon


# -- planning and applying -----------------------------------------------------------------------
def _wanted(params, name, entries):
    """``{key: value or None}`` checked and converted; ``None`` restores the default; plus warnings."""
    settings = params.get("settings")
    if not isinstance(settings, dict) or not settings:
        raise ValidationError("settings must be a non-empty dict of libvirt keys and their values")
    absent = params.get("state", "present") == "absent"
    wanted, warnings = {}, []
    for key, value in settings.items():
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise ValidationError(
                "%r is not a libvirt configuration key: keys are identifiers (letters, digits, '_' and '.', not starting with a digit)" % (key,)
            )
        if absent or value is None:
            wanted[key] = None
            continue
        kind, where = key_kind(name, key, entries)
        if kind is None:
            if isinstance(value, dict) or (isinstance(value, list) and not all(isinstance(i, str) for i in value)):
                raise ValidationError("%s: libvirt values are strings, integers or lists of strings; got %r" % (key, value))
            kind, where = (_kind_of(value) if not isinstance(value, bool) else BOOL), "taken from the value given"
            warnings.append("%s is not a key this module knows for %s and the file has no commented default for it: check its spelling" % (key, name))
        wanted[key] = coerce_value(key, value, kind, where)
    return wanted, warnings


def _plan_key(lines, entries, key, value):
    """Line edits for one key: a list of ``(start, end, new_lines)``, bottom-up order not required."""
    active = [e for e in entries if e.key == key and not e.commented]
    if value is None:
        return [(e.start, e.end, ["#" + line for line in lines[e.start : e.end]]) for e in active]
    line = "%s = %s\n" % (key, format_value(value))
    if active:
        if len(active) == 1 and active[0].value == value:
            return []
        # libvirt reads the first assignment of a key: set it, comment out the repeats
        edits = [] if active[0].value == value else [(active[0].start, active[0].end, [line])]
        return edits + [(e.start, e.end, ["#" + text for text in lines[e.start : e.end]]) for e in active[1:]]
    commented = [e for e in entries if e.key == key and e.commented]
    for entry in commented:
        if entry.value == value and entry.end - entry.start == 1:
            return [(entry.start, entry.end, [line])]
    if commented:
        return [(commented[-1].end, commented[-1].end, [line])]
    return [(len(lines), len(lines), [line])]


def plan_config(text, name, params):
    """``(new_text, changes, warnings)`` for the wanted settings; ``changes`` maps key -> (before, after)."""
    try:
        entries = parse_config(text)
    except ParseError as exc:
        line = text.count("\n", 0, exc.pos) + 1
        raise HostError(
            "%s/%s line %d is not libvirt's configuration grammar (%s); fix the file first, nothing was changed" % (CONFIG_DIR, name, line, exc.msg)
        ) from exc
    wanted, warnings = _wanted(params, name, entries)
    lines = text.splitlines(True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    edits, changes = [], {}
    for key, value in wanted.items():
        key_edits = _plan_key(lines, entries, key, value)
        if key_edits:
            active = [e for e in entries if e.key == key and not e.commented]
            changes[key] = (active[0].value if active else None, value)
            edits.extend(key_edits)
    for start, end, new in sorted(edits, key=lambda edit: (edit[0], edit[1]), reverse=True):
        lines[start:end] = new
    return "".join(lines), changes, warnings


def active_settings(text, keys):
    """The active values of ``keys`` in ``text`` (``None`` for a key left at its default)."""
    values = dict.fromkeys(keys)
    for entry in parse_config(text):
        if not entry.commented and entry.key in values and values[entry.key] is None:
            values[entry.key] = entry.value
    return values


def _diff(path, changes):
    diff = []
    for key, (before, after) in changes.items():
        diff.append(
            {
                "before_header": "%s: %s" % (path, key),
                "after_header": "%s: %s" % (path, key),
                "before": "" if before is None else "%s = %s\n" % (key, format_value(before)),
                "after": "" if after is None else "%s = %s\n" % (key, format_value(after)),
            }
        )
    return diff


def ensure_libvirt_config(backends, params, check_mode):
    """Set (or restore to their defaults) ``settings`` in one of libvirt's configuration files."""
    fs = backends.hostfs
    name, path, daemon = resolve_file(fs, params.get("file"))
    with fs.locked(path):
        exists = fs.exists(path)
        real = fs.path(path)
        text = ""
        if exists:
            try:
                with open(real, encoding="utf-8") as handle:
                    text = handle.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise HostError("cannot read %s: %s" % (path, exc)) from exc
        new_text, changes, warnings = plan_config(text, name, params)
        if not exists and changes:
            new_text = "# libvirt configuration (%s), created by virtops.kvm.libvirt_config.\n%s" % (name, new_text)
        changed = bool(changes)
        if changed and not check_mode:
            st = fs.stat(path)
            fs.write_atomic(path, new_text, mode=(st.st_mode & 0o7777) if st else 0o600)
    keys = list(params["settings"])
    return {
        "changed": changed,
        "path": path,
        "daemon": daemon,
        "restart_required": changed and daemon is not None,
        "changed_keys": sorted(changes),
        "settings": active_settings(new_text, keys),
        "diff": _diff(path, changes),
        "warnings": warnings,
    }
