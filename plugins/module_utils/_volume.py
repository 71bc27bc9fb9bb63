# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt storage volumes: create (empty, clone, backing-store overlay, upload), resize, encrypt, delete.

The volume XML is generated from the options; an existing volume is compared by its capacity,
format, backing store and encryption. The source options (clone, overlay, upload) are used only
when the volume is created. Uploads go through libvirt's stream API (``virStorageVolUpload``),
chunk by chunk, hashing as they go; a checksum mismatch aborts the stream and deletes the volume.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct

from ansible.module_utils.urls import open_url

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import connect
from ansible_collections.virtops.kvm.plugins.module_utils._secret import resolve_secret
from ansible_collections.virtops.kvm.plugins.module_utils._xml import etree, parse_xml, to_bytes, to_string

FORMATS = ("qcow2", "raw")
ENCRYPTIONS = ("none", "luks")
SOURCES = ("clone_from", "backing_store", "upload_from")

# Stable libvirt numbers (virStorageVolResizeFlags, virSecretUsageType).
RESIZE_SHRINK = 4
SIZE_RE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")
# QEMU 7.2's LUKS key-derivation benchmark sometimes fails on a busy host; libvirt then removes the
# half-made volume, so creating it again is safe.
LUKS_FLAKE = "Unable to get accurate CPU usage"
LUKS_ATTEMPTS = 3
QCOW2_MAGIC = b"QFI\xfb"
CHUNK = 1024 * 1024
SECTOR = 512


# ---------------------------------------------------------------------------- reading volumes

def volume_facts(client, pool, vol):
    """Path, capacity, allocation, format, backing store and encryption of ``vol``."""
    root = parse_xml(client.call("cannot read volume %s" % vol.name(), vol.XMLDesc, 0), "volume")
    info = client.call("cannot read volume info", vol.info)
    backing = root.find("backingStore")
    encryption = root.find("target/encryption")
    return dict(
        name=vol.name(),
        pool=pool.name(),
        key=vol.key(),
        path=vol.path(),
        capacity=info[1],
        allocation=info[2],
        format=root.find("target/format").get("type") if root.find("target/format") is not None else None,
        backing_store=dict(path=backing.findtext("path"), format=backing.find("format").get("type") if backing.find("format") is not None else None)
        if backing is not None and backing.findtext("path") else None,
        encryption=encryption.get("format") if encryption is not None else "none",
    )


def _summary(facts):
    if not facts:
        return "state: absent\n"
    lines = ["state: present"]
    for key in ("path", "capacity", "format", "encryption"):
        lines.append("%s: %s" % (key, facts.get(key)))
    backing = facts.get("backing_store")
    lines.append("backing_store: %s" % (backing["path"] if backing else None))
    return "\n".join(lines) + "\n"


def probe_format(head):
    """qcow2 when the first bytes carry qcow2's magic, else raw."""
    return "qcow2" if head[:4] == QCOW2_MAGIC else "raw"


def qcow2_virtual_size(head):
    """The virtual size recorded in a qcow2 header (bytes 24..31), or None."""
    if head[:4] != QCOW2_MAGIC or len(head) < 32:
        return None
    return struct.unpack(">Q", head[24:32])[0]


def _find_source_volume(client, pool, ref, what):
    """A volume named ``ref`` in ``pool``, or the volume at path ``ref`` in any pool. None for a plain file."""
    if ref.startswith("/"):
        return client.lookup_volume_by_path(ref)
    vol = client.lookup_volume(pool, ref)
    if vol is None:
        raise ValidationError("%s %r is not a volume of pool %s; give a volume name in that pool or an absolute path" % (what, ref, pool.name()))
    return vol


def parse_size(value, what="capacity"):
    """A size given as bytes or as an integer with a libvirt unit (``10GiB``, ``512M``, ``1GB``) in bytes."""
    match = SIZE_RE.match(str(value))
    if not match:
        raise ValidationError("%s %r is not a size: use an integer with an optional unit (bytes, KiB, MiB, GiB, TiB, KB, MB, GB...)" % (what, value))
    return to_bytes(match.group(1), match.group(2) or None, "bytes")


def _wanted_capacity(params):
    if params.get("capacity") in (None, ""):
        return None
    return parse_size(params["capacity"])


def _same_capacity(have, want):
    """qemu-img rounds sizes up to whole sectors; a request within one sector is already met."""
    return have >= want and have - want < SECTOR


