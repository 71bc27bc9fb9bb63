# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The ``domain`` module's logic: define with a three-way merge, power state, autostart, removal.

:func:`ensure_domain` is the entry point (``ensure_domain(backends, params, check_mode)``); it
manages one guest (``name``) or several (``domains``) over the one libvirt client of the run.
For each guest the run plans first (parse and check the intent, merge it with the current
definition, validate the result), then applies; check mode stops after the plan and reports it.

Secret values of the intent (graphics passwords, network disk cookies: see
:mod:`._domain_state`) reach libvirt's definition, and nowhere else: the last-applied intent in
``<metadata>`` keeps a placeholder instead, and every XML the module returns is masked. They are
still compared, because the current definition is read with ``VIR_DOMAIN_XML_SECURE``.
"""

from __future__ import annotations

import os
import re
import time

from ansible_collections.virtops.kvm.plugins.module_utils._domain_state import (
    ACTIVE_STATES,
    MASK,
    SchemaCheck,
    mask_secrets,
    masked_text,
    secrets_digest,
    state_of,
)
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, LibvirtError, ValidationError, VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import (
    VIR_DOMAIN_DEFINE_VALIDATE,
    VIR_DOMAIN_START_PAUSED,
    VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
    VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
    VIR_DOMAIN_UNDEFINE_NVRAM,
    VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
    VIR_DOMAIN_UNDEFINE_TPM,
    VIR_DOMAIN_XML_INACTIVE,
    VIR_DOMAIN_XML_SECURE,
    VIR_ERR_INVALID_ARG,
    translated,
)
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
APPLY_CHOICES = ["next_boot", "restart"]

# The options a guest takes, alone (top level) or as an entry of ``domains``.
GUEST_KEYS = ("name", "xml", "state", "autostart", "shutdown_timeout", "force", "apply", "save_path", "restore_from", "remove_storage")

# Everything undefine can take with the guest, then smaller sets for drivers that refuse some flags
# (VIR_ERR_INVALID_ARG "unsupported flags").
UNDEFINE_FLAG_SETS = (
    VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | VIR_DOMAIN_UNDEFINE_NVRAM
    | VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | VIR_DOMAIN_UNDEFINE_TPM,
    VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | VIR_DOMAIN_UNDEFINE_NVRAM,
    VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
)
XML_INACTIVE_SECURE = VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def validate_guest_name(name, what="name"):
    """Refuse a guest name libvirt would refuse (or that would break its files) before anything runs."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("%s must be a non-empty guest name" % what)
    if "/" in name:
        raise ValidationError(
            "%s %r contains '/', which libvirt refuses in a guest name (the name becomes the file name of its "
            "definition and logs); use another character such as '-'" % (what, name)
        )
    if _CONTROL.search(name):
        raise ValidationError("%s %r contains a control character (newline, tab...); libvirt guest names are one line of text" % (what, name))
    if name != name.strip():
        raise ValidationError("%s %r has leading or trailing whitespace; remove it" % (what, name))
    return name


def parse_intent(name, xml_text):
    """Parse the intent: a ``<domain>`` whose ``<name>`` is ``name`` (added when missing)."""
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
    return intent


def check_params(params):
    """What can be refused from the parameters alone, before libvirt is asked anything."""
    name = validate_guest_name(params["name"])
    if params.get("xml"):
        parse_intent(name, params["xml"])
    if params.get("restore_from") and params["state"] == "running" and not os.path.isfile(params["restore_from"]):
        raise ValidationError("restore_from: %s does not exist (or is not a file); give the path a state=saved save_path wrote" % params["restore_from"])
    if params.get("shutdown_timeout") is not None and params["shutdown_timeout"] < 0:
        raise ValidationError("shutdown_timeout must not be negative, got %s" % params["shutdown_timeout"])


# ---------------------------------------------------------------------------------------------
# Planning a definition
# ---------------------------------------------------------------------------------------------


