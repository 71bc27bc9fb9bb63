# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""qemu_img: create, convert, resize, LUKS keyslots and bitmaps of images outside storage pools.

:func:`ensure_qemu_img` validates the whole request first (paths, sizes, formats and the options
each format takes), then plans: it reads the image with ``qemu-img info`` (:mod:`._image`),
computes what differs, and lets qemu-img create a throwaway image with the same format, size and
options in a private directory, so input only qemu-img rejects fails in check mode as in the real
run. Only then does the real run apply the plan.

New files (create, convert) are written by qemu-img into a private 0700 directory made with
``mkdtemp`` beside the target and renamed into place: nothing is ever written to a predictable name
a planted symlink could redirect, and the directory is removed on every exit path, SIGTERM included.

Passphrases reach qemu-img only through ``--object secret,file=/proc/<pid>/fd/<n>`` of a memfd (an
anonymous in-memory file): nothing is on disk or on a command line, and nothing survives the
process, even under ``kill -9``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import time

from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError, HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import private_tempdir, validate_path, write_private
from ansible_collections.virtops.kvm.plugins.module_utils._image import (
    FORMATS,
    LUKS_BENCHMARK_FLAKE,
    READ_FORMATS,
    ImageReader,
    active_keyslots,
    bitmaps_of,
    diff_text,
    encryption_of,
    qemu_opt_escape,
    retry_luks_benchmark,
    summary,
)
from ansible_collections.virtops.kvm.plugins.module_utils._units import parse_size

ACTIONS = ("create", "convert", "resize", "amend", "bitmap")
PREALLOCATIONS = ("off", "metadata", "falloc", "full")
METADATA_PREALLOCATION = ("qcow2", "luks")  # the others: "Unsupported preallocation mode: metadata"
COMPRESSING = ("qcow2", "vmdk")  # convert -c elsewhere: "Compression not supported for this file format"
BACKING_FORMATS = ("qcow2", "qed", "vmdk")
LUKS_KEYSLOTS = 8
MAX_ITER_TIME = 3600 * 1000  # one hour of PBKDF per keyslot is far beyond any sensible setting
MAX_BITMAP_NAME = 1023  # qemu: "Name length exceeds maximum (1023 characters)"
_PROBE_ITER_TIME = 10


def _to_bytes(value):
    if value is None:
        return None
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _power_of_two(value, what, low, high):
    if value & (value - 1) or not low <= value <= high:
        raise ValidationError("%s %d is not a power of two between %d and %d bytes, which qemu-img requires" % (what, value, low, high))
    return value


# ---------------------------------------------------------------- secrets


@contextlib.contextmanager
def secret_objects(secrets):
    """Yield ``--object secret,...`` arguments for ``{id: bytes}``, each secret in a memfd.

    qemu-img opens ``/proc/<our pid>/fd/<n>``: the passphrase lives only in memory held by this
    process and the child, and is gone when both exit, however they exit. Without memfd (not Linux),
    the secrets go to 0600 files in a private 0700 directory removed on every exit path.
    """
    if not hasattr(os, "memfd_create"):
        with private_tempdir(prefix="virtops-qemu-img-") as tmpdir:
            yield [
                a for sid, value in secrets.items() for a in ("--object", "secret,id=%s,file=%s" % (sid, qemu_opt_escape(write_private(tmpdir, sid, value))))
            ]
        return
    fds, args = [], []
    try:
        for sid, value in secrets.items():
            fd = os.memfd_create("virtops-secret", getattr(os, "MFD_CLOEXEC", 0))
            fds.append(fd)
            view = memoryview(value)
            while view:
                view = view[os.write(fd, view) :]
            args += ["--object", "secret,id=%s,file=/proc/%d/fd/%d" % (sid, os.getpid(), fd)]
        yield args
    finally:
        for fd in fds:
            os.close(fd)


# ---------------------------------------------------------------- bitmap ranges


def dirty_ranges(extents):
    """Dirty ``(start, end)`` ranges from ``qemu-img map`` of an NBD export with ``x-dirty-bitmap`` (dirty = not data)."""
    ranges = []
    for extent in extents:
        if extent.get("data"):
            continue
        start, end = extent["start"], extent["start"] + extent["length"]
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