def volume_xml(name, capacity, fmt, backing=None, secret_uuid=None):
    """The XML libvirt creates the volume from."""
    root = etree.Element("volume")
    etree.SubElement(root, "name").text = name
    cap = etree.SubElement(root, "capacity", unit="bytes")
    cap.text = str(capacity)
    if fmt == "qcow2" or backing is None:
        etree.SubElement(root, "allocation", unit="bytes").text = "0"
    target = etree.SubElement(root, "target")
    etree.SubElement(target, "format", type=fmt)
    if fmt == "qcow2":
        etree.SubElement(target, "compat").text = "1.1"  # libvirt otherwise asks 0.10, which LUKS-in-qcow2 cannot use
    if secret_uuid:
        enc = etree.SubElement(target, "encryption", format="luks")
        etree.SubElement(enc, "secret", type="passphrase", uuid=secret_uuid)
    if backing is not None:
        store = etree.SubElement(root, "backingStore")
        etree.SubElement(store, "path").text = backing["path"]
        etree.SubElement(store, "format", type=backing["format"])
    return to_string(root)


# ---------------------------------------------------------------------------- planning

def _lookup_pool(client, params):
    pool = client.lookup_pool(params["pool"])
    if pool is None:
        if params["state"] == "absent":
            return None
        raise ValidationError("pool %s does not exist; define it first (virtops.kvm.pool) or fix the pool name" % params["pool"])
    if not pool.isActive():
        raise ValidationError("pool %s is not active, so its volumes cannot be read; start it (virtops.kvm.pool state=active)" % params["pool"])
    client.call("cannot refresh pool %s" % params["pool"], pool.refresh, 0)
    return pool


def _validate(params):
    sources = [key for key in SOURCES if params.get(key)]
    if len(sources) > 1:
        raise ValidationError("only one of %s may be given, got %s" % (", ".join(SOURCES), ", ".join(sources)))
    if params.get("checksum") and not params.get("upload_from"):
        raise ValidationError("checksum applies to upload_from only")
    encrypted = params.get("encryption") == "luks"
    if encrypted and not params.get("secret"):
        raise ValidationError("encryption=luks needs secret (the uuid or usage id of a libvirt passphrase secret)")
    if encrypted and sources:
        raise ValidationError("encryption=luks creates a new empty encrypted volume; it cannot be combined with %s" % sources[0])
    if params.get("backing_store") and params.get("format") not in (None, "qcow2"):
        raise ValidationError("a backing_store overlay is a qcow2 volume; format=%s cannot have a backing store" % params["format"])
    return sources[0] if sources else None


def _plan_create(client, pool, params, source):
    """Steps and the XML for a volume that does not exist yet."""
    capacity = _wanted_capacity(params)
    fmt = params.get("format")
    plan = dict(action="create", source=source, capacity=capacity)
    if source is None:
        if capacity is None:
            raise ValidationError("volume %s does not exist: capacity is needed to create it (e.g. capacity: 10GiB)" % params["name"])
        secret_uuid = resolve_secret(client, params["secret"]).UUIDString() if params.get("encryption") == "luks" else None
        plan["xml"] = volume_xml(params["name"], capacity, fmt or "qcow2", secret_uuid=secret_uuid)
        plan["after"] = dict(path=None, capacity=capacity, format=fmt or "qcow2", encryption=params.get("encryption") or "none", backing_store=None)
    elif source in ("clone_from", "backing_store"):
        ref = params[source]
        base_vol = _find_source_volume(client, pool, ref, source)
        if base_vol is not None:
            base = volume_facts(client, pool, base_vol)
        elif os.path.isfile(ref):
            with open(ref, "rb") as handle:
                head = handle.read(64)
            base = dict(path=ref, format=probe_format(head), capacity=qcow2_virtual_size(head) or os.path.getsize(ref))
        else:
            raise ValidationError("%s %s does not exist" % (source, ref))
        if capacity is not None and capacity < base["capacity"]:
            raise ValidationError("capacity %s is smaller than %s %s (%s bytes); a new volume cannot start smaller than its source"
                                  % (params["capacity"], source, ref, base["capacity"]))
        want = capacity if capacity is not None else base["capacity"]
        if source == "backing_store":
            backing = dict(path=base["path"], format=base["format"])
            plan["xml"] = volume_xml(params["name"], want, "qcow2", backing=backing)
            plan["after"] = dict(path=None, capacity=want, format="qcow2", encryption="none", backing_store=backing)
        else:
            if base_vol is None:
                raise ValidationError("clone_from %s is not a libvirt volume; clone from a volume, or use upload_from for a plain file" % ref)
            plan["xml"] = volume_xml(params["name"], base["capacity"], fmt or base["format"])
            plan["clone_of"] = base_vol
            plan["after"] = dict(path=None, capacity=want, format=fmt or base["format"], encryption="none", backing_store=None)
        plan["capacity"] = want
    else:
        ref = params["upload_from"]
        if "://" not in ref and not os.path.isfile(ref):
            raise ValidationError("upload_from %s does not exist (a local file on the hypervisor or an http(s)/ftp URL)" % ref)
        plan["after"] = dict(path=None, capacity=capacity, format=fmt, encryption="none", backing_store=None)
    return plan


