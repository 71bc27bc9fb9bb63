# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``domain`` module's logic: define with a three-way merge, power state, autostart, removal.

:func:`run_domain` is the module's runner; :func:`ensure_domain` does the work on a
:class:`LibvirtClient` it is given, so unit tests drive it against ``test:///default``. Check mode
runs the same comparison and skips only the libvirt calls that change something.
"""

from __future__ import annotations

import os
import tempfile
import time
from urllib.parse import urlparse

from ansible_collections.virtops.kvm.plugins.module_utils._command import CommandRunner
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, LibvirtError, ValidationError, VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import connect, libvirt, translated
from ansible_collections.virtops.kvm.plugins.module_utils._xml import (
    parse_xml,
    read_last_applied,
    three_way_merge,
    to_bytes,
    to_string,
    write_last_applied,
    xml_equal,
)

STATES = ["present", "running", "shutdown", "destroyed", "paused", "saved", "restarted", "absent"]

# virDomainState and the reasons of each state (libvirt-domain.h); stable numbers, so this module
# imports without libvirt-python.
STATE_NAMES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed", 7: "pmsuspended"}
STATE_REASONS = {
    0: ["unknown"],
    1: ["unknown", "booted", "migrated", "restored", "from_snapshot", "unpaused", "migration_canceled", "save_canceled", "wakeup", "crashed",
        "postcopy", "postcopy_failed"],
    2: ["unknown"],
    3: ["unknown", "user", "migration", "save", "dump", "ioerror", "watchdog", "from_snapshot", "shutting_down", "snapshot", "crashed",
        "starting_up", "postcopy", "postcopy_failed", "api_error"],
    4: ["unknown", "user"],
    5: ["unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from_snapshot", "daemon"],
    6: ["unknown", "panicked"],
    7: ["unknown"],
}
RUNNING, PAUSED, SHUTOFF = 1, 3, 5
ACTIVE_STATES = ("running", "blocked", "paused", "shutdown", "pmsuspended", "crashed")

XML_INACTIVE_SECURE = 2 | 1  # VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE
XML_SECURE = 1
DEFINE_VALIDATE = 1  # VIR_DOMAIN_DEFINE_VALIDATE
START_PAUSED = 1  # VIR_DOMAIN_START_PAUSED
# VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | SNAPSHOTS_METADATA | NVRAM | CHECKPOINTS_METADATA | TPM, then
# smaller sets for drivers that refuse some flags (VIR_ERR_INVALID_ARG "unsupported flags").
UNDEFINE_FLAG_SETS = (1 | 2 | 4 | 16 | 32, 1 | 2 | 4, 1 | 2)
ERR_INVALID_ARG = 8


def state_of(dom):
    """``(state_name, reason_name)`` of a libvirt domain."""
    with translated("cannot read the state of guest %s" % dom.name()):
        state, reason = dom.state()
    reasons = STATE_REASONS.get(state, ["unknown"])
    return STATE_NAMES.get(state, "unknown"), reasons[reason] if 0 <= reason < len(reasons) else "unknown"


def machine_aliases(conn):
    """``{alias: canonical}`` machine types from libvirt's capabilities (``q35`` -> ``pc-q35-7.2``)."""
    aliases = {}
    with translated("cannot read libvirt's capabilities"):
        caps = parse_xml(conn.getCapabilities(), "libvirt's capabilities")
    for machine in caps.iter("machine"):
        canonical = machine.get("canonical")
        if canonical and machine.text:
            aliases.setdefault(machine.text.strip(), canonical)
    return aliases


def domain_equivalence(aliases):
    """The ``equal`` hook for :func:`three_way_merge` on ``<domain>``: machine-type aliases."""

    def equal(element, attribute, intent_value, current_value):
        if element.tag == "type" and attribute == "machine":
            return aliases.get(intent_value, intent_value) == aliases.get(current_value, current_value)
        return False

    return equal


# What a running guest's live XML spells differently from the definition it was started from.
_AUTO_PORT_ATTRIBUTES = ("port", "tlsPort", "websocket")