def ranges_cover(outer, inner):
    """Whether every byte of the ranges ``inner`` lies in the ranges ``outer`` (both sorted, disjoint)."""
    i = 0
    for start, end in inner:
        while i < len(outer) and outer[i][1] <= start:
            i += 1
        if i == len(outer) or outer[i][0] > start or outer[i][1] < end:
            return False
    return True


# ---------------------------------------------------------------- qemu-img wrapper


class ImageTool(ImageReader):
    """qemu-img (and qemu-nbd to read bitmaps) for the actions that change images."""

    def __init__(self, runner, qemu_img=None, qemu_nbd=None):
        super().__init__(runner, qemu_img=qemu_img)
        which = getattr(runner, "which", None)
        self.qemu_nbd = qemu_nbd or (which("qemu-nbd") if which is not None else None) or "qemu-nbd"

    def run_pbkdf(self, args, what, cleanup=None):
        """Run a command that benchmarks LUKS PBKDF2 iterations (see :func:`retry_luks_benchmark`)."""
        return retry_luks_benchmark(lambda: self.run(args, what), lambda exc: LUKS_BENCHMARK_FLAKE in (getattr(exc, "stderr", None) or ""), cleanup=cleanup)

    def create(self, path, fmt, size, opts, *, secrets=None, backing=None):
        """``qemu-img create`` of ``path``; ``backing`` is ``(file, format)``, not opened (``-u``)."""
        args = ["create", "-q", "-f", fmt]
        if opts:
            args += ["-o", ",".join(opts)]
        if backing:
            args += ["-u", "-b", backing[0], "-F", backing[1]]
        with secret_objects(secrets) as objects:
            self.run_pbkdf(
                [args[0], *objects, *args[1:], path, str(size)], "qemu-img create %s" % path, cleanup=lambda: os.path.exists(path) and os.unlink(path)
            )

    def probe(self, directory, fmt, size, opts, *, encrypted=False, backing=None):
        """Let qemu-img create a throwaway image with these settings; ValidationError with its reason if it refuses.

        Preallocation is left out (it would write the whole size; it is checked by table instead),
        a LUKS header gets a dummy passphrase and the shortest iteration time.
        """
        opts = [o for o in opts if not o.startswith("preallocation=") and "iter-time=" not in o]
        secrets = {}
        if encrypted:
            secrets = {"sec0": b"virtops-probe"}
            opts.append("%siter-time=%d" % ("" if fmt == "luks" else "encrypt.", _PROBE_ITER_TIME))
        parent = directory if os.path.isdir(directory) and os.access(directory, os.W_OK) else None
        with private_tempdir(prefix=".virtops-qemu-img-probe-", parent=parent) as work:
            try:
                self.create(os.path.join(work, "probe"), fmt, size, opts, secrets=secrets, backing=backing)
            except CommandError as exc:
                reason = (exc.stderr or "").strip().replace(os.path.join(work, "probe") + ": ", "")
                raise ValidationError("qemu-img refuses a %s image of %d bytes with these settings: %s; nothing was changed" % (fmt, size, reason)) from exc

    @staticmethod
    def image_opts(path, info, secret_id):
        """``--image-opts`` text opening ``path`` (encrypted with the secret ``secret_id``)."""
        kind, _slots = encryption_of(info)
        filename = qemu_opt_escape(path)
        if kind == "luks":
            return "driver=luks,key-secret=%s,file.filename=%s" % (secret_id, filename)
        if kind == "qcow2":
            return "driver=qcow2,encrypt.key-secret=%s,file.filename=%s" % (secret_id, filename)
        return "driver=%s,file.filename=%s" % (info["format"], filename)

    def unlocks(self, path, info, passphrase):
        """Whether ``passphrase`` opens the encrypted image (any active keyslot)."""
        with secret_objects({"sec0": passphrase}) as objects:
            rc, _out, err = self.run(
                ["map", "--output=json", "--start-offset", "0", "--max-length", "512", *objects, "--image-opts", self.image_opts(path, info, "sec0")],
                "qemu-img map",
                check=False,
            )
        if rc == 0:
            return True
        if "Invalid password" in (err or ""):
            return False
        raise CommandError("qemu-img could not open %s to test a passphrase: %s" % (path, (err or "").strip()), rc=rc, stderr=err)

    def bitmap_dirty_ranges(self, path, names):
        """``{bitmap: [(start, end), ...]}`` dirty ranges, read through a read-only qemu-nbd export."""
        with private_tempdir(prefix="virtops-qemu-nbd-") as tmpdir:
            sock, pidfile = os.path.join(tmpdir, "nbd.sock"), os.path.join(tmpdir, "nbd.pid")
            try:
                args = [self.qemu_nbd, "--read-only", "--persistent", "--fork", "--format=qcow2", "--socket", sock, "--pid-file", pidfile]
                for name in names:
                    args += ["--bitmap", name]
                self.runner.run([*args, path], what="qemu-nbd (to read bitmaps of %s)" % path)
                ranges = {}
                for name in names:
                    opts = "driver=nbd,server.type=unix,server.path=%s,x-dirty-bitmap=qemu:dirty-bitmap:%s" % (qemu_opt_escape(sock), qemu_opt_escape(name))
                    _rc, out, _err = self.run(["map", "--output=json", "--image-opts", opts], "qemu-img map of bitmap %s" % name)
                    ranges[name] = dirty_ranges(json.loads(out))
                return ranges
            finally:
                self._stop_nbd(pidfile, sock)

    @staticmethod
    def _stop_nbd(pidfile, sock):
        try:
            with open(pidfile, encoding="ascii") as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        for _attempt in range(50):  # qemu-nbd removes its socket on exit
            if not os.path.exists(sock):
                return
            time.sleep(0.1)