def plan_volume(client, params):
    """Returns (pool, vol, plan). ``plan['steps']`` is empty when nothing has to change."""
    source = _validate(params)
    pool = _lookup_pool(client, params)
    vol = client.lookup_volume(pool, params["name"]) if pool is not None else None
    before = volume_facts(client, pool, vol) if vol is not None else {}
    plan = dict(steps=[], before=before, after=dict(before))
    if params["state"] == "absent":
        if vol is not None:
            plan["steps"] = (["wipe"] if params.get("wipe") else []) + ["delete"]
            plan["after"] = {}
        return pool, vol, plan
    if vol is None:
        plan.update(_plan_create(client, pool, params, source))
        plan["steps"] = ["create"] if source != "upload_from" else ["upload"]
        return pool, vol, plan
    # Existing volume: what cannot change in place is an error, capacity is resized.
    if params.get("format") and params["format"] != before["format"]:
        raise ValidationError("volume %s exists with format %s, asked for %s; a volume's format cannot change in place: "
                              "remove it (state=absent) or convert it with virtops.kvm.qemu_img" % (params["name"], before["format"], params["format"]))
    want_enc = params.get("encryption")
    if want_enc and want_enc != before["encryption"]:
        raise ValidationError("volume %s exists with encryption %s, asked for %s; encryption is chosen when a volume is created"
                              % (params["name"], before["encryption"], want_enc))
    if params.get("backing_store"):
        want_backing = params["backing_store"]
        have_backing = (before.get("backing_store") or {}).get("path")
        base_vol = _find_source_volume(client, pool, want_backing, "backing_store") if not want_backing.startswith("/") else None
        want_path = base_vol.path() if base_vol is not None else want_backing
        if have_backing != want_path:
            raise ValidationError("volume %s exists with backing store %s, asked for %s; the backing store is chosen when a volume is created"
                                  % (params["name"], have_backing, want_path))
    capacity = _wanted_capacity(params)
    if capacity is not None and not _same_capacity(before["capacity"], capacity):
        if capacity < before["capacity"] and not params.get("allow_shrink"):
            raise ValidationError("volume %s has %d bytes, asked for %d: shrinking loses the data past the new end; "
                                  "set allow_shrink=true if that is intended" % (params["name"], before["capacity"], capacity))
        plan["steps"] = ["resize"]
        plan["capacity"] = capacity
        plan["after"]["capacity"] = capacity
    return pool, vol, plan


# ---------------------------------------------------------------------------- acting

def _open_source(module, ref):
    """A readable binary file object for a local path or a URL."""
    if "://" not in ref:
        return open(ref, "rb")
    try:
        return open_url(ref, timeout=module.params.get("timeout") or 30, validate_certs=module.params.get("validate_certs", True))
    except Exception as exc:  # urllib errors, socket errors
        raise ValidationError("cannot download upload_from %s: %s" % (ref, exc)) from exc


def _parse_checksum(text):
    if not text:
        return None, None
    algo, _sep, digest = text.rpartition(":")
    algo = (algo or "sha256").lower()
    if algo not in hashlib.algorithms_available:
        raise ValidationError("checksum algorithm %s is not available; use e.g. sha256:<hex>" % algo)
    return algo, digest.strip().lower()


def _send_all(stream, data):
    view = memoryview(data)
    while view:
        sent = stream.send(bytes(view))
        if sent is None or sent < 0:
            raise LibvirtError("the libvirt stream refused data")
        view = view[sent:]