def live_equivalence(aliases):
    """The ``equal`` hook for merging an intent into *live* XML: aliases, plus runtime expansions.

    An automatic graphics port (``-1``) equals the port QEMU got, and ``<cpu mode='host-model'>``
    equals the ``custom`` CPU libvirt expanded it to at start.
    """
    base = domain_equivalence(aliases)

    def equal(element, attribute, intent_value, current_value):
        if element.tag == "graphics" and attribute in _AUTO_PORT_ATTRIBUTES and intent_value == "-1":
            return True
        if element.tag == "cpu" and attribute == "mode" and intent_value == "host-model" and current_value == "custom":
            return True
        return base(element, attribute, intent_value, current_value)

    return equal


def _follow_memory(intent, current, merged):
    """``<currentMemory>`` the user never wrote follows ``<memory>`` when libvirt had defaulted it to it."""
    if intent.find("currentMemory") is not None or intent.find("memory") is None:
        return
    cur_mem, cur_cur, new_mem, new_cur = (current.find("memory"), current.find("currentMemory"), merged.find("memory"), merged.find("currentMemory"))
    if None in (cur_mem, cur_cur, new_mem, new_cur):
        return
    if to_bytes(cur_mem.text, cur_mem.get("unit")) == to_bytes(cur_cur.text, cur_cur.get("unit")):
        new_cur.text = new_mem.text
        new_cur.set("unit", new_mem.get("unit") or "KiB")


def plan_definition(client, name, xml_text, dom):
    """Parse and check the intent and merge it with the guest's inactive XML.

    Returns ``(intent, current, merged, changed)``; ``current`` is ``None`` for a new guest.
    Raises :class:`ValidationError` for input that must not reach libvirt.
    """
    intent = parse_xml(xml_text, "xml")
    if intent.tag != "domain":
        raise ValidationError("xml must have a <domain> root element, found <%s>" % intent.tag)
    xml_name = intent.findtext("name")
    if xml_name is None:
        node = intent.makeelement("name")
        node.text = name
        intent.insert(0, node)
    elif xml_name.strip() != name:
        raise ValidationError("the name in xml (%s) does not match name=%s; make them equal (renaming is not supported)" % (xml_name.strip(), name))
    uuid = intent.findtext("uuid")
    if uuid:
        uuid = uuid.strip()
        owner = client.lookup_domain_by_uuid(uuid)
        if owner is not None and owner.name() != name:
            raise ValidationError("uuid %s in xml already belongs to guest %s; remove <uuid> or use another one" % (uuid, owner.name()))
        if dom is not None and dom.UUIDString() != uuid:
            raise ValidationError("guest %s exists with uuid %s, xml asks for %s; a guest's uuid cannot change" % (name, dom.UUIDString(), uuid))
    if dom is None:
        merged = three_way_merge(intent, None)
        write_last_applied(merged, intent)
        return intent, None, merged, True
    current = inactive_xml(dom)
    merged = three_way_merge(intent, current, read_last_applied(current), equal=domain_equivalence(machine_aliases(client.conn)))
    _follow_memory(intent, current, merged)
    write_last_applied(merged, intent)
    return intent, current, merged, not xml_equal(merged, current)


