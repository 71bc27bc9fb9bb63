# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""libvirt storage volumes: create (empty, clone, backing-store overlay, upload), resize, encrypt, delete.

The volume XML is generated from the options; an existing volume is compared by its capacity,
format, backing store and encryption. The source options (clone, overlay, upload) are used only
when the volume is created. Everything is validated while planning (sizes through the one size
parser, checksums through :mod:`._checksum`, paths and names), so check mode fails where the real
run would.

Uploads go through libvirt's stream API (``virStorageVolUpload``), chunk by chunk, hashing as they
go; then the volume is read back (``virStorageVolDownload``) and hashed again, because libvirt 9.0's
stream does not report ENOSPC on a sparse target: a volume on a full file system holds zeros where
the data should be. A checksum mismatch, a read-back that differs, or any failure after the volume
was created deletes the new volume again, so nothing half-made is left and a rerun converges.

An upload can also be cut off where nothing can delete the volume (libvirtd killed, the module
killed): a marker volume ``<name>.virtops-incomplete`` is created in the same pool before the upload
and deleted only after the read-back, so a later run that finds the marker knows the volume is the
remainder of an interrupted upload and uploads it again instead of taking it as converged.
"""

from __future__ import annotations

import os
import struct

from ansible.module_utils.urls import open_url

from ansible_collections.virtops.kvm.plugins.module_utils._batch import run_entries
from ansible_collections.virtops.kvm.plugins.module_utils._checksum import Hasher, hash_volume, parse_checksum
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, LibvirtError, ValidationError, VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import validate_path
from ansible_collections.virtops.kvm.plugins.module_utils._image import LUKS_BENCHMARK_FLAKE, retry_luks_benchmark
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import libvirt
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt_objects import resolve_secret, validate_object_name
from ansible_collections.virtops.kvm.plugins.module_utils._units import MAX_BYTES, format_size, parse_size
from ansible_collections.virtops.kvm.plugins.module_utils._xml import etree, parse_xml, to_string

FORMATS = ("qcow2", "raw")
ENCRYPTIONS = ("none", "luks")
SOURCES = ("clone_from", "backing_store", "upload_from")

QCOW2_MAGIC = b"QFI\xfb"
CHUNK = 1024 * 1024
SECTOR = 512
# libvirt asks qemu-img for sizes in KiB (rounded up): a request within 1 KiB below what a volume has is met.
GRANULARITY = 1024
# qcow2's largest virtual size with libvirt's default 64 KiB clusters (32 MiB of L1 table): 2 PiB.
QCOW2_MAX_BYTES = 2**51
# the marker of an upload in progress (see the module docstring)
INCOMPLETE = ".virtops-incomplete"


# ---------------------------------------------------------------------------- reading volumes


def volume_facts(client, pool, vol):
    """Path, capacity, allocation, format, backing store and encryption of ``vol``."""
    root = parse_xml(client.call("cannot read volume %s" % vol.name(), vol.XMLDesc, 0), "volume")
    info = client.call("cannot read volume info", vol.info)
    backing = root.find("backingStore")
    encryption = root.find("target/encryption")
    backing_format = backing.find("format") if backing is not None else None
    return dict(
        name=vol.name(),
        pool=pool.name(),
        key=vol.key(),
        path=vol.path(),
        capacity=info[1],
        allocation=info[2],
        format=root.find("target/format").get("type") if root.find("target/format") is not None else None,
        backing_store=dict(path=backing.findtext("path"), format=backing_format.get("type") if backing_format is not None else None)
        if backing is not None and backing.findtext("path")
        else None,
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
        return client.lookup_volume_by_path(validate_path(ref, what))
    vol = client.lookup_volume(pool, ref)
    if vol is None:
        raise ValidationError("%s %r is not a volume of pool %s; give a volume name in that pool or an absolute path" % (what, ref, pool.name()))
    return vol


def wanted_capacity(params, fmt=None):
    """The requested capacity in bytes (None when not given), within what the format can hold."""
    if params.get("capacity") in (None, ""):
        return None
    maximum = QCOW2_MAX_BYTES if fmt == "qcow2" else MAX_BYTES
    size = parse_size(params["capacity"], "capacity", minimum=SECTOR, maximum=MAX_BYTES)
    if size > maximum:
        raise ValidationError(
            "capacity %r is too large for a %s volume: at most %s (qemu's limit with libvirt's 64 KiB clusters)"
            % (params["capacity"], fmt, format_size(maximum))
        )
    return size


def _same_capacity(have, want):
    """libvirt rounds sizes up to whole KiB; a request within that rounding is already met."""
    return have >= want and have - want < GRANULARITY


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
    client.refresh_pool(pool, params["pool"])
    return pool


def validate_params(params):
    """Checks that need no libvirt; returns (source option or None, expected Checksum or None)."""
    validate_object_name(params.get("name"), "volume")
    sources = [key for key in SOURCES if params.get(key)]
    if len(sources) > 1:
        raise ValidationError("only one of %s may be given, got %s" % (", ".join(SOURCES), ", ".join(sources)))
    if params.get("checksum") is not None and not params.get("upload_from"):
        raise ValidationError("checksum applies to upload_from only")
    checksum = parse_checksum(params.get("checksum"), "checksum")
    encrypted = params.get("encryption") == "luks"
    if encrypted and not params.get("secret"):
        raise ValidationError("encryption=luks needs secret (the uuid or usage id of a libvirt passphrase secret)")
    if encrypted and sources:
        raise ValidationError("encryption=luks creates a new empty encrypted volume; it cannot be combined with %s" % sources[0])
    if params.get("backing_store") and params.get("format") not in (None, "qcow2"):
        raise ValidationError("a backing_store overlay is a qcow2 volume; format=%s cannot have a backing store" % params["format"])
    if params.get("upload_from") and "://" not in params["upload_from"]:
        validate_path(params["upload_from"], "upload_from")
    if params["state"] == "present":
        wanted_capacity(params, params.get("format") or ("qcow2" if not sources or sources[0] == "backing_store" else None))
    return (sources[0] if sources else None), checksum


class _Planned:
    """Stands for a volume an earlier entry of the same task creates (check mode only: nothing exists yet)."""

    def __init__(self, facts):
        self.facts = facts


def _base_facts(client, pool, ref, source, planned=None):
    """(volume or None, facts) of a clone or overlay source; a plain file is read for its format and size.

    ``planned`` maps (pool, name) to the facts of volumes earlier entries of a ``volumes`` task create in
    check mode; a source among them is planned on those facts (its capacity may be unknown: None).
    """
    if planned and not ref.startswith("/") and (pool.name(), ref) in planned and client.lookup_volume(pool, ref) is None:
        facts = planned[(pool.name(), ref)]
        return _Planned(facts), facts
    base_vol = _find_source_volume(client, pool, ref, source)
    if base_vol is not None:
        return base_vol, volume_facts(client, pool, base_vol)
    if not os.path.isfile(ref):
        raise ValidationError("%s %s does not exist" % (source, ref))
    return None, _file_facts(ref)


def _file_facts(ref, fmt=None):
    """Path, format (``fmt``, else probed) and size of a local image file: a qcow2's virtual size, else its length."""
    with open(ref, "rb") as handle:
        head = handle.read(64)
    fmt = fmt or probe_format(head)
    size = qcow2_virtual_size(head) if fmt == "qcow2" else None
    return dict(path=ref, format=fmt, capacity=size or os.path.getsize(ref))


