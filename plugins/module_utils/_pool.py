# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""libvirt storage pools: define from XML, build, start/stop, autostart, undefine.

The user's XML is the intent. An existing pool is redefined only when merging the intent into
libvirt's (inactive) definition with the shared XML engine changes it (values compared normalised:
sizes in bytes, numbers as numbers, target paths without a trailing ``/``): libvirt adds uuid,
capacity, allocation, target permissions and so on, which the user does not have to repeat, and
the sizes it reports (``<capacity>``, ``<allocation>``, ``<available>``) are not configuration, so
they are dropped from the intent. Check mode and diff come from the same plan as the real run.

A pool this run defined is undefined again when building or starting it fails, so a rerun starts
from the same place. ``delete_on_absent`` refuses a directory pool whose target is a mount point
before anything is deleted, unless ``delete_mounted`` says the volumes on that file system go too
(the mount point itself is kept).
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError, VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import VIR_STORAGE_XML_INACTIVE, libvirt
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt_objects import inactive_xml, validate_object_name
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_named_root, parse_xml, three_way_merge, to_string, xml_equal

STATES = ("present", "active", "inactive", "absent")
# Pool types whose build formats something: only these get VIR_STORAGE_POOL_BUILD_NO_OVERWRITE.
FORMATTING_TYPES = ("fs", "logical", "disk")
# What libvirt reports about a pool, never configures.
RUNTIME_ELEMENTS = ("capacity", "allocation", "available")


def _strip_slash(text):
    return (text.rstrip("/") or "/") if text else text


def prepare_intent(name, xml_text, warnings=None):
    """Parse the user's pool XML; its <name> must match ``name`` (added when missing). Normalised:
    the target path without a trailing '/' (libvirt stores it so), libvirt's reported sizes dropped (with a warning)."""
    root = parse_named_root(xml_text, "pool", name)
    if not root.get("type"):
        raise ValidationError("pool xml needs a type attribute, e.g. <pool type='dir'>")
    for tag in RUNTIME_ELEMENTS:
        for element in root.findall(tag):
            root.remove(element)
            if warnings is not None:
                warnings.append("pool %s: <%s> is what libvirt reports about the pool, not configuration; it was ignored" % (name, tag))
    path = root.find("target/path")
    if path is not None and path.text:
        path.text = _strip_slash(path.text.strip())
    return root


def _pool_state(pool):
    if pool is None:
        return dict(state="absent", autostart=False)
    return dict(state="active" if pool.isActive() else "inactive", autostart=bool(pool.autostart()))


def _new_plan(pool, current, before_xml):
    return dict(
        pool=pool,
        steps=[],
        before=current,
        after=dict(current),
        before_xml=before_xml,
        after_xml=before_xml,
        define_xml=None,
        pending_restart=False,
        type=None,
        warnings=[],
        defines_new=False,
    )


def _plan_absent(backends, params, plan):
    pool, current = plan["pool"], plan["before"]
    if pool is None:
        return plan
    if params["delete_on_absent"]:
        _check_mount_point(backends, params, plan)
        plan["steps"].append("delete")  # stops the pool itself once its volumes are gone
    elif current["state"] == "active":
        plan["steps"].append("stop")
    plan["steps"].append("undefine")
    plan["after_xml"] = ""
    plan["after"] = dict(state="absent", autostart=False)
    return plan


def _check_mount_point(backends, params, plan):
    """delete_on_absent on a dir pool whose directory is a mount point: refuse before deleting anything."""
    root = parse_xml(plan["before_xml"], "pool %s" % params["name"])
    path = root.findtext("target/path")
    plan["keep_directory"] = False
    if root.get("type") != "dir" or not path:
        return
    if not backends.host_local:
        plan["warnings"].append("pool %s is not on this machine, so whether %s is a mount point could not be checked" % (params["name"], path))
        return
    if os.path.ismount(path):
        if not params.get("delete_mounted"):
            raise ValidationError(
                "pool %s: its directory %s is a mount point; delete_on_absent would delete every volume on that file system and then fail "
                "to remove the mount point. Nothing was deleted. Set delete_mounted=true to delete the volumes (the mount point is kept), "
                "or remove the pool without delete_on_absent" % (params["name"], path)
            )
        plan["keep_directory"] = True


def _plan_definition(client, params, plan):
    name = params["name"]
    pool = plan["pool"]
    if params.get("xml"):
        intent = prepare_intent(name, params["xml"], plan["warnings"])
        plan["type"] = intent.get("type")
        if pool is None:
            plan["define_xml"] = to_string(intent)
        else:
            # Pools have no <metadata> for a last-applied intent: a two-way merge (what the intent
            # says is enforced, what libvirt added is kept). Unchanged when the intent is contained.
            current_root = parse_xml(plan["before_xml"], "pool %s" % name)
            merged = three_way_merge(intent, current_root)
            if not xml_equal(merged, current_root):
                plan["define_xml"] = to_string(merged)
    elif pool is None:
        raise ValidationError("pool %s does not exist and no xml was given to define it; pass xml (e.g. <pool type='dir'>...)" % name)
    else:
        plan["type"] = parse_xml(plan["before_xml"], "pool %s" % name).get("type")
    if plan["define_xml"] is not None:
        plan["steps"].append("define")
        plan["after_xml"] = plan["define_xml"]
        if pool is None:
            plan["defines_new"] = True
            plan["after"] = dict(state="inactive", autostart=False)
            if params["build"]:
                plan["steps"].append("build")
        elif plan["before"]["state"] == "active":
            plan["pending_restart"] = True


