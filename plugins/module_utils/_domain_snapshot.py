# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Snapshots of one libvirt guest (the logic of ``domain_snapshot``).

The entry point :func:`ensure_domain_snapshot` reads the guest's snapshot list, plans one action
(``created``, ``reverted``, ``deleted`` or ``none``), predicts the list after it, and unless in check
mode applies it. Check mode and the diff come from that same prediction.

"Already at" a snapshot (``state=current``) means: libvirt's current snapshot of the guest is that
snapshot *and* the guest's power state is the one the revert would leave (``state_after``, or the
state the snapshot recorded). Disk writes made after a revert are not detected.

Deleting an external snapshot is libvirt's job: libvirt merges the overlay back (block commit and
pivot) when the snapshot is the active layer, and refuses what it cannot merge; that refusal is
returned with libvirt's text.
"""

from __future__ import annotations

import re

from ansible_collections.virtops.kvm.plugins.module_utils._domain_state import ACTIVE_STATES, state_of
from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import (
    VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC,
    VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY,
    VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE,
    VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN,
    VIR_DOMAIN_SNAPSHOT_REVERT_FORCE,
    VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED,
    VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING,
    VIR_DOMAIN_XML_INACTIVE,
    translated,
)
from ansible_collections.virtops.kvm.plugins.module_utils._xml import etree, parse_xml, to_string

_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/]")
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


def check_name(name, what="snapshot name"):
    if not name or _BAD_NAME.search(name) or name != name.strip():
        raise ValidationError("invalid %s %r: it must be non-empty, without control characters, '/' or surrounding spaces" % (what, name))


def kind_of(root):
    """``external`` when the memory or any disk of a snapshot's XML is external, else ``internal``."""
    memory = root.find("memory")
    if memory is not None and memory.get("snapshot") == "external":
        return "external"
    if any(disk.get("snapshot") == "external" for disk in root.iterfind("disks/disk")):
        return "external"
    return "internal"


def describe(snap, current_name):
    """One snapshot as the module returns it."""
    with translated("cannot read snapshot %s" % snap.getName()):
        root = parse_xml(snap.getXMLDesc(0), "snapshot XML")
    parent = root.findtext("parent/name")
    created = root.findtext("creationTime")
    return dict(
        name=root.findtext("name"),
        parent=parent,
        creation_time=int(created) if created else None,
        state=root.findtext("state"),
        kind=kind_of(root),
        description=root.findtext("description"),
        current=root.findtext("name") == current_name,
    )


def current_name_of(dom):
    with translated("cannot read the current snapshot of guest %s" % dom.name()):
        if not dom.hasCurrentSnapshot(0):
            return None
        return dom.snapshotCurrent(0).getName()


def list_snapshots(dom):
    """The guest's snapshots, sorted by creation time then name."""
    current = current_name_of(dom)
    with translated("cannot list the snapshots of guest %s" % dom.name()):
        snaps = dom.listAllSnapshots(0)
    listed = [describe(snap, current) for snap in snaps]
    return sorted(listed, key=lambda item: (item["creation_time"] or 0, item["name"]))


def subtree(listed, name):
    """``name`` and every snapshot below it."""
    names, frontier = {name}, [name]
    while frontier:
        parent = frontier.pop()
        for item in listed:
            if item["parent"] == parent and item["name"] not in names:
                names.add(item["name"])
                frontier.append(item["name"])
    return names


def has_guest_agent(dom):
    with translated("cannot read guest %s" % dom.name()):
        root = parse_xml(dom.XMLDesc(0), "domain XML")
    return any(target.get("name") == GUEST_AGENT_CHANNEL for target in root.iterfind("devices/channel/target"))


def disk_targets(dom):
    with translated("cannot read guest %s" % dom.name()):
        root = parse_xml(dom.XMLDesc(VIR_DOMAIN_XML_INACTIVE), "domain XML")
    return [disk.get("dev") for disk in root.iterfind("devices/disk/target") if disk.getparent().get("device", "disk") == "disk"]


def snapshot_xml(params, dom, active):
    """The ``<domainsnapshot>`` to create, and its creation flags."""
    kind = params.get("kind") or "internal"
    root = etree.Element("domainsnapshot")
    etree.SubElement(root, "name").text = params["name"]
    if params.get("description"):
        etree.SubElement(root, "description").text = params["description"]
    flags = VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    memory_file = params.get("memory_file")
    if kind == "external":
        if memory_file:
            if not active:
                raise ValidationError("an external snapshot with memory (memory_file) needs a running guest; %s is shut off" % dom.name())
            etree.SubElement(root, "memory", snapshot="external", file=memory_file)
        else:
            flags |= VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    elif memory_file:
        raise ValidationError("memory_file is for kind=external; an internal snapshot keeps the memory inside the qcow2 disk")
    known = disk_targets(dom)
    disks = params.get("disks") or []
    if disks:
        listed = etree.SubElement(root, "disks")
        for disk in disks:
            if disk["name"] not in known:
                raise ValidationError("guest %s has no disk %r (its disks: %s)" % (dom.name(), disk["name"], ", ".join(known) or "none"))
            mode = disk.get("snapshot") or ("external" if kind == "external" else "internal")
            if kind == "internal" and mode == "external":
                raise ValidationError("disk %s: an internal snapshot cannot take an external disk snapshot; use kind=external" % disk["name"])
            element = etree.SubElement(listed, "disk", name=disk["name"], snapshot=mode)
            if disk.get("file"):
                if mode != "external":
                    raise ValidationError("disk %s: file is the overlay of an external disk snapshot" % disk["name"])
                etree.SubElement(element, "source", file=disk["file"])
    if params.get("quiesce"):
        if not has_guest_agent(dom):
            raise ValidationError("quiesce needs the QEMU guest agent, and guest %s has no %s channel" % (dom.name(), GUEST_AGENT_CHANNEL))
        flags |= VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
    return to_string(root), flags


