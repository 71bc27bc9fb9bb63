# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""NoCloud seed ISOs (volume label ``cidata``) built with pycdlib, to a file or into a pool volume.

The ISO's bytes differ on every build (timestamps), so the module compares content instead: a
SHA-256 over the seed's files is written into the ISO's application identifier
(``virtops-seed:<first 48 hex digits>``) and read back on the next run, from the file or from the
volume through libvirt's stream API. A seed without that identifier, or one that cannot be read as
an ISO, is rebuilt.

Only a seed is replaced or removed: an existing file or volume that is not an ISO 9660 image with
volume id ``cidata`` (a data disk, say) is refused unless ``force``. A volume upload is read back and
compared, because libvirt's stream does not report a full pool on a sparse target.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import io
import json
import os
import pwd
import stat
import traceback

from ansible_collections.virtops.kvm.plugins.module_utils._batch import run_entries
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import validate_name, validate_path
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml

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
SEED_LABELS = (b"cidata", b"CIDATA")
ISO_HEADER = 32768 + 2048  # the primary volume descriptor ends here
APP_PREFIX = "virtops-seed:"
DIGEST_CHARS = 48
MAX_SEED_BYTES = 64 << 20  # a seed bigger than this is not read back from a volume
# ISO 9660 names (8.3) with their Rock Ridge / Joliet long names.
FILES = (("user-data", "USERDATA.;1"), ("meta-data", "METADATA.;1"), ("network-config", "NETWORKC.;1"), ("vendor-data", "VENDORDA.;1"))