def _plan_from_base(client, pool, params, source, *, capacity, plan, planned=None):
    ref = params[source]
    base_vol, base = _base_facts(client, pool, ref, source, planned)
    if base["capacity"] is None:
        # a base an earlier entry uploads from a URL: its size is known only once it is there
        want = capacity
    elif base["capacity"] < SECTOR:
        raise ValidationError(
            "%s %s holds %d bytes: a disk image holds at least one %d-byte sector, so no volume is made from it" % (source, ref, base["capacity"], SECTOR)
        )
    elif capacity is not None and capacity < base["capacity"]:
        raise ValidationError(
            "capacity %s is smaller than %s %s (%s bytes); a new volume cannot start smaller than its source"
            % (params["capacity"], source, ref, base["capacity"])
        )
    else:
        want = capacity if capacity is not None else base["capacity"]
    fmt = params.get("format")
    # on a planned base (check mode) nothing is created, and its capacity may be unknown: no XML
    make_xml = volume_xml if not isinstance(base_vol, _Planned) else (lambda *args, **kwargs: None)
    if source == "backing_store":
        backing = dict(path=base["path"], format=base["format"])
        plan["xml"] = make_xml(params["name"], want, "qcow2", backing=backing)
        plan["after"] = dict(path=None, capacity=want, format="qcow2", encryption="none", backing_store=backing)
    else:
        if base_vol is None:
            raise ValidationError("clone_from %s is not a libvirt volume; clone from a volume, or use upload_from for a plain file" % ref)
        plan["xml"] = make_xml(params["name"], base["capacity"], fmt or base["format"])
        plan["clone_of"] = base_vol
        plan["after"] = dict(path=None, capacity=want, format=fmt or base["format"], encryption="none", backing_store=None)
    plan["capacity"] = want