def revert_flags(params, snap_state):
    after = params.get("state_after")
    flags = VIR_DOMAIN_SNAPSHOT_REVERT_FORCE if params.get("force") else 0
    if after == "running":
        flags |= VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
    elif after == "paused":
        flags |= VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
    expected = after or ("running" if snap_state in ("running", "disk-snapshot") else snap_state)
    return flags, expected


def _predict(before, action, params, guest_state):
    name = params["name"]
    current = next((item["name"] for item in before if item["current"]), None)
    if action == "created":
        disk_only = params.get("kind") == "external" and not params.get("memory_file")
        entry = dict(
            name=name, parent=current, creation_time=None, state="disk-snapshot" if disk_only else guest_state,
            kind=params.get("kind") or "internal", description=params.get("description"), current=True,
        )  # fmt: skip
        return [dict(item, current=False) for item in before] + [entry]
    if action == "reverted":
        return [dict(item, current=item["name"] == name) for item in before]
    if action == "deleted":
        gone = subtree(before, name) if params.get("children") else {name}
        target = next(item for item in before if item["name"] == name)
        after = []
        for item in before:
            if item["name"] in gone:
                continue
            moved = dict(item)
            if moved["parent"] in gone:  # libvirt re-parents the children of a deleted snapshot
                moved["parent"] = target["parent"]
            if current in gone:  # libvirt makes the deleted subtree's parent current
                moved["current"] = moved["name"] == target["parent"]
            after.append(moved)
        return after
    return [dict(item) for item in before]


def _plan(before, params, dom, guest_state):
    name, state = params["name"], params.get("state") or "present"
    existing = next((item for item in before if item["name"] == name), None)
    if state == "present":
        return "none" if existing else "created"
    if state == "absent":
        return "deleted" if existing else "none"
    if existing is None:
        known = ", ".join(item["name"] for item in before) or "none"
        raise ValidationError("guest %s has no snapshot %r to revert to (its snapshots: %s)" % (dom.name(), name, known))
    if existing["kind"] == "external" and not params.get("force"):
        raise ValidationError("reverting to external snapshot %r is refused without force=true (libvirt discards the overlays written since)" % name)
    _flags, expected = revert_flags(params, existing["state"])
    already = existing["current"] and guest_state == expected
    return "none" if already else "reverted"


def ensure_domain_snapshot(backends, params, check_mode):
    """Create, revert to or delete one snapshot of one guest; returns the module result."""
    check_name(params["name"])
    client = backends.libvirt
    dom = client.lookup_domain(params["domain"])
    if dom is None:
        raise ValidationError("guest %r does not exist" % params["domain"])
    guest_state = state_of(dom)[0]
    before = list_snapshots(dom)
    action = _plan(before, params, dom, guest_state)
    xml = flags = None
    if action == "created":
        xml, flags = snapshot_xml(params, dom, guest_state in ACTIVE_STATES)
    predicted = _predict(before, action, params, guest_state)
    changed = action != "none"
    if changed and not check_mode:
        _apply(client, dom, action, params, create=(xml, flags), before=before)
        after = list_snapshots(dom)
    else:
        after = predicted
    header = "%s snapshots" % dom.name()
    return dict(
        changed=changed,
        action=action,
        snapshots=after,
        diff=dict(before=_diff_text(before), after=_diff_text(after), before_header=header, after_header=header),
    )


def _apply(client, dom, action, params, *, create, before):
    name = params["name"]
    xml, flags = create
    if action == "created":
        client.call("cannot create snapshot %s of guest %s" % (name, dom.name()), dom.snapshotCreateXML, xml, flags)
        return
    snap = client.call("cannot look up snapshot %s" % name, dom.snapshotLookupByName, name, 0)
    if action == "reverted":
        existing = next(item for item in before if item["name"] == name)
        rflags, _expected = revert_flags(params, existing["state"])
        client.call("cannot revert guest %s to snapshot %s" % (dom.name(), name), dom.revertToSnapshot, snap, rflags)
    else:
        dflags = VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN if params.get("children") else 0
        client.call("cannot delete snapshot %s of guest %s" % (name, dom.name()), snap.delete, dflags)


def _diff_text(listed):
    lines = []
    for item in listed:
        lines.append("%s%s parent=%s kind=%s state=%s" % ("* " if item["current"] else "  ", item["name"], item["parent"] or "-", item["kind"], item["state"]))
    return "\n".join(lines) + ("\n" if lines else "")


def snapshots_section(dom):
    """The read-only list ``domain_info`` returns under ``snapshots``."""
    return list_snapshots(dom)