def machine_aliases(client):
    """``{alias: canonical}`` machine types from libvirt's capabilities (``q35`` -> ``pc-q35-7.2``), read once
    per connection (a batch of guests needs them for each guest's comparison)."""

    def read():
        aliases = {}
        with translated("cannot read libvirt's capabilities"):
            caps = parse_xml(client.conn.getCapabilities(), "libvirt's capabilities")
        for machine in caps.iter("machine"):
            canonical = machine.get("canonical")
            if canonical and machine.text:
                aliases.setdefault(machine.text.strip(), canonical)
        return aliases

    return client.memo("machine_aliases", read)


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

    Returns ``(intent, current, merged, changed)``; ``current`` is ``None`` for a new guest. The
    stored last-applied intent has its secrets masked (:func:`mask_secrets`); ``merged`` keeps the
    real values, since it is what libvirt is given. Raises :class:`ValidationError` for input that
    must not reach libvirt.
    """
    intent = parse_intent(name, xml_text)
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
        write_last_applied(merged, mask_secrets(intent))
        return intent, None, merged, True
    current = inactive_xml(dom)
    merged = three_way_merge(intent, current, read_last_applied(current), equal=domain_equivalence(machine_aliases(client)))
    _follow_memory(intent, current, merged)
    write_last_applied(merged, mask_secrets(intent))
    return intent, current, merged, not xml_equal(merged, current)


def inactive_xml(dom):
    """The persistent definition with its secrets (``VIR_DOMAIN_XML_SECURE``), so they can be compared."""
    with translated("cannot read the XML of guest %s" % dom.name()):
        return parse_xml(dom.XMLDesc(XML_INACTIVE_SECURE), "libvirt's XML of %s" % dom.name())


def pending_restart(client, dom, intent=None):
    """Whether the running guest's live XML lacks what the persistent intent asks for.

    The intent (given, or the last-applied one stored in the persistent XML) is merged into the
    live XML; if that changes it, a restart is needed to pick the new configuration up. A stored
    intent has its secrets masked, so secret values are left out of that comparison.
    """
    if dom is None or not dom.isActive() or not dom.isPersistent():
        return False
    given = intent is not None
    if not given:
        intent = read_last_applied(inactive_xml(dom))
        if intent is None:
            return False
    with translated("cannot read the live XML of guest %s" % dom.name()):
        live = parse_xml(dom.XMLDesc(VIR_DOMAIN_XML_SECURE), "libvirt's live XML")
    _firmware_resolved(intent, live)
    merged = three_way_merge(intent, live, read_last_applied(live), equal=live_equivalence(machine_aliases(client)))
    if given:
        return not xml_equal(merged, live)
    # the stored intent holds placeholders, not the secret values: compare everything else
    return not xml_equal(mask_secrets(merged), mask_secrets(live))


def _firmware_resolved(intent, live):
    """Firmware autoselection (``<os firmware='efi'>``) as the running guest shows it: libvirt resolves it at
    start into an explicit ``<loader>``/``<nvram>`` and drops the attribute from the live XML. The live
    ``<os>`` then counts as having the firmware the intent asks for, or every UEFI guest would look as if it
    needed a restart."""
    wanted, have = intent.find("os"), live.find("os")
    if wanted is None or have is None or not wanted.get("firmware") or have.get("firmware"):
        return
    if (have.findtext("loader") or "").strip():
        have.set("firmware", wanted.get("firmware"))


def describe(dom, pending=False):
    """The ``domain`` return value for an existing guest."""
    state, reason = state_of(dom)
    with translated("cannot read guest %s" % dom.name()):
        return dict(
            name=dom.name(),
            uuid=dom.UUIDString(),
            state=state,
            state_reason=reason,
            persistent=bool(dom.isPersistent()),
            autostart=bool(dom.autostart()) if dom.isPersistent() else False,
            pending_restart=bool(pending),
        )


# ---------------------------------------------------------------------------------------------
# Power state
# ---------------------------------------------------------------------------------------------


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
        self._do("start paused" if paused else "start", self.dom.createWithFlags, VIR_DOMAIN_START_PAUSED if paused else 0)

    def resume(self):
        self._do("resume", self.dom.resume)

    def suspend(self):
        self._do("pause", self.dom.suspend)

    def destroy(self):
        self._do("destroy", self.dom.destroy)

    def _destroy_unless_stopped(self):
        # The guest may finish its ACPI shutdown between the last state read and destroy(); libvirt then
        # refuses with "domain is not running". That is the outcome asked for, not an error.
        try:
            self.destroy()
        except LibvirtError:
            if self.state() != "shutoff":
                raise

    def reboot(self):
        self._do("reboot", self.dom.reboot, 0)

    def managed_save(self):
        self._do("save (managed)", self.dom.managedSave, 0)

    def save(self, path):
        self._do("save to %s" % path, self.dom.save, path)

    def restore(self, path):
        self.actions.append("restore from %s" % path)
        if not self.check_mode:
            self.client.call("cannot restore guest %s from %s" % (self.name, path), self.client.conn.restore, path)
            if self.state() == "paused":
                self.resume()

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
            self.sleep(0.25)
        if self.force:
            self._destroy_unless_stopped()
            return
        raise VirtopsError(
            "guest %s did not shut down within %ss of an ACPI power-button request (state: %s, reason: %s); it may ignore ACPI: "
            "set force=true to power it off, or raise shutdown_timeout" % (self.name, self.shutdown_timeout, state, reason),
            state=state,
            state_reason=reason,
        )


def _lifecycle(client, dom, params, check_mode):
    return Lifecycle(client, dom, check_mode, shutdown_timeout=params["shutdown_timeout"], force=params["force"])


def _to_running(life, params, active, state):
    restore_from = params.get("restore_from")
    if not active and restore_from:
        life.restore(restore_from)
    elif state == "paused":
        life.resume()
    elif not active:
        life.start()


def _to_saved(client, life, params, active, state):
    save_path = params.get("save_path")
    if active:
        if save_path:
            life.save(save_path)
        else:
            life.managed_save()
    elif save_path and not os.path.exists(save_path):
        raise ValidationError("guest %s is %s and %s does not exist: only a running or paused guest can be saved" % (life.name, state, save_path))
    elif not save_path and not client.call("cannot read guest %s" % life.name, life.dom.hasManagedSaveImage, 0):
        raise ValidationError("guest %s is %s and has no managed save image: only a running or paused guest can be saved" % (life.name, state))


def ensure_state(client, dom, params, check_mode, lifecycle=None):
    """Drive ``dom`` to ``params['state']``; returns the :class:`Lifecycle` with the actions taken."""
    life = lifecycle or _lifecycle(client, dom, params, check_mode)
    wanted = params["state"]
    state = life.state()
    active = state in ACTIVE_STATES
    if wanted == "running":
        _to_running(life, params, active, state)
    elif wanted == "paused" and state != "paused":
        if active:
            life.suspend()
        else:
            life.start(paused=True)
    elif wanted == "shutdown" and active:
        life.shutdown()
    elif wanted == "destroyed" and active:
        life.destroy()
    elif wanted == "restarted":
        if not active:
            life.start()
        else:
            if state == "paused":
                life.resume()
            life.reboot()
    elif wanted == "saved":
        _to_saved(client, life, params, active, state)
    return life


# ---------------------------------------------------------------------------------------------
# Removal
# ---------------------------------------------------------------------------------------------


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
            if exc.code != VIR_ERR_INVALID_ARG or flags == UNDEFINE_FLAG_SETS[-1]:
                raise


def ensure_absent(client, dom, params, check_mode):
    """Shut down (or destroy a transient guest), undefine, and remove storage when asked."""
    result = dict(changed=False, removed_storage=[], actions=[])
    if dom is None:
        return result
    life = _lifecycle(client, dom, params, check_mode)
    persistent = bool(dom.isPersistent())
    storage = []
    if params["remove_storage"]:
        with translated("cannot read the XML of guest %s" % dom.name()):
            storage = referenced_storage(parse_xml(dom.XMLDesc(XML_INACTIVE_SECURE if persistent else VIR_DOMAIN_XML_SECURE)))
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


# ---------------------------------------------------------------------------------------------
# Diff
# ---------------------------------------------------------------------------------------------


def _power_text(state, autostart):
    return "state: %s\nautostart: %s\n" % (state, str(bool(autostart)).lower())


def _secrets_entry(name, before, after):
    """A diff entry saying which secret values change, without showing them; ``None`` when none does."""
    old = secrets_digest(before) if before is not None else []
    new = secrets_digest(after) if after is not None else []
    if old == new:
        return None
    old_values = dict(old)
    before_text = "".join("%s: %s\n" % (where, MASK) for where, _value in old)
    after_text = "".join("%s: %s%s\n" % (where, MASK, "" if old_values.get(where) == value else " (new value)") for where, value in new)
    header = "%s (secret values, masked)" % name
    return dict(before_header=header, after_header=header, before=before_text, after=after_text)


def diff_entries(name, before, after, before_power, after_power):
    """The diff of one guest: its inactive XML (secrets masked), its secrets (changed or not), power and autostart."""
    diffs = []
    before_xml, after_xml = masked_text(before), masked_text(after)
    if before_xml != after_xml:
        header = "%s (inactive XML)" % name
        diffs.append(dict(before_header=header, after_header=header, before=before_xml, after=after_xml))
    secrets = _secrets_entry(name, before, after)
    if secrets is not None:
        diffs.append(secrets)
    if before_power != after_power:
        header = "%s (power and autostart)" % name
        diffs.append(dict(before_header=header, after_header=header, before=before_power, after=after_power))
    return diffs


# ---------------------------------------------------------------------------------------------
# One guest
# ---------------------------------------------------------------------------------------------

_TARGET_STATE = {"running": "running", "paused": "paused", "shutdown": "shutoff", "destroyed": "shutoff", "saved": "shutoff", "restarted": "running"}


class GuestRun:
    """One guest's run: what it was, the definition step, the autostart and power steps, the result."""

    def __init__(self, client, params, check_mode, schema):
        self.client = client
        self.params = params
        self.check_mode = check_mode
        self.schema = schema
        self.name = params["name"]
        self.dom = client.lookup_domain(self.name)
        self.changed = False
        self.actions = []
        self.intent = None
        dom = self.dom
        self.before = inactive_xml(dom) if dom is not None and dom.isPersistent() else None
        self.after = self.before
        self.before_state = state_of(dom)[0] if dom is not None else "undefined"
        self.before_autostart = bool(dom.isPersistent() and dom.autostart()) if dom is not None else False
        self.after_autostart = self.before_autostart
        self.after_state = self.before_state

    # -- steps ---------------------------------------------------------------------------------
    def define(self):
        """Plan the definition, validate it in check mode, and define it in a real run."""
        if self.dom is None and not self.params.get("xml"):
            raise ValidationError("guest %s does not exist; give its xml to define it" % self.name)
        if not self.params.get("xml"):
            return
        self.intent, _current, merged, defined = plan_definition(self.client, self.name, self.params["xml"], self.dom)
        if not defined:
            return
        self.changed = True
        self.after = merged
        if self.check_mode:
            self.schema.validate(merged, self.name)
            return
        what = "define" if self.dom is None else "redefine"
        self.dom = self.client.call(
            "cannot %s guest %s (defineXMLFlags with VIR_DOMAIN_DEFINE_VALIDATE)" % (what, self.name),
            self.client.conn.defineXMLFlags,
            to_string(merged, pretty=False),
            VIR_DOMAIN_DEFINE_VALIDATE,
        )
        self.after = inactive_xml(self.dom)
        if self.before_state == "undefined":
            self.after_state = state_of(self.dom)[0]

    def autostart(self):
        autostart = self.params.get("autostart")
        if autostart is None or autostart == self.before_autostart:
            return
        self.changed = True
        self.after_autostart = autostart
        self.actions.append("autostart on" if autostart else "autostart off")
        if not self.check_mode:
            self.client.call("cannot set autostart of guest %s" % self.name, self.dom.setAutostart, 1 if autostart else 0)

    def power_new(self):
        """Check mode on a guest that does not exist yet: predict without a libvirt object."""
        state = self.params["state"]
        if state == "saved":
            raise ValidationError("guest %s does not exist yet, so it cannot be saved; use state=running first" % self.name)
        self.after_state = _TARGET_STATE.get(state, "shutoff")
        if state in ("running", "paused", "restarted"):
            self.actions.append("start paused" if state == "paused" else "start")
        uuid = self.after.findtext("uuid") if self.after is not None else None
        return dict(
            name=self.name, uuid=uuid, state=self.after_state, state_reason="unknown", persistent=True, autostart=self.after_autostart,
            pending_restart=False,
        )  # fmt: skip

    def power(self):
        """Drive the power state, then restart for a pending definition when ``apply=restart``."""
        client, dom, params, check_mode = self.client, self.dom, self.params, self.check_mode
        state = params["state"]
        if state != "present":
            life = ensure_state(client, dom, params, check_mode)
            self.actions.extend(life.actions)
            self.changed = self.changed or bool(life.actions)
            if not check_mode:
                self.after_state = state_of(dom)[0]
            elif life.actions:
                self.after_state = _TARGET_STATE.get(state, self.before_state)
        # a guest started by this run runs the new definition; one that kept running may lack it
        kept_running = self.after_state in ACTIVE_STATES and (self.before_state in ACTIVE_STATES or not check_mode)
        pending = pending_restart(client, dom, self.intent) if kept_running else False
        if pending and params["apply"] == "restart":
            life = _lifecycle(client, dom, params, check_mode)
            life.shutdown()
            life.start()
            self.actions.extend(life.actions)
            self.changed = True
            pending = False
            self.after_state = state_of(dom)[0] if not check_mode else "running"
        domain = describe(dom, pending)
        if check_mode:
            domain.update(state=self.after_state, autostart=self.after_autostart)
        return domain

    def run(self):
        self.define()
        if self.dom is not None:
            self.autostart()
            domain = self.power()
        else:
            if self.params.get("autostart"):
                self.changed = True
                self.after_autostart = True
                self.actions.append("autostart on")
            domain = self.power_new()
        result = dict(changed=self.changed, domain=domain, xml=masked_text(self.after) or None, actions=self.actions)
        result["diff"] = diff_entries(
            self.name,
            self.before,
            self.after,
            _power_text(self.before_state, self.before_autostart),
            _power_text(self.after_state, self.after_autostart),
        )
        return result


