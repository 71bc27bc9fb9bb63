# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt storage pools: define from XML, build, start/stop, autostart, undefine.

The user's XML is the intent. An existing pool is redefined only when the intent is not already
contained in libvirt's (inactive) definition once both are normalised (units to bytes, modes as
numbers): libvirt adds uuid, capacity, allocation, target permissions and so on, which the user
does not have to repeat. Check mode and diff come from the same plan as the real run.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import connect
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml, to_string

STATES = ("present", "active", "inactive", "absent")

# virStoragePoolBuildFlags / virStoragePoolDeleteFlags / virStorageXMLFlags (stable numbers, so
# this file imports without libvirt).
BUILD_NO_OVERWRITE = 4
# Pool types whose build formats something: only these get BUILD_NO_OVERWRITE.
FORMATTING_TYPES = ("fs", "logical", "disk")
XML_INACTIVE = 1
VIR_ERR_INVALID_ARG = 8


def prepare_intent(name, xml_text):
    """Parse the user's pool XML; its <name> must match ``name`` (added when missing)."""
    root = parse_xml(xml_text, "pool xml")
    if root.tag != "pool":
        raise ValidationError("pool xml must have <pool> as its root element, found <%s>" % root.tag)
    if not root.get("type"):
        raise ValidationError("pool xml needs a type attribute, e.g. <pool type='dir'>")
    name_el = root.find("name")
    if name_el is None:
        name_el = root.makeelement("name", {})
        name_el.text = name
        root.insert(0, name_el)
    elif (name_el.text or "").strip() != name:
        raise ValidationError("pool xml names the pool %r but name is %r; make them the same" % ((name_el.text or "").strip(), name))
    return root


# Attributes holding a size with a sibling ``unit`` attribute, and libvirt's unit names.
_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4, "pb": 1000**5, "eb": 1000**6,
    "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3,
    "t": 1024**4, "tib": 1024**4, "p": 1024**5, "pib": 1024**5, "e": 1024**6, "eib": 1024**6,
}


def to_bytes(value, unit="bytes", what="size"):
    """``value`` with libvirt ``unit`` (or a suffix in the value, e.g. ``10G``, ``512MiB``) in bytes."""
    text = str(value).strip()
    number = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ")
    suffix = text[len(number):].strip() or unit or "bytes"
    try:
        factor = _UNITS[suffix.lower()]
        amount = float(number)
    except (KeyError, ValueError):
        raise ValidationError("%s %r is not a size: use a number with an optional unit (bytes, KiB, MiB, GiB, TiB, KB, MB, GB...)" % (what, value)) from None
    if amount < 0:
        raise ValidationError("%s %r is negative" % (what, value))
    return int(amount * factor)


def _normal_text(tag, text):
    text = (text or "").strip()
    if tag == "mode" and text:
        try:
            return str(int(text, 8))
        except ValueError:
            return text
    return text


def _matches(intent, current):
    if intent.tag != current.tag:
        return False
    want_attrs = dict(intent.attrib)
    have_attrs = dict(current.attrib)
    if "unit" in want_attrs or ((intent.text or "").strip() and intent.tag in ("capacity", "allocation", "available")):
        if to_bytes(intent.text or 0, want_attrs.pop("unit", "bytes")) != to_bytes(current.text or 0, have_attrs.pop("unit", "bytes")):
            return False
    elif _normal_text(intent.tag, intent.text) and _normal_text(intent.tag, intent.text) != _normal_text(current.tag, current.text):
        return False
    for key, value in want_attrs.items():
        if have_attrs.get(key) != value:
            return False
    used = set()
    for child in intent:
        if not isinstance(child.tag, str):
            continue
        for index, candidate in enumerate(current):
            if index not in used and isinstance(candidate.tag, str) and _matches(child, candidate):
                used.add(index)
                break
        else:
            return False
    return True


def xml_contains(intent, current):
    """True when every element, attribute and text of ``intent`` is in ``current`` (sizes and modes normalised).

    Children are matched regardless of order; each element of ``current`` matches at most one of
    ``intent``. What libvirt adds (uuid, sizes, permissions...) does not count as a difference.
    """
    return _matches(intent, current)


def inactive_xml(client, obj, what):
    """``obj.XMLDesc(INACTIVE)``: the persistent definition. Drivers that do not know the flag
    (libvirt's test driver) get a plain XMLDesc."""
    try:
        return client.call("cannot read %s" % what, obj.XMLDesc, XML_INACTIVE)
    except LibvirtError as exc:
        if exc.code != VIR_ERR_INVALID_ARG:
            raise
        return client.call("cannot read %s" % what, obj.XMLDesc, 0)


def _pool_state(pool):
    if pool is None:
        return dict(state="absent", autostart=False)
    return dict(state="active" if pool.isActive() else "inactive", autostart=bool(pool.autostart()))