def plan_pool(backends, params):
    """Work out what has to change, validating everything first. Returns the plan."""
    client = backends.libvirt
    name = validate_object_name(params["name"], "pool")
    pool = client.lookup_pool(name)
    current = _pool_state(pool)
    before_xml = inactive_xml(client, pool, "pool %s" % name, VIR_STORAGE_XML_INACTIVE) if pool is not None else ""
    plan = _new_plan(pool, current, before_xml)
    if params["state"] == "absent":
        return _plan_absent(backends, params, plan)
    _plan_definition(client, params, plan)
    after = plan["after"]
    if params["state"] == "active" and after["state"] != "active":
        plan["steps"].append("start")
        after["state"] = "active"
    elif params["state"] == "inactive" and after["state"] == "active":
        plan["steps"].append("stop")
        after["state"] = "inactive"
    if params.get("autostart") is not None and params["autostart"] != after["autostart"]:
        plan["steps"].append("autostart")
        after["autostart"] = params["autostart"]
    return plan


def _apply_step(client, pool, params, plan, step):
    name = params["name"]
    if step == "define":
        return client.call("cannot define pool %s" % name, client.conn.storagePoolDefineXML, plan["define_xml"], 0)
    if step == "build":
        flags = libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE if plan["type"] in FORMATTING_TYPES else 0
        client.call("cannot build pool %s" % name, pool.build, flags)
    elif step == "start":
        client.call("cannot start pool %s" % name, pool.create, 0)
    elif step == "stop":
        client.call("cannot stop pool %s" % name, pool.destroy)
    elif step == "autostart":
        client.call("cannot set autostart on pool %s" % name, pool.setAutostart, 1 if params["autostart"] else 0)
    elif step == "delete":
        _delete_storage(client, pool, name, plan)
    elif step == "undefine":
        client.call("cannot undefine pool %s" % name, pool.undefine)
        return None
    return pool


def apply_pool(client, params, plan):
    """Carry out ``plan``; returns the pool object (or None once undefined).

    When a step after defining a new pool fails, the pool is stopped and undefined again.
    """
    pool = plan["pool"]
    for step in plan["steps"]:
        try:
            pool = _apply_step(client, pool, params, plan, step)
        except VirtopsError as exc:
            if plan["defines_new"] and pool is not None and step != "define":
                exc.msg = "%s; %s" % (exc.msg, _undo_define(pool, params["name"]))
                exc.args = (exc.msg,)
            raise
    return pool


def _undo_define(pool, name):
    try:
        if pool.isActive():
            pool.destroy()
        pool.undefine()
    except Exception as exc:  # pylint: disable=broad-exception-caught  # the step's own error is the one to report
        return "undefining the pool this run defined failed too (%s): pool %s is left defined" % (exc, name)
    return "pool %s, which this run defined, was undefined again" % name


def _delete_storage(client, pool, name, plan):
    """delete_on_absent: remove the volumes, then the pool's own storage (directory, volume group...)."""
    if not pool.isActive():
        try:
            client.call("cannot start pool %s to delete its volumes" % name, pool.create, 0)
        except LibvirtError as exc:
            plan["warnings"].append("the storage of pool %s could not be reached, so nothing was deleted (%s)" % (name, exc.msg))
            return
    client.call("cannot refresh pool %s" % name, pool.refresh, 0)
    for vol_name in client.call("cannot list volumes of pool %s" % name, pool.listVolumes):
        vol = client.lookup_volume(pool, vol_name)
        if vol is not None:
            client.call("cannot delete volume %s in pool %s" % (vol_name, name), vol.delete, 0)
    client.call("cannot stop pool %s" % name, pool.destroy)
    if plan.get("keep_directory"):
        plan["warnings"].append("pool %s: its volumes were deleted; its directory is a mount point and was kept" % name)
        return
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


def _diff(name, plan):
    return [
        dict(before_header="pool %s (XML)" % name, after_header="pool %s (XML)" % name, before=plan["before_xml"], after=plan["after_xml"]),
        dict(
            before_header="pool %s (state)" % name, after_header="pool %s (state)" % name, before=_state_text(plan["before"]), after=_state_text(plan["after"])
        ),
    ]


def ensure_pool(backends, params, check_mode):
    """The whole run: plan, then apply unless in check mode."""
    client = backends.libvirt
    plan = plan_pool(backends, params)
    changed = bool(plan["steps"])
    pool = plan["pool"]
    if changed and not check_mode:
        pool = apply_pool(client, params, plan)
    result = dict(changed=changed, actions=plan["steps"], pending_restart=plan["pending_restart"], pool=pool_facts(client, pool), warnings=plan["warnings"])
    if changed:
        result["diff"] = _diff(params["name"], plan)
    return result