def _ensure_absent_guest(client, params, check_mode):
    name = params["name"]
    dom = client.lookup_domain(name)
    before = inactive_xml(dom) if dom is not None and dom.isPersistent() else None
    before_power = _power_text(state_of(dom)[0], dom.isPersistent() and dom.autostart()) if dom is not None else ""
    result = ensure_absent(client, dom, params, check_mode)
    result.update(domain=None, xml=None)
    result["diff"] = diff_entries(name, before, None, before_power, "") if result["changed"] else []
    return result


def ensure_guest(client, params, check_mode, schema):
    """Make guest ``params['name']`` match ``params`` on ``client``; returns its result."""
    check_params(params)
    if params["state"] == "absent":
        return _ensure_absent_guest(client, params, check_mode)
    return GuestRun(client, params, check_mode, schema).run()


# ---------------------------------------------------------------------------------------------
# Several guests
# ---------------------------------------------------------------------------------------------


def entry_params(params, entry, index):
    """The parameters of ``domains[index]``: the entry's keys, the task's top-level values for the rest."""
    merged = {key: params.get(key) for key in GUEST_KEYS if key not in ("name", "xml")}
    merged["xml"] = None
    for key, value in entry.items():
        if value is not None:
            merged[key] = value
    merged["name"] = entry.get("name")
    validate_guest_name(merged["name"], "domains[%d].name" % index)
    return merged