def is_seed(head):
    """Whether ``head`` (the first bytes of a file or volume) starts an ISO 9660 image with volume id cidata."""
    if len(head) < ISO_HEADER or head[32768:32774] != b"\x01CD001":
        return False
    return head[32808:32840].rstrip(b" \0") in SEED_LABELS


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
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValidationError("%s is not valid UTF-8 text (undecodable byte at position %d); cloud-init reads UTF-8" % (what, exc.start)) from exc
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
    digest = app[len(APP_PREFIX) :] if app.startswith(APP_PREFIX) else None
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
    """A seed ISO at a local path (written atomically, read back, only over a seed unless forced)."""

    kind = "file"

    def __init__(self, path):
        self.path = path

    def describe(self):
        return {"path": self.path}

    def read(self):
        """``(exists, head_or_whole_bytes)``; ValidationError for a path that cannot hold a seed."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False, None
        if stat.S_ISDIR(st.st_mode):
            raise ValidationError("path %s is a directory; give the seed ISO's file name inside it" % self.path)
        if stat.S_ISLNK(st.st_mode):
            raise ValidationError("path %s is a symbolic link; give the seed's real path (links are not written through)" % self.path)
        if not stat.S_ISREG(st.st_mode):
            raise ValidationError("path %s is not a regular file (a device, socket or FIFO); nothing was changed" % self.path)
        try:
            with open(self.path, "rb") as handle:
                return True, handle.read(MAX_SEED_BYTES)
        except OSError as exc:
            raise HostError("cannot read %s: %s" % (self.path, os.strerror(exc.errno) if exc.errno else exc)) from exc

    def check_writable(self, size):
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise ValidationError("directory %s for the seed does not exist" % directory)
        try:
            fs = os.statvfs(directory)
        except OSError as exc:
            raise HostError("cannot inspect %s: %s" % (directory, exc)) from exc
        if fs.f_flag & os.ST_RDONLY:
            raise HostError("cannot write the seed %s: %s is on a read-only file system; nothing was changed" % (self.path, directory))
        if not os.access(directory, os.W_OK):
            raise HostError("cannot write the seed %s: directory %s is not writable; nothing was changed" % (self.path, directory))
        if fs.f_bavail * fs.f_frsize < size:
            raise HostError(
                "cannot write the seed %s: the file system has %d bytes free, the seed needs %d; nothing was changed"
                % (self.path, fs.f_bavail * fs.f_frsize, size)
            )

    def write(self, data, mode):
        directory = os.path.dirname(self.path)
        tmp = None
        try:
            name = os.path.join(directory, ".virtops-seed-%s" % os.urandom(8).hex())
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            tmp = name
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, self.path)
            tmp = None
            with open(self.path, "rb") as handle:
                if handle.read() != data:
                    raise HostError("wrote the seed %s but reading it back gave other bytes; the file system may be failing" % self.path)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise HostError("cannot write the seed %s: the file system is full; the old file was left as it was" % self.path) from exc
            if exc.errno == errno.EROFS:
                raise HostError("cannot write the seed %s: the file system is read-only; nothing was changed" % self.path) from exc
            raise HostError("cannot write the seed %s: %s" % (self.path, exc)) from exc
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)

    def remove(self):
        try:
            os.unlink(self.path)
        except OSError as exc:
            raise HostError("cannot remove the seed %s: %s" % (self.path, exc)) from exc


class VolumeTarget:
    """A seed ISO in a raw volume of an existing libvirt storage pool, moved with libvirt's stream API."""

    kind = "volume"

    def __init__(self, client, pool_name, volume_name):
        self.client = client
        self.volume_name = validate_name(volume_name, "volume")
        self.pool = client.lookup_pool(validate_name(pool_name, "pool"))
        if self.pool is None:
            raise ValidationError("storage pool %r does not exist on %s; create it first (virtops.kvm.pool)" % (pool_name, client.uri))
        if not self.pool.isActive():
            raise ValidationError("storage pool %r is not active; start it first (virtops.kvm.pool state=active)" % pool_name)
        self.pool_name = pool_name
        client.refresh_pool(self.pool, pool_name)
        self.volume = client.lookup_volume(self.pool, volume_name)
        self.created = False

    def describe(self):
        path = self.volume.path() if self.volume is not None else None
        return {"pool": self.pool_name, "volume": self.volume_name, "path": path}

    def volume_format(self):
        xml = self.client.call("cannot read volume %s" % self.volume_name, self.volume.XMLDesc, 0)
        node = parse_xml(xml).find("target/format")
        return node.get("type") if node is not None else "raw"

    def _download(self, length):
        chunks = []
        stream = self.client.call("cannot open a stream", self.client.conn.newStream, 0)
        with _stream_guard(stream):
            self.client.call("cannot download volume %s" % self.volume_name, self.volume.download, stream, 0, length, 0)
            self.client.call("cannot download volume %s" % self.volume_name, stream.recvAll, lambda _st, data, acc: acc.append(data), chunks)
            self.client.call("cannot download volume %s" % self.volume_name, stream.finish)
        return b"".join(chunks)

    def read(self):
        if self.volume is None:
            return False, None
        capacity = self.client.call("cannot read volume %s" % self.volume_name, self.volume.info)[1]
        if self.volume_format() not in ("raw", "iso"):
            return True, b""  # a qcow2 or other formatted volume is no seed
        return True, self._download(min(capacity, MAX_SEED_BYTES))

    def check_writable(self, size):
        available = self.client.call("cannot read pool %s" % self.pool_name, self.pool.info)[3]
        allocated = self.client.call("cannot read volume %s" % self.volume_name, self.volume.info)[2] if self.volume is not None else 0
        if available + allocated < size:
            raise HostError("storage pool %s has %d bytes free, the seed needs %d; nothing was changed" % (self.pool_name, available, size))

    def recreate(self):
        """Delete a volume that is not a raw seed (force), so a raw one takes its place."""
        if self.volume is not None:
            self.remove()
            self.volume = None

    def write(self, data, _mode=None):
        if self.volume is None:
            xml = (
                "<volume><name>%s</name><capacity unit='bytes'>%d</capacity><allocation unit='bytes'>0</allocation>"
                "<target><format type='raw'/></target></volume>"
            ) % (_xml_escape(self.volume_name), len(data))
            self.volume = self.client.call("cannot create volume %s in pool %s" % (self.volume_name, self.pool_name), self.pool.createXML, xml, 0)
            self.created = True
        else:
            capacity = self.client.call("cannot read volume %s" % self.volume_name, self.volume.info)[1]
            if capacity < len(data):
                self.client.call("cannot grow volume %s" % self.volume_name, self.volume.resize, len(data), 0)
        try:
            self._upload(data)
            stored = self._download(len(data))
        except BaseException:
            self._drop_created()
            raise
        if stored != data:
            what = "the volume was removed" if self.created else "the volume now holds a damaged seed: free space in the pool and run again"
            self._drop_created()
            raise HostError(
                "uploaded the seed into volume %s of pool %s, but reading it back gave other bytes (is the pool full?); %s"
                % (self.volume_name, self.pool_name, what)
            )

    def _drop_created(self):
        """Delete the volume this run created for an upload that failed (an old volume is left for the error to name)."""
        if self.created and self.volume is not None:
            try:
                self.remove()
            except Exception:  # pylint: disable=broad-exception-caught  # the upload's own error is the one to report
                pass
            self.volume = None

    def _upload(self, data):
        stream = self.client.call("cannot open a stream", self.client.conn.newStream, 0)
        with _stream_guard(stream):
            self.client.call("cannot upload to volume %s" % self.volume_name, self.volume.upload, stream, 0, len(data), 0)
            view = memoryview(data)
            state = {"offset": 0}

            def source(_stream, nbytes, _opaque):
                chunk = view[state["offset"] : state["offset"] + nbytes]
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


def _file_mode(value):
    if value is None:
        return None
    if isinstance(value, int):
        mode = value
    else:
        text = str(value).strip()
        if not text or any(c not in "01234567" for c in text):
            raise ValidationError("mode %r is not an octal mode such as '0600' (symbolic modes are not supported here)" % (value,))
        mode = int(text, 8)
    if not 0 <= mode <= 0o7777:
        raise ValidationError("mode %r is out of range (0000 to 7777)" % (value,))
    return mode