# ---------------------------------------------------------------- validating the request


def _size(params, name, **limits):
    value = params.get(name)
    return None if value is None else parse_size(value, name, **limits)


def _validate_formats(req, params):
    for name in ("backing_format", "source_format"):
        value = params.get(name)
        if value is not None and value not in READ_FORMATS:
            raise ValidationError("%s %r is not an image format qemu-img knows; use one of %s" % (name, value, ", ".join(READ_FORMATS)))
        req[name] = value
    fmt = req["format"]
    prealloc = params.get("preallocation")
    if prealloc == "metadata" and req["action"] in ("create", "convert") and fmt not in METADATA_PREALLOCATION:
        raise ValidationError("preallocation=metadata is for %s images; a %s image takes off, falloc or full" % (" and ".join(METADATA_PREALLOCATION), fmt))
    if params.get("compress") and req["action"] == "convert" and fmt not in COMPRESSING:
        raise ValidationError("compress=true needs a format with compressed clusters (%s), not %s" % (", ".join(COMPRESSING), fmt))
    if params.get("compression_type") and req["action"] in ("create", "convert") and fmt != "qcow2":
        raise ValidationError("compression_type is a qcow2 option, not one of format=%s" % fmt)
    if params.get("encrypt") and fmt != "qcow2":
        raise ValidationError("encrypt=true is for qcow2 images (format=%s); for a plain LUKS image use format=luks" % fmt)
    if req["action"] == "create" and params.get("cluster_size") is not None and fmt not in ("qcow2", "qed"):
        raise ValidationError("cluster_size is a qcow2 and qed option, not one of format=%s" % fmt)


def _validate_numbers(req, params):
    req["size"] = _size(params, "size")
    req["extent_size_hint"] = _size(params, "extent_size_hint")
    cluster = _size(params, "cluster_size")
    req["cluster_size"] = None if cluster is None else _power_of_two(cluster, "cluster_size", 512, 2 << 20)
    granularity = _size(params, "granularity")
    req["granularity"] = None if granularity is None else _power_of_two(granularity, "granularity", 512, 1 << 31)
    iter_time = params.get("iter_time")
    if iter_time is not None and not 1 <= iter_time <= MAX_ITER_TIME:
        raise ValidationError("iter_time %d is not between 1 and %d milliseconds" % (iter_time, MAX_ITER_TIME))
    req["iter_time"] = iter_time
    keyslot = params.get("keyslot")
    if keyslot is not None and not 0 <= keyslot < LUKS_KEYSLOTS:
        raise ValidationError("keyslot %d does not exist: LUKS keyslots are 0 to %d" % (keyslot, LUKS_KEYSLOTS - 1))
    req["keyslot"] = keyslot


def _validate_bitmap_names(req, params):
    names = ([params["bitmap"]] if params.get("bitmap") is not None else []) + list(params.get("merge_from") or [])
    for name in names:
        text = str(name)
        if not text or len(text) > MAX_BITMAP_NAME or any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ValidationError("bitmap name %r is not valid: 1 to %d characters, no control characters" % (name, MAX_BITMAP_NAME))
    req["bitmap"] = params.get("bitmap")
    req["merge_from"] = list(params.get("merge_from") or [])