def _planned_path(client, pool, name):
    """Where a new volume of a directory-like pool will be (None for other pool types)."""
    root = parse_xml(client.call("cannot read pool %s" % pool.name(), pool.XMLDesc, 0), "pool")
    target = root.findtext("target/path")
    return os.path.join(target, name) if root.get("type") in ("dir", "fs", "netfs") and target else None


def _upload_facts(params):
    """Format and capacity a local upload_from file will give (for a URL, which is not fetched to plan, what was asked)."""
    ref = params["upload_from"]
    if "://" in ref:
        return params.get("format"), wanted_capacity(params, params.get("format"))
    facts = _file_facts(ref, params.get("format"))
    return facts["format"], upload_capacity(params, facts["format"], facts["capacity"])


def upload_capacity(params, fmt, image_size):
    """The capacity of a volume uploaded from an image of ``image_size`` bytes (None: not known).

    The plan and the upload both decide it here, so check mode predicts what the run makes: the
    image's size, or a larger ``capacity``. A smaller one is refused, as for clone_from and
    backing_store: the image would not fit.
    """
    want = wanted_capacity(params, fmt)
    if not image_size:
        return want
    if want is not None and want < image_size and not _same_capacity(want, image_size):
        raise ValidationError(
            "capacity %s is smaller than upload_from %s (%d bytes); a volume cannot start smaller than its image"
            % (params["capacity"], params["upload_from"], image_size)
        )
    return max(want or 0, image_size)


def _plan_create(client, pool, params, source, planned=None):
    """Steps and the XML for a volume that does not exist yet."""
    fmt = params.get("format")
    capacity = wanted_capacity(params, fmt or ("qcow2" if source in (None, "backing_store") else None))
    plan = dict(action="create", source=source, capacity=capacity)
    if source is None:
        if capacity is None:
            raise ValidationError("volume %s does not exist: capacity is needed to create it (e.g. capacity: 10GiB)" % params["name"])
        secret_uuid = resolve_secret(client, params["secret"]).UUIDString() if params.get("encryption") == "luks" else None
        plan["xml"] = volume_xml(params["name"], capacity, fmt or "qcow2", secret_uuid=secret_uuid)
        plan["after"] = dict(path=None, capacity=capacity, format=fmt or "qcow2", encryption=params.get("encryption") or "none", backing_store=None)
    elif source in ("clone_from", "backing_store"):
        _plan_from_base(client, pool, params, source, capacity=capacity, plan=plan, planned=planned)
    else:
        ref = params["upload_from"]
        if "://" not in ref:
            if not os.path.isfile(ref):
                raise ValidationError("upload_from %s does not exist (a local file on the hypervisor or an http(s)/ftp URL)" % ref)
            if os.path.getsize(ref) == 0:
                raise ValidationError("upload_from %s is empty: there is nothing to upload" % ref)
        up_fmt, up_capacity = _upload_facts(params)
        plan["after"] = dict(path=None, capacity=up_capacity, format=up_fmt, encryption="none", backing_store=None)
    plan["after"]["path"] = _planned_path(client, pool, params["name"])
    return plan