def schema_validator(runner, tmpdir=None):
    """A function that checks domain XML with libvirt's schema (``virt-xml-validate``), or ``None``.

    Check mode uses it so that a schema error is predicted too; a real run relies on libvirt's
    ``VIR_DOMAIN_DEFINE_VALIDATE`` flag instead.
    """
    tool = runner.which("virt-xml-validate")
    if tool is None:
        return None

    def validate(xml_text):
        fd, path = tempfile.mkstemp(prefix="virtops-domain-", suffix=".xml", dir=tmpdir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(xml_text)
            rc, out, err = runner.run([tool, path, "domain"], check=False)
        finally:
            os.unlink(path)
        if rc != 0:
            detail = " ".join((err or out or "").replace(path, "xml").split())
            raise ValidationError("XML document failed to validate against schema (virt-xml-validate): %s" % detail)

    return validate


def inactive_xml(dom):
    with translated("cannot read the XML of guest %s" % dom.name()):
        return parse_xml(dom.XMLDesc(XML_INACTIVE_SECURE), "libvirt's XML of %s" % dom.name())


def pending_restart(client, dom, intent=None):
    """Whether the running guest's live XML lacks what the persistent intent asks for.

    The intent (given, or the last-applied one stored in the persistent XML) is merged into the
    live XML; if that changes it, a restart is needed to pick the new configuration up.
    """
    if dom is None or not dom.isActive() or not dom.isPersistent():
        return False
    if intent is None:
        intent = read_last_applied(inactive_xml(dom))
        if intent is None:
            return False
    with translated("cannot read the live XML of guest %s" % dom.name()):
        live = parse_xml(dom.XMLDesc(XML_SECURE), "libvirt's live XML")
    merged = three_way_merge(intent, live, read_last_applied(live), equal=live_equivalence(machine_aliases(client.conn)))
    return not xml_equal(merged, live)


def describe(dom, pending=False):
    """The ``domain`` return value for an existing guest."""
    state, reason = state_of(dom)
    with translated("cannot read guest %s" % dom.name()):
        return dict(
            name=dom.name(), uuid=dom.UUIDString(), state=state, state_reason=reason, persistent=bool(dom.isPersistent()),
            autostart=bool(dom.autostart()) if dom.isPersistent() else False, pending_restart=bool(pending),
        )


class Lifecycle:
    """Power-state actions on one guest; ``check_mode`` reports them without doing them."""

    def __init__(self, client, dom, check_mode=False, *, shutdown_timeout=120, force=False, sleep=time.sleep, clock=time.monotonic):
        self.client = client
        self.dom = dom
        self.check_mode = check_mode
        self.shutdown_timeout = shutdown_timeout
        self.force = force
        self.sleep = sleep
        self.clock = clock
        self.actions = []

    @property
    def name(self):
        return self.dom.name()

    def state(self):
        return state_of(self.dom)[0]

    def _do(self, action, func, *args):
        self.actions.append(action)
        if not self.check_mode:
            self.client.call("cannot %s guest %s" % (action, self.name), func, *args)

    def start(self, paused=False):
        self._do("start paused" if paused else "start", self.dom.createWithFlags, START_PAUSED if paused else 0)

    def resume(self):
        self._do("resume", self.dom.resume)

    def suspend(self):
        self._do("pause", self.dom.suspend)

    def destroy(self):
        self._do("destroy", self.dom.destroy)

    def reboot(self):
        self._do("reboot", self.dom.reboot, 0)

    def managed_save(self):
        self._do("save (managed)", self.dom.managedSave, 0)

    def save(self, path):
        self._do("save to %s" % path, self.dom.save, path)

    def shutdown(self):
        """Graceful ACPI shutdown, waiting ``shutdown_timeout`` s; then destroy if ``force``, else fail."""
        if self.state() == "paused":
            self.resume()
        self.actions.append("shutdown")
        if self.check_mode:
            return
        self.client.call("cannot shut down guest %s" % self.name, self.dom.shutdown)
        deadline = self.clock() + self.shutdown_timeout
        while True:
            state, reason = state_of(self.dom)
            if state == "shutoff":
                return
            if self.clock() >= deadline:
                break
            self.sleep(0.5)
        if self.force:
            self.destroy()
            return
        raise VirtopsError(
            "guest %s did not shut down within %ss of an ACPI power-button request (state: %s, reason: %s); it may ignore ACPI: "
            "set force=true to power it off, or raise shutdown_timeout" % (self.name, self.shutdown_timeout, state, reason),
            state=state, state_reason=reason,
        )


def ensure_state(client, dom, params, check_mode, lifecycle=None):
    """Drive ``dom`` to ``params['state']``; returns the :class:`Lifecycle` with the actions taken."""
    life = lifecycle or Lifecycle(client, dom, check_mode, shutdown_timeout=params["shutdown_timeout"], force=params["force"])
    wanted = params["state"]
    state = life.state()
    active = state in ACTIVE_STATES
    if wanted == "running":
        restore_from = params.get("restore_from")
        if not active and restore_from:
            life.actions.append("restore from %s" % restore_from)
            if not check_mode:
                client.call("cannot restore guest %s from %s" % (life.name, restore_from), client.conn.restore, restore_from)
                if state_of(dom)[0] == "paused":
                    life.resume()
        elif state == "paused":
            life.resume()
        elif not active:
            life.start()
    elif wanted == "paused":
        if state != "paused":
            if active:
                life.suspend()
            else:
                life.start(paused=True)
    elif wanted == "shutdown":
        if active:
            life.shutdown()
    elif wanted == "destroyed":
        if active:
            life.destroy()
    elif wanted == "restarted":
        if active:
            if state == "paused":
                life.resume()
            life.reboot()
        else:
            life.start()
    elif wanted == "saved":
        save_path = params.get("save_path")
        if active:
            if save_path:
                life.save(save_path)
            else:
                life.managed_save()
        elif save_path and not os.path.exists(save_path):
            raise ValidationError("guest %s is %s and %s does not exist: only a running or paused guest can be saved" % (life.name, state, save_path))
        elif not save_path and not client.call("cannot read guest %s" % life.name, dom.hasManagedSaveImage, 0):
            raise ValidationError("guest %s is %s and has no managed save image: only a running or paused guest can be saved" % (life.name, state))
    return life


def referenced_storage(xml):
    """Paths of the ``device='disk'`` disks of a guest that are neither read-only nor shareable."""
    paths = []
    for disk in xml.findall("devices/disk"):
        if disk.get("device", "disk") != "disk" or disk.find("readonly") is not None or disk.find("shareable") is not None:
            continue
        source = disk.find("source")
        if source is None:
            continue
        if disk.get("type") == "volume" and source.get("pool") and source.get("volume"):
            paths.append(("volume", source.get("pool"), source.get("volume")))
        elif source.get("file") or source.get("dev"):
            paths.append(("path", None, source.get("file") or source.get("dev")))
    return paths


def remove_storage(client, storage, check_mode):
    """Delete each volume (through libvirt) or plain file a guest's disks referenced; returns the paths."""
    removed = []
    for kind, pool_name, ref in storage:
        vol = None
        if kind == "volume":
            pool = client.lookup_pool(pool_name)
            vol = client.lookup_volume(pool, ref) if pool is not None else None
            if vol is None:
                continue
        else:
            vol = client.lookup_volume_by_path(ref)
        if vol is not None:
            path = vol.path()
            if not check_mode:
                client.call("cannot delete volume %s" % path, vol.delete, 0)
            removed.append(path)
        elif os.path.isfile(ref):
            if not check_mode:
                try:
                    os.remove(ref)
                except OSError as exc:
                    raise HostError("cannot remove %s: %s" % (ref, exc)) from exc
            removed.append(ref)
    return removed


def undefine(client, dom):
    """Undefine with managed save, snapshot/checkpoint metadata, NVRAM and TPM state (UEFI guests too)."""
    name = dom.name()
    for flags in UNDEFINE_FLAG_SETS:
        try:
            client.call("cannot undefine guest %s" % name, dom.undefineFlags, flags)
            return
        except LibvirtError as exc:
            if exc.code != ERR_INVALID_ARG or flags == UNDEFINE_FLAG_SETS[-1]:
                raise


def ensure_absent(client, dom, params, check_mode):
    result = dict(changed=False, removed_storage=[], actions=[])
    if dom is None:
        return result
    life = Lifecycle(client, dom, check_mode, shutdown_timeout=params["shutdown_timeout"], force=params["force"])
    persistent = bool(dom.isPersistent())
    storage = referenced_storage(parse_xml(dom.XMLDesc(XML_SECURE if not persistent else XML_INACTIVE_SECURE))) if params["remove_storage"] else []
    if dom.isActive():
        if persistent:
            life.shutdown()
        else:
            life.destroy()
    if persistent:
        life.actions.append("undefine")
        if not check_mode:
            undefine(client, dom)
    result["removed_storage"] = remove_storage(client, storage, check_mode)
    result["actions"] = life.actions
    result["changed"] = True
    return result


def _diff_entries(name, before_xml, after_xml, before_power, after_power):
    diffs = []
    if before_xml != after_xml:
        diffs.append(dict(before_header="%s (inactive XML)" % name, after_header="%s (inactive XML)" % name, before=before_xml, after=after_xml))
    if before_power != after_power:
        diffs.append(dict(before_header="%s (power and autostart)" % name, after_header="%s (power and autostart)" % name,
                          before=before_power, after=after_power))
    return diffs


def _power_text(state, autostart):
    return "state: %s\nautostart: %s\n" % (state, str(bool(autostart)).lower())


_TARGET_STATE = {"running": "running", "paused": "paused", "shutdown": "shutoff", "destroyed": "shutoff", "saved": "shutoff", "restarted": "running"}


def ensure_domain(client, params, check_mode=False, want_diff=False, validate=None):
    """Make guest ``params['name']`` match ``params``; returns the module result.

    ``validate(xml_text)`` (see :func:`schema_validator`) checks the merged XML in check mode.
    """
    name = params["name"]
    dom = client.lookup_domain(name)
    state = params["state"]
    if params.get("restore_from") and state == "running" and not os.path.isfile(params["restore_from"]):
        raise ValidationError("restore_from: %s does not exist (or is not a file); give the path a state=saved save_path wrote" % params["restore_from"])
    if state == "absent":
        before = to_string(inactive_xml(dom)) if dom is not None else ""
        before_power = _power_text(state_of(dom)[0], dom.isPersistent() and dom.autostart()) if dom is not None else ""
        result = ensure_absent(client, dom, params, check_mode)
        result.update(domain=None, xml=None)
        if want_diff and result["changed"]:
            result["diff"] = _diff_entries(name, before, "", before_power, "")
        return result

    if dom is None and not params.get("xml"):
        raise ValidationError("guest %s does not exist; give its xml to define it" % name)

    changed = False
    intent = None
    before_xml = to_string(inactive_xml(dom)) if dom is not None and dom.isPersistent() else ""
    before_state = state_of(dom)[0] if dom is not None else "undefined"
    before_autostart = bool(dom.isPersistent() and dom.autostart()) if dom is not None else False
    after_xml = before_xml
    predicted = None
    if params.get("xml"):
        intent, _current, merged, defined = plan_definition(client, name, params["xml"], dom)
        if defined:
            changed = True
            predicted = merged
            after_xml = to_string(merged)
            if check_mode and validate is not None:
                validate(to_string(merged))
            if not check_mode:
                dom = client.call("cannot define guest %s" % name, client.conn.defineXMLFlags, to_string(merged, pretty=False), DEFINE_VALIDATE)
                after_xml = to_string(inactive_xml(dom))

    actions = []
    autostart = params.get("autostart")
    after_autostart = before_autostart
    if autostart is not None and autostart != before_autostart:
        changed = True
        after_autostart = autostart
        actions.append("autostart on" if autostart else "autostart off")
        if not check_mode:
            client.call("cannot set autostart of guest %s" % name, dom.setAutostart, 1 if autostart else 0)

    after_state = before_state
    pending = False
    if dom is None:  # check mode, new guest: predict without a libvirt object
        if state == "saved":
            raise ValidationError("guest %s does not exist yet, so it cannot be saved; use state=running first" % name)
        after_state = _TARGET_STATE.get(state, "shutoff")
        if state in ("running", "paused", "restarted"):
            actions.append("start paused" if state == "paused" else "start")
        domain = dict(name=name, uuid=predicted.findtext("uuid") if predicted is not None else None, state=after_state, state_reason="unknown",
                      persistent=True, autostart=after_autostart, pending_restart=False)
    else:
        if state != "present":
            life = ensure_state(client, dom, params, check_mode)
            actions.extend(life.actions)
            changed = changed or bool(life.actions)
            after_state = state_of(dom)[0] if not check_mode else _TARGET_STATE.get(state, before_state) if life.actions else before_state
        # a guest started by this run runs the new definition; one that kept running may lack it
        kept_running = after_state in ACTIVE_STATES and (before_state in ACTIVE_STATES or not check_mode)
        pending = pending_restart(client, dom, intent) if kept_running else False
        if pending and params["apply"] == "restart" and (after_state in ACTIVE_STATES):
            life = Lifecycle(client, dom, check_mode, shutdown_timeout=params["shutdown_timeout"], force=params["force"])
            life.shutdown()
            life.start()
            actions.extend(life.actions)
            changed = True
            pending = False
            after_state = state_of(dom)[0] if not check_mode else "running"
        domain = describe(dom, pending)
        if check_mode:
            domain.update(state=after_state, autostart=after_autostart)
    result = dict(changed=changed, domain=domain, xml=after_xml or None, actions=actions)
    if want_diff and changed:
        result["diff"] = _diff_entries(name, before_xml, after_xml, _power_text(before_state, before_autostart), _power_text(after_state, after_autostart))
    return result


def run_domain(module):
    """The ``domain`` module's runner."""
    if libvirt is None:  # pragma: no cover - connect() fails the module first
        raise HostError("libvirt-python is required")
    validate = None
    if module.check_mode and urlparse(module.params["uri"]).hostname in (None, "", "localhost"):
        validate = schema_validator(CommandRunner(module), getattr(module, "tmpdir", None))
    with connect(module) as client:
        return ensure_domain(client, module.params, check_mode=module.check_mode, want_diff=module._diff, validate=validate)