def validate_request(params):
    """The request with paths normalised and sizes in bytes; ValidationError for anything wrong in it."""
    action = params.get("action")
    if action not in ACTIONS:
        raise ValidationError("unknown action %r; use one of %s (reading an image is the qemu_img_info module)" % (action, ", ".join(ACTIONS)))
    req = dict(params)
    req["path"] = validate_path(params.get("path"), "path")
    req["format"] = params.get("format") or "qcow2"
    if req["format"] not in FORMATS:
        raise ValidationError("format %r is not one of %s" % (req["format"], ", ".join(FORMATS)))
    req["source"] = validate_path(params["source"], "source") if params.get("source") is not None else None
    backing = params.get("backing_file")
    if backing is not None:
        joined = backing if str(backing).startswith("/") else os.path.join(os.path.dirname(req["path"]), str(backing))
        req["backing_abs"] = validate_path(os.path.normpath(joined), "backing_file")
    _validate_formats(req, params)
    _validate_numbers(req, params)
    _validate_bitmap_names(req, params)
    return req


# ---------------------------------------------------------------- writing new files into place


def _check_new_file_target(path, action):
    """A destination qemu-img may replace: a regular file or nothing, in a writable directory."""
    if os.path.islink(path):
        raise ValidationError("action=%s: %s is a symbolic link; give the image's real path (a link is not followed for writing)" % (action, path))
    if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
        raise ValidationError("action=%s: %s exists and is not a regular file (a directory or device); nothing was changed" % (action, path))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ValidationError("action=%s: directory %s does not exist; create it first" % (action, directory))
    if not os.access(directory, os.W_OK):
        reason = "is on a read-only file system" if _read_only(directory) else "is not writable"
        raise HostError("action=%s: directory %s %s; nothing was changed" % (action, directory, reason))


def _read_only(directory):
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


_FULL = "the file system holding %s is full; %s was left as it was: free space there or write the image elsewhere (%s)"


def write_into_place(path, produce):
    """``produce(tmp)`` writes a new image at ``tmp`` in a private directory beside ``path``; it is then renamed onto ``path``.

    The directory comes from ``mkdtemp`` (mode 0700, unpredictable name), so qemu-img never writes to
    a name another user could have planted; it is removed on every exit path, SIGTERM included. A
    replaced file's mode and ownership carry over to the new one.
    """
    directory = os.path.dirname(path)
    old = os.lstat(path) if os.path.lexists(path) else None
    try:
        with private_tempdir(prefix=".virtops-qemu-img-", parent=directory) as work:
            tmp = os.path.join(work, os.path.basename(path))
            produce(tmp)
            if old is not None:
                os.chmod(tmp, stat.S_IMODE(old.st_mode))
                with contextlib.suppress(PermissionError):
                    os.chown(tmp, old.st_uid, old.st_gid)
            os.replace(tmp, path)
    except CommandError as exc:
        # qemu-img reports a full file system as strerror(ENOSPC) (run_command runs it under LC_ALL=C)
        if os.strerror(errno.ENOSPC) in (exc.stderr or ""):
            raise HostError(_FULL % (directory, path, exc.stderr.strip()), rc=exc.rc, stderr=exc.stderr) from exc
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise HostError(_FULL % (directory, path, exc)) from exc
        if exc.errno == errno.EROFS:
            raise HostError("%s is on a read-only file system; nothing was written" % directory) from exc
        raise HostError("cannot write %s: %s" % (path, exc)) from exc


# ---------------------------------------------------------------- plans
#
# Each planner returns {"changed", "diff", "apply", "result"}: ``apply()`` (None when nothing
# changes) does the work and may return keys to update the result with.


def _encryption_opts(req, fmt, encrypted):
    if not encrypted:
        return [], {}
    prefix = "" if fmt == "luks" else "encrypt."
    opts = (["encrypt.format=luks"] if fmt == "qcow2" else []) + ["%skey-secret=sec0" % prefix]
    if req.get("iter_time"):
        opts.append("%siter-time=%d" % (prefix, req["iter_time"]))
    return opts, {"sec0": _to_bytes(req["secret"])}