def _plan_existing(client, pool, params, before, plan):
    """What cannot change in place is an error; capacity is resized."""
    name = params["name"]
    if params.get("format") and params["format"] != before["format"]:
        raise ValidationError(
            "volume %s exists with format %s, asked for %s; a volume's format cannot change in place: "
            "remove it (state=absent) or convert it with virtops.kvm.qemu_img" % (name, before["format"], params["format"])
        )
    want_enc = params.get("encryption")
    if want_enc and want_enc != before["encryption"]:
        raise ValidationError(
            "volume %s exists with encryption %s, asked for %s; encryption is chosen when a volume is created" % (name, before["encryption"], want_enc)
        )
    if params.get("backing_store"):
        want_backing = params["backing_store"]
        have_backing = (before.get("backing_store") or {}).get("path")
        base_vol = _find_source_volume(client, pool, want_backing, "backing_store") if not want_backing.startswith("/") else None
        want_path = base_vol.path() if base_vol is not None else want_backing
        if have_backing != want_path:
            raise ValidationError(
                "volume %s exists with backing store %s, asked for %s; the backing store is chosen when a volume is created" % (name, have_backing, want_path)
            )
    capacity = wanted_capacity(params, before["format"])
    if capacity is not None and not _same_capacity(before["capacity"], capacity):
        if capacity < before["capacity"] and not params.get("allow_shrink"):
            raise ValidationError(
                "volume %s has %d bytes, asked for %d: shrinking loses the data past the new end; "
                "set allow_shrink=true if that is intended" % (name, before["capacity"], capacity)
            )
        plan["steps"] = ["resize"]
        plan["capacity"] = capacity
        plan["after"]["capacity"] = capacity


def plan_volume(client, params, planned=None):
    """The plan: ``pool``, ``vol``, ``steps`` (empty when nothing has to change), before/after.

    ``planned``: see :func:`_base_facts` (check mode of a ``volumes`` task).
    """
    source, checksum = validate_params(params)
    pool = _lookup_pool(client, params)
    vol = client.lookup_volume(pool, params["name"]) if pool is not None else None
    marker = client.lookup_volume(pool, params["name"] + INCOMPLETE) if pool is not None and not params["name"].endswith(INCOMPLETE) else None
    before = volume_facts(client, pool, vol) if vol is not None else {}
    plan = dict(pool=pool, vol=vol, marker=marker, steps=[], before=before, after=dict(before), checksum=checksum, warnings=[])
    if params["state"] == "absent":
        if vol is not None:
            plan["steps"] = (["wipe"] if params.get("wipe") else []) + ["delete"]
            plan["after"] = {}
        elif marker is not None:
            plan["steps"] = ["delete"]
        return plan
    if vol is not None and marker is not None:
        if source != "upload_from":
            raise ValidationError(
                "volume %s is the remainder of an interrupted upload (volume %s%s marks it): upload it again with upload_from, "
                "or remove it with state=absent" % (params["name"], params["name"], INCOMPLETE)
            )
        plan["warnings"].append("volume %s is the remainder of an interrupted upload: it is deleted and uploaded again" % params["name"])
        plan.update(_plan_create(client, pool, params, source, planned))
        plan["steps"] = ["delete", "upload"]
        return plan
    if vol is None:
        plan.update(_plan_create(client, pool, params, source, planned))
        plan["steps"] = ["create"] if source != "upload_from" else ["upload"]
        return plan
    _plan_existing(client, pool, params, before, plan)
    return plan


# ---------------------------------------------------------------------------- acting


def _open_source(params):
    """A readable binary file object for a local path or a URL."""
    ref = params["upload_from"]
    if "://" not in ref:
        return open(ref, "rb")
    try:
        return open_url(ref, timeout=params.get("timeout") or 30, validate_certs=params.get("validate_certs", True))
    except Exception as exc:  # urllib errors, socket errors
        raise ValidationError("cannot download upload_from %s: %s" % (ref, exc)) from exc


def _send_all(stream, data):
    view = memoryview(data)
    while view:
        sent = stream.send(bytes(view))
        if sent is None or sent < 0:
            raise LibvirtError("the libvirt stream refused data")
        view = view[sent:]


def _remove_new(vol, marker=None):
    """Delete a volume this run created (then its upload marker); returns the note for the error message.

    When the volume cannot be deleted the marker stays, so the next run uploads it again.
    """
    try:
        vol.delete(0)
    except Exception as exc:  # pylint: disable=broad-exception-caught  # the first error is the one to report
        if marker is not None:
            return "removing the new volume failed too (%s): it is marked incomplete, the next run uploads it again" % exc
        return "removing the new volume failed too (%s): delete it before retrying" % exc
    _remove_marker(marker)
    return "the new volume was removed again"


def _with_note(exc, note):
    if note and note not in exc.msg:
        exc.msg = "%s; %s" % (exc.msg, note)
        exc.args = (exc.msg,)
    return exc


def _image_size(params, head, source, fmt):
    """What the upload holds: a qcow2's virtual size, else the file's (or the download's) length."""
    if fmt == "qcow2" and qcow2_virtual_size(head):
        return qcow2_virtual_size(head)
    ref = params["upload_from"]
    length = os.path.getsize(ref) if "://" not in ref else int(getattr(source, "headers", {}).get("Content-Length") or 0)
    if length == 0 and not head:
        raise ValidationError("upload_from %s is empty: there is nothing to upload" % ref)
    return max(length, len(head))