def _owner_id(value, what, lookup):
    if value is None:
        return None
    text = str(value)
    if text.isdigit():
        return int(text)
    try:
        return lookup(text)
    except KeyError as exc:
        raise ValidationError("%s %r does not exist on this host" % (what, value)) from exc


def file_attributes(params):
    """``{"mode", "uid", "gid"}`` asked for (None where not given); ValidationError for bad values."""
    return {
        "mode": _file_mode(params.get("mode")),
        "uid": _owner_id(params.get("owner"), "owner", lambda n: pwd.getpwnam(n).pw_uid),
        "gid": _owner_id(params.get("group"), "group", lambda n: grp.getgrnam(n).gr_gid),
    }


def _attribute_changes(path, attrs):
    try:
        st = os.stat(path)
    except OSError:
        return {}
    have = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    return {key: value for key, value in attrs.items() if value is not None and have[key] != value}


def _apply_attributes(path, changes):
    try:
        if "mode" in changes:
            os.chmod(path, changes["mode"])
        if "uid" in changes or "gid" in changes:
            os.chown(path, changes.get("uid", -1), changes.get("gid", -1))
    except OSError as exc:
        raise HostError("cannot set the mode or owner of %s: %s" % (path, exc)) from exc


def _refuse_foreign(target, exists, data, params, doing):
    if exists and not is_seed(data or b"") and not params.get("force"):
        where = target.describe().get("path") or "%s/%s" % (target.pool_name, target.volume_name)
        raise ValidationError(
            "%s %s exists and is not a cloud-init seed (no ISO 9660 image with volume id cidata); refusing to %s it: "
            "give another name, or set force=true if it may be destroyed" % (target.kind, where, doing)
        )


def ensure_target(target, params, check_mode=False):
    """Bring the seed at ``target`` to ``params``; returns the result dict (with ``diff``)."""
    exists, data = target.read()
    current = read_iso(data) if exists and is_seed(data or b"") else None
    before_files = _ordered(current["files"]) if current else ([("(not a seed ISO)", b"")] if exists else None)
    if params["state"] == "absent":
        _refuse_foreign(target, exists, data, params, "delete")
        result = dict(target.describe(), changed=exists, exists=False, diff={"before": _diff_text(before_files), "after": ""})
        if exists and not check_mode:
            target.remove()
        return result
    _refuse_foreign(target, exists, data, params, "overwrite")
    attrs = file_attributes(params) if target.kind == "file" else {}
    files = render_files(params)
    digest = content_digest(files)
    same = current is not None and current["digest"] == digest[:DIGEST_CHARS]
    iso = None if same else build_iso(files, digest)
    if iso is not None:
        target.check_writable(len(iso))
    changes = _attribute_changes(target.path, attrs) if same and target.kind == "file" else {}
    result = {
        "changed": not same or bool(changes),
        "digest": digest,
        "files": [name for name, _data in files],
        "diff": {"before": _diff_text(before_files), "after": _diff_text(files)},
    }
    if not check_mode and iso is not None:
        if exists and target.kind == "volume" and not is_seed(data or b""):
            target.recreate()
        mode = attrs.get("mode")
        if mode is None:
            umask = os.umask(0o022)
            os.umask(umask)
            mode = stat.S_IMODE(os.stat(target.path).st_mode) if exists and target.kind == "file" else 0o666 & ~umask
        target.write(iso, mode)
        if target.kind == "file":
            _apply_attributes(target.path, _attribute_changes(target.path, attrs))
    elif not check_mode and changes:
        _apply_attributes(target.path, changes)
    result.update(target.describe())
    result["exists"] = True
    return result


def ensure_cloud_init_seed(backends, params, check_mode):
    """The module's entry point: the seed at ``path``, or in volume ``volume`` of pool ``pool``, or each of ``seeds``."""
    if pycdlib is None:
        raise HostError("cloud_init_seed needs the pycdlib Python library (pip install pycdlib) on the managed host")
    if params.get("seeds") is not None:
        return run_entries(
            params, "seeds", lambda entry: _ensure_one(backends, entry, check_mode), name_of=_seed_name, check=_check_entry, check_mode=check_mode
        )
    _check_entry(params)
    return _ensure_one(backends, params, check_mode)


def _seed_name(params):
    return params.get("path") or "%s/%s" % (params.get("pool"), params.get("volume"))


def _check_entry(params):
    """What needs no file or libvirt: where the seed goes, and content that renders."""
    if params.get("path"):
        if params.get("pool") or params.get("volume"):
            raise ValidationError("give path, or pool and volume, not both")
        validate_path(params["path"], "path")
    elif not (params.get("pool") and params.get("volume")):
        raise ValidationError("give path (a file) or pool and volume (a volume in a storage pool)")
    if params["state"] == "present":
        render_files(params)


def _ensure_one(backends, params, check_mode):
    if params.get("path"):
        target = FileTarget(validate_path(params["path"], "path"))
    else:
        target = VolumeTarget(backends.libvirt, params.get("pool"), params.get("volume"))
    result = ensure_target(target, params, check_mode)
    result["warnings"] = []
    return result