def _create_want(img, req):
    fmt = req["format"]
    encrypted = fmt == "luks" or bool(req.get("encrypt"))
    if encrypted and not req.get("secret"):
        raise ValidationError("an encrypted image (format=%s%s) needs secret, its first passphrase" % (fmt, ", encrypt=true" if req.get("encrypt") else ""))
    want = {"format": fmt, "encrypted": encrypted}
    size, backing = req["size"], None
    if req.get("backing_file"):
        if fmt not in BACKING_FORMATS:
            raise ValidationError("format=%s cannot have a backing file; use qcow2" % fmt)
        backing_info = img.info(req["backing_abs"])
        if backing_info is None:
            raise ValidationError("backing_file %s does not exist" % req["backing_abs"])
        backing = (req["backing_file"], req.get("backing_format") or backing_info["format"])
        if req.get("backing_format") and req["backing_format"] != backing_info["format"]:
            raise ValidationError(
                "backing_file %s is a %s image, not %s (backing_format)" % (req["backing_abs"], backing_info["format"], req["backing_format"])
            )
        want.update(backing_file=req["backing_abs"], backing_format=backing[1])
        if size is None:
            size = backing_info["virtual-size"]
        else:
            want["virtual_size"] = size
    elif size is None:
        raise ValidationError("action=create needs size (or a backing_file to take the size from)")
    else:
        want["virtual_size"] = size
    if req.get("compression_type"):
        want["compression_type"] = req["compression_type"]
    return want, size, backing, encrypted