def _stream_into(client, vol, name, source, *, head, hasher):
    """Stream ``head`` and the rest of ``source`` into ``vol``; aborts (and raises) on a checksum mismatch."""
    stream = client.call("cannot open a libvirt stream", client.conn.newStream, 0)
    try:
        client.call("cannot start uploading into volume %s" % name, vol.upload, stream, 0, 0, 0)
        chunk = head
        while chunk:
            hasher.update(chunk)
            client.call("cannot upload into volume %s" % name, _send_all, stream, chunk)
            chunk = source.read(CHUNK)
        if not hasher.matches():
            raise ValidationError(
                "checksum mismatch for %s: expected %s, got %s:%s" % (name, hasher.expected, hasher.algorithm, hasher.hexdigest()),
                expected=hasher.expected.digest,
                actual=hasher.hexdigest(),
            )
        client.call("cannot finish uploading into volume %s" % name, stream.finish)
        stream = None
    finally:
        if stream is not None:
            try:
                stream.abort()
            except Exception:  # pylint: disable=broad-exception-caught
                pass


def _verify_stored(client, pool, vol, name, hasher):
    """Read back what the upload stored; a different digest means it was not stored (a full file system)."""
    stored = hash_volume(client, vol, hasher.length, hasher.algorithm, what="volume %s" % name)
    if stored != hasher.hexdigest():
        available = client.call("cannot read pool info", pool.info)[3]
        raise HostError(
            "volume %s does not hold what was uploaded: the %d bytes read back have %s %s, the upload had %s. libvirt reported no error; "
            "pool %s has %d bytes available, so its file system is probably full: free space or use another pool"
            % (name, hasher.length, hasher.algorithm, stored, hasher.hexdigest(), pool.name(), available),
            stored=stored,
            uploaded=hasher.hexdigest(),
            available=available,
        )


def _upload(client, pool, params, plan):
    """Create the volume, stream the source into it, read it back; any failure deletes the new volume.

    The marker volume is there from before the volume is created until after the read-back.
    """
    name = params["name"]
    hasher = Hasher(plan["checksum"])
    source = _open_source(params)
    vol = None
    marker = plan.get("marker")
    try:
        if marker is None:
            marker = client.call(
                "cannot create volume %s%s (the marker of an upload in progress) in pool %s" % (name, INCOMPLETE, params["pool"]),
                pool.createXML,
                volume_xml(name + INCOMPLETE, SECTOR, "raw"),
                0,
            )
        head = source.read(CHUNK)
        fmt = params.get("format") or probe_format(head)
        capacity = upload_capacity(params, fmt, _image_size(params, head, source, fmt))
        vol = client.call("cannot create volume %s in pool %s" % (name, params["pool"]), pool.createXML, volume_xml(name, capacity, fmt), 0)
        _stream_into(client, vol, name, source, head=head, hasher=hasher)
        _verify_stored(client, pool, vol, name, hasher)
        client.call("cannot refresh pool %s" % params["pool"], pool.refresh, 0)
        vol = client.lookup_volume(pool, name)
        _grow_to(client, vol, name, wanted_capacity(params, fmt))
        client.call("cannot delete volume %s%s (the marker of the finished upload)" % (name, INCOMPLETE), marker.delete, 0)
    except VirtopsError as exc:
        if "No space left" in exc.msg:
            _with_note(exc, _space_note(client, pool))
        if vol is not None:
            raise _with_note(exc, _remove_new(vol, marker)) from None
        _remove_marker(marker)
        raise
    except BaseException:
        if vol is not None:
            _remove_new(vol, marker)
        else:
            _remove_marker(marker)
        raise
    finally:
        source.close()
    return vol, hasher.hexdigest()


def _remove_marker(marker):
    if marker is None:
        return
    try:
        marker.delete(0)
    except Exception:  # pylint: disable=broad-exception-caught  # a marker left says only "upload again"
        pass


def _space_note(client, pool):
    try:
        available = pool.info()[3]
    except Exception:  # pylint: disable=broad-exception-caught
        return "the file system of pool %s is full" % pool.name()
    return "the file system of pool %s is full (%d bytes available): free space or use another pool" % (pool.name(), available)


