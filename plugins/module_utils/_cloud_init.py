# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NoCloud seed ISOs (volume label ``cidata``) built with pycdlib, to a file or into a pool volume.

The ISO's bytes differ on every build (timestamps), so the module compares content instead: a
SHA-256 over the seed's files is written into the ISO's application identifier
(``virtops-seed:<first 48 hex digits>``) and read back on the next run, from the file or from the
volume through libvirt's stream API. A seed without that identifier, or one that cannot be read as
an ISO, is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import connect, libvirt

PYCDLIB_IMPORT_ERROR = None
try:
    import pycdlib
except ImportError:
    pycdlib = None
    PYCDLIB_IMPORT_ERROR = traceback.format_exc()

try:
    import yaml
except ImportError:
    yaml = None

VOLUME_ID = "cidata"
APP_PREFIX = "virtops-seed:"
DIGEST_CHARS = 48
MAX_SEED_BYTES = 64 << 20  # a seed bigger than this is not read back from a volume
# ISO 9660 names (8.3) with their Rock Ridge / Joliet long names.
FILES = (("user-data", "USERDATA.;1"), ("meta-data", "METADATA.;1"), ("network-config", "NETWORKC.;1"), ("vendor-data", "VENDORDA.;1"))


def require_pycdlib(module):
    if pycdlib is None:
        module.fail_json(msg=missing_required_lib("pycdlib", url="https://pypi.org/project/pycdlib/"), exception=PYCDLIB_IMPORT_ERROR)


def _dump(data):
    """YAML text of ``data`` (JSON, which YAML reads too, when PyYAML is not installed)."""
    if yaml is not None:
        return yaml.safe_dump(data, default_flow_style=False, sort_keys=False, allow_unicode=True)
    return json.dumps(data, indent=2) + "\n"


def _text(value, what, header=None):
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return (header + "\n" if header else "") + _dump(value)
    if isinstance(value, str):
        return value
    raise ValidationError("%s must be a dict or a string, got %s" % (what, type(value).__name__))


def content_digest(files):
    sha = hashlib.sha256(b"virtops-cidata-v1\0")
    for name, data in files:
        sha.update(b"%s\0%d\0" % (name.encode("ascii"), len(data)))
        sha.update(data)
    return sha.hexdigest()


def render_files(params):
    """``[(name, bytes)]`` in ISO order. A dict user_data gets the ``#cloud-config`` header."""
    user = _text(params.get("user_data"), "user_data", header="#cloud-config")
    network = _text(params.get("network_config"), "network_config")
    vendor = _text(params.get("vendor_data"), "vendor_data", header="#cloud-config")
    meta = _text(params.get("meta_data"), "meta_data")
    if meta is None:
        # NoCloud needs an instance-id; derive it from the rest, so a changed seed is a new instance.
        seed = content_digest([(n, t.encode("utf-8")) for n, t in (("user-data", user), ("network-config", network), ("vendor-data", vendor)) if t])
        meta = "instance-id: iid-%s\n" % seed[:16]
    texts = {"user-data": user if user is not None else "#cloud-config\n{}\n", "meta-data": meta, "network-config": network, "vendor-data": vendor}
    return [(name, texts[name].encode("utf-8")) for name, _iso in FILES if texts[name] is not None]


def build_iso(files, digest):
    """The seed ISO's bytes (ISO 9660 level 3 + Joliet + Rock Ridge, label ``cidata``)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_ID, app_ident_str=APP_PREFIX + digest[:DIGEST_CHARS])
    iso_names = dict(FILES)
    for name, data in files:
        iso.add_fp(io.BytesIO(data), len(data), "/" + iso_names[name], rr_name=name, joliet_path="/" + name)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def read_iso(data):
    """``{"label", "digest", "files": {name: bytes}}`` of a seed ISO's bytes, or None when it is not one."""
    if not data:
        return None
    iso = pycdlib.PyCdlib()
    try:
        iso.open_fp(io.BytesIO(data))
        label = iso.pvd.volume_identifier.decode("ascii", "replace").strip()
        app = iso.pvd.application_identifier.text.decode("ascii", "replace").strip()
        files = {}
        for child in iso.list_children(rr_path="/"):
            if not child.is_file() or child.rock_ridge is None:
                continue
            name = child.rock_ridge.name().decode("utf-8", "replace")
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/" + name)
            files[name] = out.getvalue()
        iso.close()
    except Exception:  # pylint: disable=broad-exception-caught  # pycdlib raises many kinds for a non-ISO
        return None
    digest = app[len(APP_PREFIX):] if app.startswith(APP_PREFIX) else None
    return {"label": label, "digest": digest, "files": files}


def _diff_text(files):
    if files is None:
        return ""
    parts = []
    for name, data in files:
        text = data.decode("utf-8", "replace")
        parts.append("# --- %s ---\n%s%s" % (name, text, "" if text.endswith("\n") else "\n"))
    return "".join(parts)


def _ordered(files_dict):
    return [(name, files_dict[name]) for name, _iso in FILES if name in files_dict]


# ---------------------------------------------------------------- destinations