def plan_pool(client, params):
    """Work out what has to change. Returns (pool, plan) where plan is a dict of steps and diff texts."""
    name = params["name"]
    state = params["state"]
    pool = client.lookup_pool(name)
    current = _pool_state(pool)
    before_xml = inactive_xml(client, pool, "pool %s" % name) if pool is not None else ""
    steps = []
    after_xml = before_xml
    after = dict(current)

    if state == "absent":
        if pool is not None:
            if params["delete_on_absent"]:
                steps.append("delete")
            if current["state"] == "active":
                steps.append("stop")
            steps.append("undefine")
            after_xml = ""
            after = dict(state="absent", autostart=False)
        return pool, dict(steps=steps, before=current, after=after, before_xml=before_xml, after_xml=after_xml, define_xml=None)

    define_xml = None
    pool_type = parse_xml(before_xml, "pool %s" % name).get("type") if pool is not None else None
    if params.get("xml"):
        intent = prepare_intent(name, params["xml"])
        pool_type = intent.get("type")
        if pool is None:
            define_xml = to_string(intent)
        elif not xml_contains(intent, parse_xml(before_xml, "pool %s" % name)):
            current_root = parse_xml(before_xml, "pool %s" % name)
            uuid = current_root.findtext("uuid")
            if intent.find("uuid") is None and uuid:
                uuid_el = intent.makeelement("uuid", {})
                uuid_el.text = uuid
                intent.insert(1, uuid_el)
            define_xml = to_string(intent)
    elif pool is None:
        raise ValidationError("pool %s does not exist and no xml was given to define it; pass xml (e.g. <pool type='dir'>...)" % name)

    if define_xml is not None:
        steps.append("define")
        after_xml = define_xml
        if pool is None:
            after = dict(state="inactive", autostart=False)
            if params["build"]:
                steps.append("build")
    if state == "active" and after["state"] != "active":
        steps.append("start")
        after["state"] = "active"
    elif state == "inactive" and after["state"] == "active":
        steps.append("stop")
        after["state"] = "inactive"
    if params.get("autostart") is not None and params["autostart"] != after["autostart"]:
        steps.append("autostart")
        after["autostart"] = params["autostart"]
    pending = bool(define_xml is not None and pool is not None and current["state"] == "active")
    return pool, dict(steps=steps, before=current, after=after, before_xml=before_xml, after_xml=after_xml, define_xml=define_xml,
                      pending_restart=pending, type=pool_type)


def apply_pool(client, pool, params, plan):
    """Carry out ``plan``; returns the pool object (or None once undefined)."""
    name = params["name"]
    for step in plan["steps"]:
        if step == "define":
            pool = client.call("cannot define pool %s" % name, client.conn.storagePoolDefineXML, plan["define_xml"], 0)
        elif step == "build":
            flags = BUILD_NO_OVERWRITE if plan["type"] in FORMATTING_TYPES else 0
            client.call("cannot build pool %s" % name, pool.build, flags)
        elif step == "start":
            client.call("cannot start pool %s" % name, pool.create, 0)
        elif step == "stop":
            client.call("cannot stop pool %s" % name, pool.destroy)
        elif step == "autostart":
            client.call("cannot set autostart on pool %s" % name, pool.setAutostart, 1 if params["autostart"] else 0)
        elif step == "delete":
            _delete_storage(client, pool, name)
        elif step == "undefine":
            client.call("cannot undefine pool %s" % name, pool.undefine)
            pool = None
    return pool


def _delete_storage(client, pool, name):
    """delete_on_absent: remove the volumes, then the pool's own storage (directory, volume group...)."""
    if not pool.isActive():
        client.call("cannot start pool %s to delete its volumes" % name, pool.create, 0)
    client.call("cannot refresh pool %s" % name, pool.refresh, 0)
    for vol_name in client.call("cannot list volumes of pool %s" % name, pool.listVolumes):
        vol = client.lookup_volume(pool, vol_name)
        if vol is not None:
            client.call("cannot delete volume %s in pool %s" % (vol_name, name), vol.delete, 0)
    client.call("cannot stop pool %s" % name, pool.destroy)
    client.call("cannot delete the storage of pool %s" % name, pool.delete, 0)


def pool_facts(client, pool):
    if pool is None:
        return {}
    info = client.call("cannot read pool info", pool.info)
    root = parse_xml(client.call("cannot read pool XML", pool.XMLDesc, 0), "pool")
    return dict(
        name=pool.name(),
        uuid=pool.UUIDString(),
        type=root.get("type"),
        state="active" if pool.isActive() else "inactive",
        autostart=bool(pool.autostart()),
        persistent=bool(pool.isPersistent()),
        target_path=root.findtext("target/path"),
        capacity=info[1],
        allocation=info[2],
        available=info[3],
    )


def _state_text(state):
    return "state: %s\nautostart: %s\n" % (state["state"], str(state["autostart"]).lower())


def manage_pool(client, params, check_mode=False, want_diff=False):
    """The whole run on an open client: plan, then apply unless in check mode."""
    pool, plan = plan_pool(client, params)
    changed = bool(plan["steps"])
    if changed and not check_mode:
        pool = apply_pool(client, pool, params, plan)
    result = dict(changed=changed, actions=plan["steps"], pending_restart=plan.get("pending_restart", False))
    result["pool"] = pool_facts(client, pool)
    if want_diff:
        result["diff"] = [
            dict(before_header="pool %s (XML)" % params["name"], after_header="pool %s (XML)" % params["name"],
                 before=plan["before_xml"], after=plan["after_xml"]),
            dict(before_header="pool %s (state)" % params["name"], after_header="pool %s (state)" % params["name"],
                 before=_state_text(plan["before"]), after=_state_text(plan["after"])),
        ]
    return result


def run_pool(module):
    client = connect(module)
    try:
        return manage_pool(client, module.params, check_mode=module.check_mode, want_diff=module._diff)
    finally:
        client.close()