def _grow_to(client, vol, name, capacity):
    """Grow a new volume to ``capacity`` when libvirt made it smaller (never shrink what it rounded up)."""
    if capacity is None:
        return
    have = client.call("cannot read volume info", vol.info)[1]
    if have < capacity and not _same_capacity(have, capacity):
        client.call("cannot resize volume %s" % name, vol.resize, capacity, 0)


def _create(client, pool, xml, action):
    # libvirt removes the volume when qemu-img's LUKS benchmark fails, so creating it again is safe
    return retry_luks_benchmark(lambda: client.call(action, pool.createXML, xml, 0), lambda exc: LUKS_BENCHMARK_FLAKE in exc.msg)


def _create_volume(client, pool, params, plan):
    name = params["name"]
    if plan.get("clone_of") is not None:
        vol = client.call("cannot clone %s into %s" % (params["clone_from"], name), pool.createXMLFrom, plan["xml"], plan["clone_of"], 0)
    else:
        vol = _create(client, pool, plan["xml"], "cannot create volume %s in pool %s" % (name, params["pool"]))
    try:
        _grow_to(client, vol, name, plan["capacity"])
    except VirtopsError as exc:
        raise _with_note(exc, _remove_new(vol)) from None
    return vol


def apply_volume(client, params, plan):
    """Carry out ``plan``; returns (volume or None, extra result keys)."""
    pool, vol = plan["pool"], plan["vol"]
    name = params["name"]
    result = {}
    for step in plan["steps"]:
        if step == "wipe":
            client.call("cannot wipe volume %s" % name, vol.wipe, 0)
        elif step == "delete":
            if vol is not None:
                client.call("cannot delete volume %s" % name, vol.delete, 0)
            vol = None
            if plan.get("marker") is not None and params["state"] == "absent":
                client.call("cannot delete volume %s%s" % (name, INCOMPLETE), plan["marker"].delete, 0)
        elif step == "create":
            vol = _create_volume(client, pool, params, plan)
        elif step == "upload":
            vol, result["checksum"] = _upload(client, pool, params, plan)
        elif step == "resize":
            flags = libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK if plan["capacity"] < plan["before"]["capacity"] else 0
            client.call("cannot resize volume %s" % name, vol.resize, plan["capacity"], flags)
    if vol is not None:
        client.call("cannot refresh pool %s" % params["pool"], pool.refresh, 0)
        vol = client.lookup_volume(pool, name)
    return vol, result


def ensure_volume(backends, params, check_mode):
    """The module: one volume (``pool``/``name``) or several (``volumes``) over one libvirt connection."""
    if params.get("volumes") is not None:
        if params.get("name"):
            raise ValidationError("name and volumes are mutually exclusive: give one volume with name, or a list with volumes")
        # check mode creates nothing, so an overlay on a base an earlier entry makes is planned on that plan
        planned = {} if check_mode else None
        return run_entries(
            params,
            "volumes",
            lambda entry: _ensure_one(backends.libvirt, entry, check_mode, planned),
            name_of=lambda entry: "%s/%s" % (entry.get("pool"), entry.get("name")),
            check=_check_entry,
            check_mode=check_mode,
        )
    _check_entry(params)
    return _ensure_one(backends.libvirt, params, check_mode)


def _check_entry(params):
    for option in ("pool", "name"):
        if not params.get(option):
            raise ValidationError("%s is required (the volume's storage pool and name), for each entry of volumes or for the task" % option)
    validate_params(params)


def _ensure_one(client, params, check_mode, planned=None):
    """One volume: plan, then act unless in check mode (then record the plan in ``planned``)."""
    plan = plan_volume(client, params, planned)
    if planned is not None and {"create", "upload"} & set(plan["steps"]):
        planned[(plan["pool"].name(), params["name"])] = plan["after"]
    changed = bool(plan["steps"])
    result = dict(changed=changed, actions=plan["steps"], warnings=plan["warnings"])
    if changed and not check_mode:
        vol, extra = apply_volume(client, params, plan)
        result.update(extra)
        result["volume"] = volume_facts(client, plan["pool"], vol) if vol is not None else {}
    else:
        result["volume"] = plan["before"]
    if changed:
        after = result["volume"] if not check_mode else plan["after"]
        header = "volume %s/%s" % (params["pool"], params["name"])
        result["diff"] = dict(before_header=header, after_header=header, before=_summary(plan["before"]), after=_summary(after))
    return result