def _batch_error(exc, index, name, results):
    done = [result for result in results if result["changed"]]
    if done:
        earlier = "the guests before it were handled and their changes stay: %s" % ", ".join(
            "%s (%s)" % (result["name"], ", ".join(result["actions"]) or "definition") for result in done
        )
    elif results:
        earlier = "the guests before it needed no change"
    else:
        earlier = "it is the first entry, nothing was changed"
    msg = "domains[%d] (guest %s) failed: %s. %s; the entries after it were not touched" % (index, name, exc.msg, earlier)
    details = dict(exc.details)
    details.update(failed_guest=name, results=results, changed=bool(done))
    return VirtopsError(msg, **details)


def ensure_domains(client, params, check_mode, schema):
    """Handle each entry of ``params['domains']`` in order over one client.

    Every entry's parameters and XML are checked before any guest is touched. A guest that fails
    stops the run: the result says which, and what the guests before it changed.
    """
    entries = [entry_params(params, entry, index) for index, entry in enumerate(params["domains"])]
    seen = {}
    for index, entry in enumerate(entries):
        if entry["name"] in seen:
            raise ValidationError("domains[%d] and domains[%d] both name guest %s; give each guest once" % (seen[entry["name"]], index, entry["name"]))
        seen[entry["name"]] = index
        try:
            check_params(entry)
        except ValidationError as exc:
            raise ValidationError("domains[%d] (guest %s): %s; no guest was changed" % (index, entry["name"], exc.msg), **exc.details) from exc
    results = []
    diffs = []
    for index, entry in enumerate(entries):
        try:
            result = ensure_guest(client, entry, check_mode, schema)
        except VirtopsError as exc:
            raise _batch_error(exc, index, entry["name"], results) from exc
        diff = result.pop("diff", None) or []
        if result["changed"]:
            diffs.extend(diff)
            result["diff"] = diff
        result["name"] = entry["name"]
        result.setdefault("removed_storage", [])
        results.append(result)
    return dict(changed=any(result["changed"] for result in results), results=results, diff=diffs)


# ---------------------------------------------------------------------------------------------
# The module's entry point
# ---------------------------------------------------------------------------------------------


def ensure_domain(backends, params, check_mode):
    """The ``domain`` module: one guest (``name``) or several (``domains``) over one libvirt connection."""
    if params.get("domains") is not None and params.get("name"):
        raise ValidationError("name and domains are mutually exclusive: give one guest with name, or a list of guests with domains")
    if params.get("domains") is None and not params.get("name"):
        raise ValidationError("give name (one guest) or domains (a list of guests)")
    schema = SchemaCheck(backends.uri) if check_mode else None
    many = params.get("domains") is not None
    result = (ensure_domains if many else ensure_guest)(backends.libvirt, params, check_mode, schema)
    warnings = []
    if schema is not None and schema.warning and _defines_something(result):
        warnings.append(schema.warning)
    result["warnings"] = warnings
    return result


def _defines_something(result):
    """Whether check mode predicted a definition (so the skipped validation matters)."""
    results = result.get("results", [result])
    return any(item.get("changed") and item.get("xml") for item in results)
