# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Live and offline migration of one guest to another libvirt host (the ``domain_migrate`` module).

The run: look the guest up on both hosts and decide (:func:`decide`) whether it still has to move;
check that the destination can take it (:func:`preflight`: CPU, storage, memory), then migrate
peer to peer (the source daemon connects to ``dest_uri``) with ``migrateToURI3`` while a watcher
(:func:`watch`) reads the job's statistics, switches to post-copy and applies the timeout. Check mode
stops after the checks. Every refusal happens before anything is changed.
"""

from __future__ import annotations

import os
import threading
import time
from copy import deepcopy
from urllib.parse import parse_qs, urlsplit

from ansible_collections.virtops.kvm.plugins.module_utils._domain_state import ACTIVE_STATES, state_of
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError, VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import (
    VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE,
    VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE,
    VIR_CPU_COMPARE_INCOMPATIBLE,
    VIR_DOMAIN_JOB_STATS_COMPLETED,
    VIR_DOMAIN_XML_MIGRATABLE,
    VIR_ERR_CPU_INCOMPATIBLE,
    VIR_FROM_CPU,
    VIR_MIGRATE_ABORT_ON_ERROR,
    VIR_MIGRATE_AUTO_CONVERGE,
    VIR_MIGRATE_COMPRESSED,
    VIR_MIGRATE_LIVE,
    VIR_MIGRATE_NON_SHARED_DISK,
    VIR_MIGRATE_NON_SHARED_INC,
    VIR_MIGRATE_OFFLINE,
    VIR_MIGRATE_PARAM_BANDWIDTH,
    VIR_MIGRATE_PEER2PEER,
    VIR_MIGRATE_PERSIST_DEST,
    VIR_MIGRATE_POSTCOPY,
    VIR_MIGRATE_TUNNELLED,
    VIR_MIGRATE_UNDEFINE_SOURCE,
    VIR_NODE_MEMORY_STATS_ALL_CELLS,
    open_client,
)
from ansible_collections.virtops.kvm.plugins.module_utils._xml import etree, parse_xml, to_string

URI_SCHEMES = ("qemu+ssh://", "qemu+tls://", "qemu+tcp://")
# How often the watcher reads the job's statistics while the migration runs (seconds).
POLL_INTERVAL = 0.5

FLAG_NAMES = (
    (VIR_MIGRATE_LIVE, "live"),
    (VIR_MIGRATE_PEER2PEER, "peer2peer"),
    (VIR_MIGRATE_TUNNELLED, "tunnelled"),
    (VIR_MIGRATE_PERSIST_DEST, "persist_dest"),
    (VIR_MIGRATE_UNDEFINE_SOURCE, "undefine_source"),
    (VIR_MIGRATE_NON_SHARED_DISK, "non_shared_disk"),
    (VIR_MIGRATE_NON_SHARED_INC, "non_shared_inc"),
    (VIR_MIGRATE_OFFLINE, "offline"),
    (VIR_MIGRATE_COMPRESSED, "compressed"),
    (VIR_MIGRATE_ABORT_ON_ERROR, "abort_on_error"),
    (VIR_MIGRATE_AUTO_CONVERGE, "auto_converge"),
    (VIR_MIGRATE_POSTCOPY, "postcopy"),
)


# ---------------------------------------------------------------------------------------------
# What is asked
# ---------------------------------------------------------------------------------------------


def tls_hint(uri, message):
    """What to check when a qemu+tls connection failed on a certificate (libvirt's own text names no cause)."""
    if not uri.startswith("qemu+tls") or "certificate" not in (message or "").lower():
        return ""
    parts = urlsplit(uri)
    pkipath = parse_qs(parts.query).get("pkipath", [None])[0]
    ca_file = "%s/cacert.pem" % pkipath.rstrip("/") if pkipath else "/etc/pki/CA/cacert.pem (~/.pki/libvirt/cacert.pem for other users than root)"
    return (
        " (with qemu+tls the destination's server certificate must name %s among its subjectAltName names and be signed by the CA in %s,"
        " and the client certificate next to it must be signed by a CA the destination trusts; libvirt logs which check failed as a warning;"
        " the kvm_host role's kvm_host_migration_tls_names sets the names)" % (parts.hostname or "the URI's host", ca_file)
    )


def validate(params):
    """Refuse contradictory options before anything is read."""
    uri = params["dest_uri"] or ""
    if not uri.startswith(URI_SCHEMES):
        raise ValidationError("dest_uri %r is not a remote QEMU URI: use qemu+ssh://HOST/system, qemu+tls://HOST/system or qemu+tcp://HOST/system" % uri)
    if params["uri"] and params["uri"].rstrip("/") == uri.rstrip("/"):
        raise ValidationError("dest_uri is the source's uri (%s): a guest cannot migrate to the host it runs on" % uri)
    if params["offline"]:
        if params["postcopy"] or (params["timeout_action"] == "postcopy" and params["timeout"]):
            raise ValidationError("offline=true moves only the definition: postcopy does not apply")
        if params["copy_storage"] != "none":
            raise ValidationError("offline=true moves only the definition: libvirt cannot copy storage without a running guest (copy_storage must be none)")
        if not params["persistent"]:
            raise ValidationError("offline=true needs persistent=true: the definition is all an offline migration moves")
    if params["postcopy"] and not params["live"]:
        raise ValidationError("postcopy=true needs live=true (post-copy runs the guest at the destination while its memory follows)")
    if params["postcopy_after"] is not None and not params["postcopy"]:
        raise ValidationError("postcopy_after needs postcopy=true")
    for key in ("bandwidth_mib", "timeout", "postcopy_after"):
        if params[key] is not None and params[key] < 0:
            raise ValidationError("%s must not be negative (got %s)" % (key, params[key]))
    if params["timeout_action"] == "postcopy" and params["timeout"] and not params["live"]:
        raise ValidationError("timeout_action=postcopy needs live=true")


def migration_flags(params):
    """``(flags, names)`` for ``migrateToURI3``: always peer to peer, never a partial success."""
    flags = VIR_MIGRATE_PEER2PEER | VIR_MIGRATE_ABORT_ON_ERROR
    if params["offline"]:
        flags |= VIR_MIGRATE_OFFLINE
    elif params["live"]:
        flags |= VIR_MIGRATE_LIVE
    if params["persistent"] or params["offline"]:
        flags |= VIR_MIGRATE_PERSIST_DEST
    if params["undefine_source"]:
        flags |= VIR_MIGRATE_UNDEFINE_SOURCE
    if params["postcopy"] or (params["timeout"] and params["timeout_action"] == "postcopy"):
        flags |= VIR_MIGRATE_POSTCOPY
    if params["auto_converge"]:
        flags |= VIR_MIGRATE_AUTO_CONVERGE
    if params["tunnelled"]:
        flags |= VIR_MIGRATE_TUNNELLED
    if params["compressed"]:
        flags |= VIR_MIGRATE_COMPRESSED
    if params["copy_storage"] == "all":
        flags |= VIR_MIGRATE_NON_SHARED_DISK
    elif params["copy_storage"] == "incremental":
        flags |= VIR_MIGRATE_NON_SHARED_INC
    return flags, [name for bit, name in FLAG_NAMES if flags & bit]


def migration_params(params):
    """The typed parameters of ``migrateToURI3``."""
    typed = {}
    if params["bandwidth_mib"]:
        typed[VIR_MIGRATE_PARAM_BANDWIDTH] = int(params["bandwidth_mib"])
    return typed


def _state(client, name):
    dom = client.lookup_domain(name)
    return dom, (state_of(dom)[0] if dom is not None else None)


def decide(name, src_state, dst_state, params):
    """``"migrate"`` or ``"none"``; raises :class:`ValidationError` for what cannot be done."""
    src_active = src_state in ACTIVE_STATES
    dst_active = dst_state in ACTIVE_STATES
    if params["offline"]:
        if src_active:
            raise ValidationError(
                "guest %s is %s at the source: offline=true moves only a defined, stopped guest (use live migration, the default, for a running one)"
                % (name, src_state)
            )
        if dst_state is not None:
            return "none"
        if src_state is None:
            raise ValidationError("guest %s exists neither at the source nor at the destination" % name)
        return "migrate"
    if src_active and dst_active:
        raise ValidationError("guest %s is %s at the source and %s at the destination: refusing to migrate over a running copy" % (name, src_state, dst_state))
    if dst_active:
        return "none"
    if src_active:
        return "migrate"
    if src_state is None and dst_state is None:
        raise ValidationError("guest %s exists neither at the source nor at the destination" % name)
    where = "at the source" if src_state is not None else "at the destination"
    raise ValidationError(
        "guest %s is not running (%s %s): live migration moves a running guest; start it first, or use offline=true to move its definition"
        % (name, src_state or dst_state, where)
    )


# ---------------------------------------------------------------------------------------------
# Can the destination take it?
# ---------------------------------------------------------------------------------------------


def disk_paths(root):
    """``[(target, path)]`` of the guest's file and block disks that have a source."""
    found = []
    for disk in root.findall("devices/disk"):
        source = disk.find("source")
        if source is None or disk.get("type") not in ("file", "block"):
            continue
        path = source.get("file") or source.get("dev")
        if path:
            target = disk.find("target")
            found.append((target.get("dev") if target is not None else "?", path))
    return found


def _domcaps(client, arch, machine, virttype, whose):
    return parse_xml(client.call("cannot read the %s's domain capabilities" % whose, client.conn.getDomainCapabilities, None, arch, machine, virttype, 0))


def offered_cpu(caps):
    """The host-model CPU that domain capabilities offer, as a ``<cpu mode='custom'>`` element, or ``None``."""
    mode = caps.find("cpu/mode[@name='host-model']")
    if mode is None or mode.get("supported") != "yes" or mode.find("model") is None:
        return None
    cpu = etree.Element("cpu", mode="custom", match="exact")
    for child in mode:
        if child.tag in ("model", "vendor", "feature"):
            cpu.append(deepcopy(child))
    return cpu


def check_cpu(dclient, root, sclient=None):
    """``(problem, note)``: ``problem`` is ``None`` when the destination can run the guest's CPU.

    A custom CPU (what libvirt makes of host-model too) is compared with what the destination's
    hypervisor offers (``compareHypervisorCPU``). A host-passthrough or maximum CPU is whatever the
    source's hypervisor gives the guest: the destination must offer the mode, and what the source
    offers (its host-model CPU) must pass the same comparison at the destination, or the guest would
    lose features under its feet (libvirt does not check this for these modes).
    """
    cpu = root.find("cpu")
    os_type = root.find("os/type")
    arch = os_type.get("arch") if os_type is not None else None
    machine = os_type.get("machine") if os_type is not None else None
    virttype = root.get("type")
    mode = cpu.get("mode", "custom") if cpu is not None else None
    if cpu is None or (mode == "custom" and cpu.find("model") is None and not cpu.findall("feature")):
        return None, "CPU: no CPU model given, nothing to compare"
    what = "the guest's CPU"
    compared = cpu
    if mode in ("host-passthrough", "maximum"):
        caps = _domcaps(dclient, arch, machine, virttype, "destination")
        supported = caps.find("cpu/mode[@name='%s']" % mode)
        if supported is None or supported.get("supported") != "yes":
            return "the guest's CPU is %s, which the destination does not offer for %s guests" % (mode, virttype), None
        compared = offered_cpu(_domcaps(sclient, arch, machine, virttype, "source")) if sclient is not None else None
        if compared is None:
            return None, "CPU: %s, offered by the destination (the source's CPU is not known to libvirt, so it is not compared)" % mode
        what = "the guest's CPU (%s: what the source's hypervisor offers)" % mode
    try:
        result = dclient.conn.compareHypervisorCPU(None, arch, machine, virttype, to_string(compared, pretty=False), VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
    except Exception as exc:  # libvirt.libvirtError; libvirt may be absent in unit tests
        code = getattr(exc, "get_error_code", lambda: None)()
        origin = getattr(exc, "get_error_domain", lambda: None)()
        text = _text_of(exc)
        # VIR_FROM_CPU: the destination's CPU driver judged the definition (a model or feature it does not know)
        if code == VIR_ERR_CPU_INCOMPATIBLE or origin == VIR_FROM_CPU:
            return "%s is not compatible with the destination: %s" % (what, text), None
        raise LibvirtError("cannot compare the guest's CPU with the destination's: %s" % text, code=code) from exc
    if result == VIR_CPU_COMPARE_INCOMPATIBLE:
        return "%s is not compatible with the destination" % what, None
    if mode in ("host-passthrough", "maximum"):
        return None, "CPU: %s, what the source offers is compatible with the destination" % mode
    return None, "CPU: compatible with the destination"


def _text_of(exc):
    getter = getattr(exc, "get_error_message", None)
    return (getter() if getter else None) or str(exc)


def _pool_by_dir(dclient):
    pools = {}
    for pool in dclient.call("cannot list the destination's storage pools", dclient.conn.listAllStoragePools, VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        target = parse_xml(dclient.call("cannot read a destination pool", pool.XMLDesc, 0)).findtext("target/path")
        if target:
            pools.setdefault(os.path.normpath(target), pool)
    return pools


def check_storage(dclient, root, copy_storage):
    """``(problems, notes)`` about the guest's disks at the destination.

    A path counts as present when a storage pool at the destination covers its directory and holds
    it (after a refresh). With ``copy_storage`` a missing disk is created by libvirt, which it can
    do only inside such a pool.
    """
    problems, notes = [], []
    pools = None
    for target, path in disk_paths(root):
        if pools is None:
            pools = _pool_by_dir(dclient)
        directory = os.path.dirname(os.path.normpath(path))
        pool = pools.get(directory)
        if pool is None:
            if copy_storage == "none":
                notes.append("disk %s (%s): no storage pool at the destination covers %s, so its presence there is not checked" % (target, path, directory))
            else:
                problems.append(
                    "disk %s (%s) is to be copied but no active storage pool at the destination covers %s: libvirt creates the copy only inside a pool "
                    "(define a dir pool for %s there)" % (target, path, directory, directory)
                )
            continue
        dclient.call("cannot refresh the destination's pool for %s" % directory, pool.refresh, 0)
        present = dclient.lookup_volume(pool, os.path.basename(path)) is not None
        if copy_storage == "none" and not present:
            problems.append(
                "disk %s (%s) is missing at the destination and copy_storage is none: put it on shared storage, or set copy_storage=all" % (target, path)
            )
        elif copy_storage != "none":
            notes.append("disk %s (%s): %s" % (target, path, "copied onto the existing file" if present else "created by libvirt and copied"))
        else:
            notes.append("disk %s (%s): present at the destination" % (target, path))
    return problems, notes


def check_memory(dclient, root):
    """``(problem_or_None, free_mib)``: the guest's memory against the destination's free memory."""
    need_kib = int(root.findtext("memory") or 0)
    stats = dclient.call("cannot read the destination's memory", dclient.conn.getMemoryStats, VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
    free_kib = sum(int(stats.get(key, 0)) for key in ("free", "buffers", "cached"))
    if need_kib > free_kib:
        return ("the guest needs %d MiB and the destination has %d MiB free (free + buffers + cache)" % (need_kib // 1024, free_kib // 1024)), free_kib // 1024
    return None, free_kib // 1024


def preflight(dom, dclient, params, sclient=None):
    """Check what the destination needs; returns the notes, raises :class:`ValidationError` with every problem."""
    xml = dom.XMLDesc(VIR_DOMAIN_XML_MIGRATABLE)
    root = parse_xml(xml, "the guest's XML")
    problems, notes = [], []
    if not params["offline"]:
        cpu_problem, cpu_note = check_cpu(dclient, root, sclient)
        if cpu_problem:
            problems.append(cpu_problem)
        else:
            notes.append(cpu_note)
        memory_problem, free_mib = check_memory(dclient, root)
        if memory_problem:
            problems.append(memory_problem)
        else:
            notes.append("memory: %d MiB free at the destination" % free_mib)
    storage_problems, storage_notes = check_storage(dclient, root, params["copy_storage"])
    problems += storage_problems
    notes += storage_notes
    if problems:
        raise ValidationError(
            "guest %s cannot migrate to %s: %s; nothing was changed" % (dom.name(), params["dest_uri"], "; ".join(problems)),
            checks=notes,
        )
    return notes


# ---------------------------------------------------------------------------------------------
# The migration
# ---------------------------------------------------------------------------------------------


def watch(dom, params, done, clock=time.monotonic, sleep=time.sleep):
    """Read the running job until ``done`` is set; switch to post-copy and apply the timeout.

    Returns what was done: ``{"postcopy": bool, "timeout_action": str or None}``. Post-copy starts
    after ``postcopy_after`` seconds, or (without it) once the first pass over memory is over
    (``memory_iteration`` > 1), which is when pre-copy shows it did not converge in one pass.
    """
    taken = {"postcopy": False, "timeout_action": None}
    start = clock()
    while not done.is_set():
        sleep(POLL_INTERVAL)
        if done.is_set():
            break
        elapsed = clock() - start
        try:
            stats = dom.jobStats(0)
        except Exception:  # pylint: disable=broad-exception-caught  # the job may end between two reads
            continue
        if not stats or not stats.get("type"):
            continue
        if params["postcopy"] and not taken["postcopy"]:
            after = params["postcopy_after"]
            due = elapsed >= after if after is not None else int(stats.get("memory_iteration", 0)) > 1
            if due and _start_postcopy(dom):
                taken["postcopy"] = True
        if params["timeout"] and taken["timeout_action"] is None and elapsed >= params["timeout"]:
            action = params["timeout_action"]
            taken["timeout_action"] = action
            if action == "abort":
                _quiet(dom.abortJob)
            elif action == "suspend":
                _quiet(dom.suspend)
            elif not taken["postcopy"] and _start_postcopy(dom):
                taken["postcopy"] = True
    return taken


def _start_postcopy(dom):
    try:
        dom.migrateStartPostCopy(0)
    except Exception:  # pylint: disable=broad-exception-caught  # the job may already be over
        return False
    return True


def _quiet(func):
    try:
        func()
    except Exception:  # pylint: disable=broad-exception-caught  # the job may already be over
        pass


def migrate(client, dom, params, flags, typed):
    """Run ``migrateToURI3`` with the watcher beside it; returns what the watcher did."""
    done = threading.Event()
    outcome = {}

    def run():
        try:
            dom.migrateToURI3(params["dest_uri"], typed, flags)
        except Exception as exc:  # pylint: disable=broad-exception-caught  # handed to the caller below
            outcome["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=run, name="virtops-migrate", daemon=True)
    worker.start()
    taken = {"postcopy": False, "timeout_action": None}
    if not params["offline"] and (params["postcopy"] or params["timeout"]):
        taken = watch(dom, params, done)
    worker.join()
    if "error" in outcome:
        raise migration_error(client, dom.name(), params, outcome["error"], taken)
    return taken


def migration_error(client, name, params, exc, taken):
    """A failed migration as a :class:`VirtopsError` that says where the guest is now."""
    text = getattr(exc, "get_error_message", lambda: str(exc))() or str(exc)
    code = getattr(exc, "get_error_code", lambda: None)()
    try:
        _dom, state = _state(client, name)
        where = "the guest is %s at the source" % state if state else "the guest is no longer defined at the source"
    except VirtopsError:
        where = "the guest's state at the source could not be read"
    why = ""
    if taken.get("timeout_action") == "abort":
        why = " (aborted after timeout=%ss)" % params["timeout"]
    return LibvirtError("migration of %s to %s failed%s: %s; %s" % (name, params["dest_uri"], why, text, where), code=code)


def job_stats(src_dom, dst_dom, taken):
    """The completed job's figures, from the source (or the destination when the source forgot the guest)."""
    raw = {}
    for dom in (src_dom, dst_dom):
        if dom is None:
            continue
        try:
            raw = dom.jobStats(VIR_DOMAIN_JOB_STATS_COMPLETED) or {}
        except Exception:  # pylint: disable=broad-exception-caught  # a transient source is gone after the migration
            raw = {}
        if raw:
            break
    return stats_from(raw, taken)


def stats_from(raw, taken):
    """Turn libvirt's job statistics into the module's ``stats``."""

    def pick(key):
        value = raw.get(key)
        return int(value) if value is not None else None

    requests = pick("memory_postcopy_requests")
    return dict(
        downtime_ms=pick("downtime"),
        total_time_ms=pick("time_elapsed"),
        data_transferred_bytes=pick("data_processed"),
        memory_transferred_bytes=pick("memory_processed"),
        disk_transferred_bytes=pick("disk_processed"),
        memory_iterations=pick("memory_iteration"),
        postcopy_requests=requests,
        postcopy_used=bool(taken.get("postcopy")) or bool(requests),
        timeout_action=taken.get("timeout_action"),
    )


def _describe(src_state, dst_state):
    return "source: %s\ndestination: %s\n" % (src_state or "absent", dst_state or "absent")


def _predicted_after(dom, src_state, params):
    if params["undefine_source"] or not dom.isPersistent():
        src_after = None
    elif params["offline"]:
        src_after = src_state
    else:
        src_after = "shutoff" if src_state is not None else None
    dst_after = "shutoff" if params["offline"] else "running"
    return src_after, dst_after


def ensure_domain_migrate(backends, params, check_mode, open_dest=open_client):
    """Migrate one guest to ``dest_uri`` unless it is there already; returns the module result."""
    validate(params)
    name = params["name"]
    client = backends.libvirt
    try:
        dclient = open_dest(params["dest_uri"])
    except VirtopsError as exc:
        hint = tls_hint(params["dest_uri"], exc.msg)
        raise type(exc)("cannot reach the destination %s: %s%s; nothing was changed" % (params["dest_uri"], exc.msg, hint)) from exc
    try:
        return _ensure(client, dclient, name, params, check_mode)
    finally:
        dclient.close()


def _ensure(client, dclient, name, params, check_mode):
    dom, src_state = _state(client, name)
    ddom, dst_state = _state(dclient, name)
    action = decide(name, src_state, dst_state, params)
    flags, flag_names = migration_flags(params)
    result = dict(changed=False, action="none", flags=flag_names, checks=[], stats=None, source_state=src_state, destination_state=dst_state)
    if action == "none":
        return result
    checks = preflight(dom, dclient, params, client)
    src_after, dst_after = _predicted_after(dom, src_state, params)
    result.update(changed=True, action="migrated", checks=checks)
    diff = dict(before=_describe(src_state, dst_state), before_header=name, after_header=name)
    if check_mode:
        result.update(source_state=src_after, destination_state=dst_after, diff=dict(diff, after=_describe(src_after, dst_after)))
        return result
    taken = migrate(client, dom, params, flags, migration_params(params))
    dom, src_state = _state(client, name)
    ddom, dst_state = _state(dclient, name)
    result.update(
        stats=job_stats(dom, ddom, taken),
        source_state=src_state,
        destination_state=dst_state,
        diff=dict(diff, after=_describe(src_state, dst_state)),
    )
    return result