class FileTarget:
    """A seed ISO at a local path (written atomically)."""

    def __init__(self, path, move):
        self.path = path
        self.move = move

    def describe(self):
        return {"path": self.path}

    def read(self):
        if not os.path.exists(self.path):
            return False, None
        with open(self.path, "rb") as handle:
            return True, handle.read(MAX_SEED_BYTES)

    def write(self, data):
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ValidationError("directory %s for the seed does not exist" % directory)
        fd, tmp = tempfile.mkstemp(prefix=".virtops-seed-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            self.move(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def remove(self):
        os.unlink(self.path)


class VolumeTarget:
    """A seed ISO in a raw volume of an existing libvirt storage pool, moved with libvirt's stream API."""

    def __init__(self, client, pool_name, volume_name):
        self.client = client
        self.volume_name = volume_name
        self.pool = client.lookup_pool(pool_name)
        if self.pool is None:
            raise ValidationError("storage pool %r does not exist on %s; create it first (virtops.kvm.pool)" % (pool_name, client.uri))
        if not self.pool.isActive():
            raise ValidationError("storage pool %r is not active; start it first (virtops.kvm.pool state=active)" % pool_name)
        self.pool_name = pool_name
        client.call("cannot refresh pool %s" % pool_name, self.pool.refresh, 0)
        self.volume = client.lookup_volume(self.pool, volume_name)

    def describe(self):
        path = self.volume.path() if self.volume is not None else None
        return {"pool": self.pool_name, "volume": self.volume_name, "path": path}

    def read(self):
        if self.volume is None:
            return False, None
        capacity = self.client.call("cannot read volume %s" % self.volume_name, self.volume.info)[1]
        length = min(capacity, MAX_SEED_BYTES)
        chunks = []
        stream = self.client.call("cannot open a stream", self.client.conn.newStream, 0)
        with _stream_guard(stream):
            self.client.call("cannot download volume %s" % self.volume_name, self.volume.download, stream, 0, length, 0)
            self.client.call("cannot download volume %s" % self.volume_name, stream.recvAll, lambda _st, data, acc: acc.append(data), chunks)
            self.client.call("cannot download volume %s" % self.volume_name, stream.finish)
        return True, b"".join(chunks)

    def write(self, data):
        if self.volume is None:
            xml = ("<volume><name>%s</name><capacity unit='bytes'>%d</capacity><allocation unit='bytes'>0</allocation>"
                   "<target><format type='raw'/></target></volume>") % (_xml_escape(self.volume_name), len(data))
            self.volume = self.client.call("cannot create volume %s in pool %s" % (self.volume_name, self.pool_name), self.pool.createXML, xml, 0)
        else:
            capacity = self.client.call("cannot read volume %s" % self.volume_name, self.volume.info)[1]
            if capacity < len(data):
                self.client.call("cannot grow volume %s" % self.volume_name, self.volume.resize, len(data), 0)
        stream = self.client.call("cannot open a stream", self.client.conn.newStream, 0)
        with _stream_guard(stream):
            self.client.call("cannot upload to volume %s" % self.volume_name, self.volume.upload, stream, 0, len(data), 0)
            view = memoryview(data)
            state = {"offset": 0}

            def source(_stream, nbytes, _opaque):
                chunk = view[state["offset"]:state["offset"] + nbytes]
                state["offset"] += len(chunk)
                return bytes(chunk)

            self.client.call("cannot upload to volume %s" % self.volume_name, stream.sendAll, source, None)
            self.client.call("cannot upload to volume %s" % self.volume_name, stream.finish)

    def remove(self):
        self.client.call("cannot delete volume %s" % self.volume_name, self.volume.delete, 0)


class _stream_guard:  # pylint: disable=invalid-name
    """Abort a libvirt stream that did not finish."""

    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        return self.stream

    def __exit__(self, exc_type, *_rest):
        if exc_type is not None:
            try:
                self.stream.abort()
            except Exception:  # pylint: disable=broad-exception-caught
                pass
        return False


def _xml_escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


# ---------------------------------------------------------------- the module's logic


def ensure_seed(target, params, check_mode=False):
    """Bring the seed at ``target`` to ``params``; returns the result dict (with ``diff``)."""
    exists, data = target.read()
    current = read_iso(data) if exists else None
    before_files = _ordered(current["files"]) if current else ([("(not a seed ISO)", b"")] if exists else None)
    if params["state"] == "absent":
        result = {"changed": exists, "diff": {"before": _diff_text(before_files), "after": ""}}
        result.update(target.describe())
        if exists and not check_mode:
            target.remove()
        result["exists"] = False
        return result
    files = render_files(params)
    digest = content_digest(files)
    same = current is not None and current["label"] == VOLUME_ID and current["digest"] == digest[:DIGEST_CHARS]
    result = {
        "changed": not same, "digest": digest, "files": [name for name, _data in files],
        "diff": {"before": _diff_text(before_files), "after": _diff_text(files)},
    }
    if not same and not check_mode:
        target.write(build_iso(files, digest))
    result.update(target.describe())
    result["exists"] = True
    return result


def run_cloud_init_seed(module):
    require_pycdlib(module)
    params = module.params
    if params.get("path"):
        target = FileTarget(params["path"], module.atomic_move)
        result = ensure_seed(target, params, check_mode=module.check_mode)
        if params["state"] == "present" and os.path.exists(params["path"]):
            file_args = module.load_file_common_arguments(params)
            result["changed"] = module.set_fs_attributes_if_different(file_args, result["changed"])
    else:
        if libvirt is None:
            raise HostError("uploading a seed into a pool volume needs libvirt-python")
        with connect(module) as client:
            result = ensure_seed(VolumeTarget(client, params["pool"], params["volume"]), params, check_mode=module.check_mode)
    if not module._diff:  # pylint: disable=protected-access
        result.pop("diff", None)
    return result
