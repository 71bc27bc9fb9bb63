# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt storage pools: define from XML, build, start/stop, autostart, undefine.

The user's XML is the intent. An existing pool is redefined only when merging the intent into
libvirt's (inactive) definition with the shared XML engine changes it (values compared normalised:
sizes in bytes, numbers as numbers): libvirt adds uuid, capacity, allocation, target permissions and
so on, which the user does not have to repeat. Check mode and diff come from the same plan as the real run.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import connect
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_named_root, parse_xml, three_way_merge, to_string, xml_equal

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
    root = parse_named_root(xml_text, "pool", name)
    if not root.get("type"):
        raise ValidationError("pool xml needs a type attribute, e.g. <pool type='dir'>")
    return root


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
                steps.append("delete")  # stops the pool itself once its volumes are gone
            elif current["state"] == "active":
                steps.append("stop")
            steps.append("undefine")
            after_xml = ""
            after = dict(state="absent", autostart=False)
        return pool, dict(steps=steps, before=current, after=after, before_xml=before_xml, after_xml=after_xml, define_xml=None, warnings=[])

    define_xml = None
    pool_type = parse_xml(before_xml, "pool %s" % name).get("type") if pool is not None else None
    if params.get("xml"):
        intent = prepare_intent(name, params["xml"])
        pool_type = intent.get("type")
        if pool is None:
            define_xml = to_string(intent)
        else:
            # Pools have no <metadata> for a last-applied intent: a two-way merge (what the intent
            # says is enforced, what libvirt added is kept). Unchanged when the intent is contained.
            current_root = parse_xml(before_xml, "pool %s" % name)
            merged = three_way_merge(intent, current_root)
            if not xml_equal(merged, current_root):
                define_xml = to_string(merged)
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
                      pending_restart=pending, type=pool_type, warnings=[])


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
            _delete_storage(client, pool, name, plan["warnings"])
        elif step == "undefine":
            client.call("cannot undefine pool %s" % name, pool.undefine)
            pool = None
    return pool


def _delete_storage(client, pool, name, warnings):
    """delete_on_absent: remove the volumes, then the pool's own storage (directory, volume group...)."""
    if not pool.isActive():
        try:
            client.call("cannot start pool %s to delete its volumes" % name, pool.create, 0)
        except LibvirtError as exc:
            warnings.append("the storage of pool %s could not be reached, so nothing was deleted (%s)" % (name, exc.msg))
            return
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
    if plan["warnings"]:
        result["warnings"] = plan["warnings"]
    if want_diff:
        result["diff"] = [
            dict(before_header="pool %s (XML)" % params["name"], after_header="pool %s (XML)" % params["name"],
                 before=plan["before_xml"], after=plan["after_xml"]),
            dict(before_header="pool %s (state)" % params["name"], after_header="pool %s (state)" % params["name"],
                 before=_state_text(plan["before"]), after=_state_text(plan["after"])),
        ]
    return result


def run_pool(module):
    with connect(module) as client:
        return manage_pool(client, module.params, check_mode=module.check_mode, want_diff=module._diff)