def plan_create(img, req):
    path, fmt = req["path"], req["format"]
    want, size, backing, encrypted = _create_want(img, req)
    if os.path.islink(path):
        _check_new_file_target(path, "create")
    info = img.info(path)
    have = summary(info)
    mismatches = []
    for key, value in want.items():
        wanted = -(-value // 512) * 512 if key == "virtual_size" else value  # qemu rounds sizes up to whole sectors
        if info is not None and have.get(key) != wanted:
            mismatches.append("%s is %s, asked for %s" % (key, have.get(key), wanted))
    if info is not None and not mismatches:
        return {"changed": False, "diff": {"before": diff_text(have), "after": diff_text(have)}, "apply": None}
    if info is not None and not req.get("force"):
        raise ValidationError(
            "image %s exists and differs: %s. qemu-img create would destroy its data: use force=true to recreate it, "
            "or action=resize/convert to change it" % (path, "; ".join(mismatches)),
            mismatches=mismatches,
        )
    opts = []
    if req.get("compression_type"):
        opts.append("compression_type=%s" % req["compression_type"])
    if req.get("preallocation"):
        opts.append("preallocation=%s" % req["preallocation"])
    if req["extent_size_hint"] is not None:
        opts.append("extent_size_hint=%d" % req["extent_size_hint"])
    if req["cluster_size"] is not None:
        opts.append("cluster_size=%d" % req["cluster_size"])
    crypt_opts, secrets = _encryption_opts(req, fmt, encrypted)
    opts += crypt_opts
    _check_new_file_target(path, "create")
    img.probe(os.path.dirname(path), fmt, size, opts, encrypted=encrypted, backing=backing)

    def apply():
        write_into_place(path, lambda tmp: img.create(tmp, fmt, size, opts, secrets=secrets, backing=backing))

    return {"changed": True, "diff": {"before": diff_text(have), "after": diff_text(dict(have, **want))}, "apply": apply}


def _convert_reasons(img, req, info, source_info, source_format):
    path, source, fmt = req["path"], req["source"], req["format"]
    if info is None:
        return ["%s does not exist" % path]
    if info["format"] != fmt:
        return ["%s is %s, asked for %s" % (path, info["format"], fmt)]
    if info.get("virtual-size") != source_info.get("virtual-size"):
        return ["virtual size %s differs from the source's %s" % (info.get("virtual-size"), source_info.get("virtual-size"))]
    if encryption_of(info)[0]:
        return ["%s is encrypted" % path]
    rc, out, err = img.run(["compare", "-q", "-U", "-f", source_format, "-F", fmt, source, path], "qemu-img compare", check=False)
    if rc == 1:
        return ["content differs (qemu-img compare)"]
    if rc != 0:
        raise CommandError("qemu-img compare %s %s failed (rc=%d): %s" % (source, path, rc, (err or out or "").strip()), rc=rc, stderr=err)
    return []


def plan_convert(img, req):
    path, source, fmt = req["path"], req["source"], req["format"]
    if not source:
        raise ValidationError("action=convert needs source")
    source_info = img.info(source)
    if source_info is None:
        raise ValidationError("source image %s does not exist; nothing was converted" % source)
    if encryption_of(source_info)[0]:
        raise ValidationError("source image %s is encrypted; converting encrypted images is not supported by this module" % source)
    source_format = req.get("source_format") or source_info["format"]
    if source_format != source_info["format"]:
        raise ValidationError("source %s is a %s image, not %s (source_format)" % (source, source_info["format"], source_format))
    if os.path.islink(path):
        _check_new_file_target(path, "convert")
    if os.path.realpath(source) == os.path.realpath(path):
        raise ValidationError("source and path are the same file (%s); convert into another file" % path)
    info = img.info(path)
    have = summary(info)
    reasons = _convert_reasons(img, req, info, source_info, source_format)
    want = dict(have, format=fmt, virtual_size=source_info.get("virtual-size"), content="same as %s" % source)
    diff = {"before": diff_text(dict(have, content="differs" if reasons else "same as %s" % source) if have else {}), "after": diff_text(want)}
    if not reasons:
        return {"changed": False, "diff": diff, "apply": None, "result": {"reasons": []}}
    args = ["convert", "-q", "-f", source_format, "-O", fmt] + (["-c"] if req.get("compress") else [])
    opts = ["%s=%s" % (key, req[key]) for key in ("compression_type", "preallocation") if req.get(key)]
    if opts:
        args += ["-o", ",".join(opts)]
    _check_new_file_target(path, "convert")
    img.probe(os.path.dirname(path), fmt, source_info["virtual-size"], opts)

    def apply():
        write_into_place(path, lambda tmp: img.run([*args, source, tmp], "qemu-img convert %s to %s" % (source, path)))

    return {"changed": True, "diff": diff, "apply": apply, "result": {"reasons": reasons}}


def _require_image(img, path, action):
    info = img.info(path)
    if info is None:
        raise ValidationError("action=%s: image %s does not exist" % (action, path))
    return info


def plan_resize(img, req):
    path = req["path"]
    if req["size"] is None:
        raise ValidationError("action=resize needs size")
    info = _require_image(img, path, "resize")
    have = summary(info)
    current, target = info["virtual-size"], -(-req["size"] // 512) * 512
    kind, _slots = encryption_of(info)
    if target < current and not req.get("allow_shrink"):
        raise ValidationError(
            "asked to shrink %s from %d to %d bytes; shrinking discards data past the new end: set allow_shrink=true if that is intended"
            % (path, current, target),
            current_size=current,
            requested_size=target,
        )
    if kind and not req.get("secret"):
        raise ValidationError("%s is encrypted; resizing it needs secret" % path)
    if req.get("preallocation") == "metadata" and info["format"] not in METADATA_PREALLOCATION:
        raise ValidationError("preallocation=metadata is for qcow2 and luks images; %s is %s" % (path, info["format"]))
    diff = {"before": diff_text(have), "after": diff_text(dict(have, virtual_size=target))}
    if target == current:
        return {"changed": False, "diff": diff, "apply": None}
    probe_opts = ["cluster_size=%d" % info["cluster-size"]] if info["format"] == "qcow2" and info.get("cluster-size") else []
    if kind == "qcow2":
        probe_opts.append("encrypt.format=luks")
    if kind:
        probe_opts.append("%skey-secret=sec0" % ("" if kind == "luks" else "encrypt."))
    img.probe(os.path.dirname(path), info["format"], target, probe_opts, encrypted=bool(kind))
    args = ["resize", "-q"] + (["--shrink"] if target < current else [])
    if req.get("preallocation") and target > current:
        args.append("--preallocation=%s" % req["preallocation"])

    def apply():
        secrets = {"sec0": _to_bytes(req["secret"])} if kind else {}
        with secret_objects(secrets) as objects:
            image = [*objects, "--image-opts", img.image_opts(path, info, "sec0")] if kind else ["-f", info["format"], path]
            img.run([*args, *image, str(target)], "qemu-img resize %s" % path)

    return {"changed": True, "diff": diff, "apply": apply}


def _plan_add_keyslot(img, req, info, opener, active):
    slots = encryption_of(info)[1]
    keyslot = req["keyslot"]
    new_secret = _to_bytes(req.get("new_secret"))
    if new_secret is None:
        raise ValidationError("keyslot_state=active needs new_secret, the passphrase to add")
    if not img.unlocks(req["path"], info, opener):
        raise ValidationError("secret does not open %s (no active keyslot accepts it); nothing was changed" % req["path"])
    if img.unlocks(req["path"], info, new_secret):
        return [], {}, active  # qemu-img cannot tell which slot a passphrase opens; present anywhere is enough
    if keyslot is not None and keyslot in active:
        raise ValidationError(
            "keyslot %d of %s holds another passphrase; remove it first (keyslot_state=inactive, keyslot=%d)" % (keyslot, req["path"], keyslot)
        )
    if len(active) >= len(slots):
        raise ValidationError("all %d keyslots of %s are in use; remove one first" % (len(slots), req["path"]))
    opts = ["state=active", "new-secret=new0"] + (["keyslot=%d" % keyslot] if keyslot is not None else [])
    if req.get("iter_time"):
        opts.append("iter-time=%d" % req["iter_time"])
    slot = keyslot if keyslot is not None else min(set(range(len(slots))) - set(active))
    return opts, {"new0": new_secret}, sorted({*active, slot})


def _plan_remove_keyslot(img, req, info, active):
    path, keyslot = req["path"], req["keyslot"]
    secret, old_secret = _to_bytes(req.get("secret")), _to_bytes(req.get("old_secret"))
    if old_secret is None and keyslot is None:
        raise ValidationError("keyslot_state=inactive needs old_secret (the passphrase to remove) or keyslot")
    if old_secret is not None and keyslot is not None:
        raise ValidationError("give old_secret or keyslot to remove, not both")
    if secret is not None and not img.unlocks(path, info, secret):
        raise ValidationError("secret does not open %s (no active keyslot accepts it); nothing was changed" % path)
    if keyslot is not None:
        changed, removed = keyslot in active, {keyslot}
        opts, secrets = ["state=inactive", "keyslot=%d" % keyslot], {}
    else:
        changed, removed = img.unlocks(path, info, old_secret), None  # which slots old_secret opens only qemu-img knows
        opts, secrets = ["state=inactive", "old-secret=old0"], {"old0": old_secret}
    if not changed:
        return [], {}, active
    last = len(active) == 1 if removed is None else set(active) <= removed
    if last and not req.get("force"):
        raise ValidationError(
            "removing this passphrase would leave %s with no active keyslot and its data unreadable forever; "
            "add another passphrase first, or set force=true" % path,
            active_keyslots=active,
        )
    return opts, secrets, ([s for s in active if s not in removed] if removed is not None else "unknown")


def plan_amend(img, req):
    """Add or remove a LUKS keyslot, idempotent by ``qemu-img info`` and by trying passphrases."""
    path = req["path"]
    info = _require_image(img, path, "amend")
    kind, slots = encryption_of(info)
    if not kind:
        raise ValidationError("%s is a %s image without LUKS encryption; keyslots exist only on luks and encrypted qcow2 images" % (path, info["format"]))
    if req["keyslot"] is not None and req["keyslot"] >= len(slots):
        raise ValidationError("keyslot %d does not exist; %s has keyslots 0 to %d" % (req["keyslot"], path, len(slots) - 1))
    state = req.get("keyslot_state") or "active"
    active = active_keyslots(info)
    opener = _to_bytes(req.get("secret") if req.get("secret") is not None else (req.get("old_secret") if state == "inactive" else None))
    if opener is None:
        raise ValidationError("action=amend needs secret, a passphrase that opens %s" % path)
    if state == "active":
        opts, secrets, after = _plan_add_keyslot(img, req, info, opener, active)
    else:
        opts, secrets, after = _plan_remove_keyslot(img, req, info, active)
    diff = {"before": diff_text({"active_keyslots": active}), "after": diff_text({"active_keyslots": after})}
    if not opts:
        return {"changed": False, "diff": diff, "apply": None}
    args = ["amend", "-q"] + (["--force"] if req.get("force") else [])
    prefix = "encrypt." if kind == "qcow2" else ""

    def apply():
        with secret_objects(dict(secrets, sec0=opener)) as objects:
            img.run_pbkdf(
                [*args, *objects, "--image-opts", img.image_opts(path, info, "sec0"), "-o", ",".join(prefix + o for o in opts)], "qemu-img amend %s" % path
            )
        return {"diff": dict(diff, after=diff_text({"active_keyslots": active_keyslots(img.info(path))}))}

    return {"changed": True, "diff": diff, "apply": apply}


def _check_bitmaps(req, info, bitmaps):
    path, name, merge_from = req["path"], req["bitmap"], req["merge_from"]
    if info["format"] != "qcow2":
        raise ValidationError("%s is a %s image; persistent bitmaps need qcow2" % (path, info["format"]))
    state = req.get("bitmap_state") or "present"
    if state == "absent" and merge_from:
        raise ValidationError("merge_from makes no sense with bitmap_state=absent")
    for source in merge_from:
        if source not in bitmaps:
            raise ValidationError("merge_from names bitmap %r, which %s does not have (it has: %s)" % (source, path, ", ".join(sorted(bitmaps)) or "none"))
        if source == name:
            raise ValidationError("bitmap %r cannot be merged into itself" % name)
    for bitmap, facts in bitmaps.items():
        if "in-use" in facts["flags"] and (bitmap == name or bitmap in merge_from):
            raise ValidationError("bitmap %r of %s is in use or inconsistent (flags %s); stop the guest using the image first" % (bitmap, path, facts["flags"]))
    current, granularity = bitmaps.get(name), req["granularity"]
    if current and granularity and current["granularity"] != granularity and state != "absent":
        raise ValidationError(
            "bitmap %r exists with granularity %d, asked for %d; granularity is fixed at creation: remove the bitmap first"
            % (name, current["granularity"], granularity)
        )
    return state, current


def _bitmap_ops(img, req, state, current):
    name, granularity, merge_from = req["bitmap"], req["granularity"], req["merge_from"]
    if state == "absent":
        return [["--remove"]] if current else []
    ops = []
    if not current:
        ops.append(["--add"] + (["-g", str(granularity)] if granularity else []) + (["--disable"] if state == "disabled" else []))
    elif state == "enabled" and not current["enabled"]:
        ops.append(["--enable"])
    elif state == "disabled" and current["enabled"]:
        ops.append(["--disable"])
    if merge_from:
        if not current:
            needed = list(merge_from)
        else:
            ranges = img.bitmap_dirty_ranges(req["path"], [name, *merge_from])
            needed = [s for s in merge_from if not ranges_cover(ranges[name], ranges[s])]
        ops.extend(["--merge", source] for source in needed)
    return ops


def plan_bitmap(img, req):
    path, name = req["path"], req["bitmap"]
    if not name:
        raise ValidationError("action=bitmap needs bitmap")
    info = _require_image(img, path, "bitmap")
    state, current = _check_bitmaps(req, info, bitmaps_of(info))
    ops = _bitmap_ops(img, req, state, current)
    before = {name: {"granularity": current["granularity"], "enabled": current["enabled"]}} if current else {}
    after = {}
    if state != "absent":
        after = {
            name: {
                "granularity": current["granularity"] if current else (req["granularity"] or "default"),
                "enabled": (state != "disabled") if (not current or state != "present") else current["enabled"],
            }
        }
        merged = [op[1] for op in ops if op[0] == "--merge"]
        if merged:
            after[name]["merged_from"] = merged

    def apply():
        for op in ops:
            img.run(["bitmap", *op, "-f", "qcow2", path, name], "qemu-img bitmap %s %s" % (op[0], name))

    return {"changed": bool(ops), "diff": {"before": diff_text(before), "after": diff_text(after)}, "apply": apply if ops else None}


PLANNERS = {"create": plan_create, "convert": plan_convert, "resize": plan_resize, "amend": plan_amend, "bitmap": plan_bitmap}


def ensure_qemu_img(backends, params, check_mode):
    """Bring the image at ``params['path']`` to what ``params['action']`` asks; plan fully, then apply."""
    req = validate_request(params)
    img = ImageTool(backends.commands)
    plan = PLANNERS[req["action"]](img, req)
    result = {"changed": plan["changed"], "diff": plan["diff"], "warnings": []}
    result.update(plan.get("result") or {})
    if plan["changed"] and not check_mode:
        result.update(plan["apply"]() or {})
    info = img.info(req["path"])
    result.update(exists=info is not None, image=info or {}, summary=summary(info))
    return result