def _upload(module, client, pool, params, plan):
    """Create the volume and stream the source into it; a checksum mismatch deletes it again."""
    algo, want_digest = _parse_checksum(params.get("checksum"))
    hasher = hashlib.new(algo or "sha256")
    ref = params["upload_from"]
    source = _open_source(module, ref)
    vol = None
    stream = None
    try:
        head = source.read(CHUNK)
        fmt = params.get("format") or probe_format(head)
        capacity = plan["capacity"] or (qcow2_virtual_size(head) if fmt == "qcow2" else None)
        if capacity is None:
            length = os.path.getsize(ref) if "://" not in ref else int(getattr(source, "headers", {}).get("Content-Length") or 0)
            capacity = length
        xml = volume_xml(params["name"], capacity, fmt)
        vol = client.call("cannot create volume %s in pool %s" % (params["name"], params["pool"]), pool.createXML, xml, 0)
        stream = client.call("cannot open a libvirt stream", client.conn.newStream, 0)
        client.call("cannot start uploading into volume %s" % params["name"], vol.upload, stream, 0, 0, 0)
        chunk = head
        while chunk:
            hasher.update(chunk)
            client.call("cannot upload into volume %s" % params["name"], _send_all, stream, chunk)
            chunk = source.read(CHUNK)
        if want_digest and hasher.hexdigest() != want_digest:
            client.call("cannot abort the upload", stream.abort)
            stream = None
            raise ValidationError("checksum mismatch for %s: expected %s:%s, got %s; the volume was removed"
                                  % (ref, algo, want_digest, hasher.hexdigest()), expected=want_digest, actual=hasher.hexdigest())
        client.call("cannot finish uploading into volume %s" % params["name"], stream.finish)
        stream = None
    except BaseException:
        if stream is not None:
            try:
                stream.abort()
            except Exception:  # pylint: disable=broad-exception-caught
                pass
        if vol is not None:
            try:
                vol.delete(0)
            except Exception:  # pylint: disable=broad-exception-caught
                pass
        raise
    finally:
        source.close()
    client.call("cannot refresh pool %s" % params["pool"], pool.refresh, 0)
    vol = client.lookup_volume(pool, params["name"])
    wanted = _wanted_capacity(params)
    info = client.call("cannot read volume info", vol.info)
    if wanted is not None and info[1] < wanted and not _same_capacity(info[1], wanted):
        client.call("cannot resize volume %s" % params["name"], vol.resize, wanted, 0)
    return vol, hasher.hexdigest()


def _create(client, pool, xml, action):
    for attempt in range(LUKS_ATTEMPTS):
        try:
            return client.call(action, pool.createXML, xml, 0)
        except LibvirtError as exc:
            if LUKS_FLAKE not in exc.msg or attempt == LUKS_ATTEMPTS - 1:
                raise
    return None  # not reached


def apply_volume(module, client, pool, vol, plan):
    params = module.params
    name = params["name"]
    result = {}
    for step in plan["steps"]:
        if step == "wipe":
            client.call("cannot wipe volume %s" % name, vol.wipe, 0)
        elif step == "delete":
            client.call("cannot delete volume %s" % name, vol.delete, 0)
            vol = None
        elif step == "create":
            if plan.get("clone_of") is not None:
                vol = client.call("cannot clone %s into %s" % (params["clone_from"], name), pool.createXMLFrom, plan["xml"], plan["clone_of"], 0)
            else:
                vol = _create(client, pool, plan["xml"], "cannot create volume %s in pool %s" % (name, params["pool"]))
            info = client.call("cannot read volume info", vol.info)
            if plan["capacity"] is not None and not _same_capacity(info[1], plan["capacity"]):
                client.call("cannot resize volume %s" % name, vol.resize, plan["capacity"], 0)
        elif step == "upload":
            vol, digest = _upload(module, client, pool, params, plan)
            result["checksum"] = digest
        elif step == "resize":
            flags = RESIZE_SHRINK if plan["capacity"] < plan["before"]["capacity"] else 0
            client.call("cannot resize volume %s" % name, vol.resize, plan["capacity"], flags)
    if vol is not None:
        client.call("cannot refresh pool %s" % params["pool"], pool.refresh, 0)
        vol = client.lookup_volume(pool, name)
    return vol, result


def manage_volume(module, client):
    """The whole run: plan, then act unless in check mode. ``module`` gives params, check_mode and _diff."""
    params = module.params
    check_mode = module.check_mode
    pool, vol, plan = plan_volume(client, params)
    changed = bool(plan["steps"])
    result = dict(changed=changed, actions=plan["steps"])
    if changed and not check_mode:
        vol, extra = apply_volume(module, client, pool, vol, plan)
        result.update(extra)
        result["volume"] = volume_facts(client, pool, vol) if vol is not None else {}
    else:
        result["volume"] = plan["before"]
    if module._diff:
        after = result["volume"] if changed and not check_mode else plan["after"]
        result["diff"] = dict(before_header="volume %s/%s" % (params["pool"], params["name"]),
                              after_header="volume %s/%s" % (params["pool"], params["name"]),
                              before=_summary(plan["before"]), after=_summary(after))
    return result


def run_volume(module):
    with connect(module) as client:
        return manage_volume(module, client)
