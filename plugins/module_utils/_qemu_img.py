# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qemu-img for images outside storage pools: info, create, convert, resize, LUKS keyslots, bitmaps.

``qemu-img info --output=json --force-share`` is the source of truth for every comparison. Each
action reads the image, computes what differs from the request (the *plan*), and only then runs
qemu-img — check mode stops after the plan, so it reports exactly what the real run would do.

Passphrases reach qemu-img only as ``--object secret,id=...,file=...`` files of mode 0600 in a
directory of mode 0700 that is removed when the command returns; never on a command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time

from ansible_collections.virtops.kvm.plugins.module_utils._command import CommandRunner
from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError, HostError, ValidationError

ACTIONS = ("info", "create", "convert", "resize", "amend", "bitmap")
FORMATS = ("qcow2", "raw", "luks", "vmdk", "vdi", "vhdx", "vpc", "qed")
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGTPE])(?:I?B)?|(B))?\s*$", re.IGNORECASE)
LUKS_KEYSLOTS = 8
_PBKDF_ATTEMPTS = 8


def parse_size(value, what="size"):
    """Bytes from ``value``: an integer, or a number with a K/M/G/T/P/E suffix (powers of 1024, as qemu-img reads them)."""
    if value is None:
        return None
    if isinstance(value, int):
        if value < 0:
            raise ValidationError("%s must not be negative, got %d" % (what, value))
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValidationError("%s %r is not a size; write bytes or a number with K, M, G, T, P or E (powers of 1024), e.g. 10G" % (what, value))
    unit = (match.group(2) or match.group(3) or "").upper()
    return int(float(match.group(1)) * _UNITS[unit])


def qemu_opt_escape(text):
    """QEMU option values double their commas."""
    return str(text).replace(",", ",,")


@contextlib.contextmanager
def secret_objects(secrets):
    """Yield ``--object secret,...`` arguments for ``{id: bytes}``; the files are gone afterwards.

    The directory is created with mode 0700 and each file with mode 0600 (O_EXCL, no umask race).
    """
    tmpdir = tempfile.mkdtemp(prefix="virtops-qemu-img-")
    try:
        os.chmod(tmpdir, 0o700)
        args = []
        for sid, value in secrets.items():
            path = os.path.join(tmpdir, sid)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(value)
            args += ["--object", "secret,id=%s,file=%s" % (sid, qemu_opt_escape(path))]
        yield args
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _to_bytes(value):
    if value is None:
        return None
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


# ---------------------------------------------------------------- reading info


def encryption_of(info):
    """``(kind, slots)``: kind ``luks`` (a LUKS image), ``qcow2`` (qcow2 with LUKS encryption) or None."""
    if not info:
        return None, None
    data = (info.get("format-specific") or {}).get("data") or {}
    if info.get("format") == "luks":
        return "luks", data.get("slots") or []
    encrypt = data.get("encrypt") if isinstance(data, dict) else None
    if info.get("format") == "qcow2" and encrypt and encrypt.get("format") == "luks":
        return "qcow2", encrypt.get("slots") or []
    return None, None


def active_keyslots(info):
    _kind, slots = encryption_of(info)
    return [i for i, slot in enumerate(slots or []) if slot.get("active")]


def bitmaps_of(info):
    """``{name: {granularity, enabled, flags}}`` of a qcow2 image's persistent bitmaps."""
    data = ((info or {}).get("format-specific") or {}).get("data") or {}
    found = {}
    for bitmap in data.get("bitmaps") or []:
        flags = bitmap.get("flags") or []
        found[bitmap["name"]] = {"granularity": bitmap.get("granularity"), "enabled": "auto" in flags, "flags": flags}
    return found


def summary(info):
    """The facts the actions compare, as a small dict (also what diffs show)."""
    if not info:
        return {}
    data = (info.get("format-specific") or {}).get("data") or {}
    kind, _slots = encryption_of(info)
    out = {
        "format": info.get("format"),
        "virtual_size": info.get("virtual-size"),
        "backing_file": info.get("full-backing-filename") or info.get("backing-filename"),
        "backing_format": info.get("backing-filename-format"),
        "encrypted": bool(info.get("encrypted")) or kind is not None,
    }
    if info.get("format") == "qcow2":
        out["compression_type"] = data.get("compression-type")
    if kind:
        out["active_keyslots"] = active_keyslots(info)
    bitmaps = bitmaps_of(info)
    if bitmaps:
        out["bitmaps"] = {name: {"granularity": b["granularity"], "enabled": b["enabled"]} for name, b in sorted(bitmaps.items())}
    return out


def _diff_text(facts):
    if not facts:
        return ""
    return json.dumps(facts, indent=2, sort_keys=True) + "\n"


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


class QemuImg:
    """Runs qemu-img (and qemu-nbd to read bitmaps) through a CommandRunner-like ``runner``."""

    def __init__(self, runner, qemu_img="qemu-img", qemu_nbd="qemu-nbd"):
        self.runner = runner
        self.qemu_img = qemu_img
        self.qemu_nbd = qemu_nbd

    def run(self, args, what, check=True):
        return self.runner.run([self.qemu_img, *args], check=check, what=what)

    def run_pbkdf(self, args, what, cleanup=None):
        """Run a command that benchmarks LUKS PBKDF2 iterations.

        qemu 7.x times a first short PBKDF2 run with the thread's CPU clock and gives up with
        "Unable to get accurate CPU usage" when that clock did not tick (common on hosts with
        tick-based CPU accounting); nothing was written then, so the command is retried.
        """
        for attempt in range(_PBKDF_ATTEMPTS):
            try:
                return self.run(args, what)
            except CommandError as exc:
                if "Unable to get accurate CPU usage" not in (exc.stderr or "") or attempt == _PBKDF_ATTEMPTS - 1:
                    raise
                if cleanup:
                    cleanup()
        return None  # not reached

    def info(self, path):
        """``qemu-img info --output=json --force-share`` of ``path``, or None when the file does not exist."""
        if not os.path.lexists(path):
            return None
        _rc, out, _err = self.run(["info", "--output=json", "--force-share", path], "qemu-img info %s" % path)
        return json.loads(out)

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
                "qemu-img map", check=False,
            )
        if rc == 0:
            return True
        if "Invalid password" in (err or ""):
            return False
        raise CommandError("qemu-img could not open %s to test a passphrase: %s" % (path, (err or "").strip()), rc=rc, stderr=err)

    def bitmap_dirty_ranges(self, path, names):
        """``{bitmap: [(start, end), ...]}`` dirty ranges, read through a read-only qemu-nbd export."""
        tmpdir = tempfile.mkdtemp(prefix="virtops-qemu-nbd-")
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
            shutil.rmtree(tmpdir, ignore_errors=True)

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


# ---------------------------------------------------------------- actions


def _need(params, *names, action):
    missing = [n for n in names if params.get(n) in (None, "", [])]
    if missing:
        raise ValidationError("action=%s needs %s" % (action, ", ".join(missing)))


def _require_image(info, path, action):
    if info is None:
        raise ValidationError("action=%s: image %s does not exist" % (action, path))
    return info


def plan_create(img, params):
    path = params["path"]
    fmt = params.get("format") or "qcow2"
    encrypted = fmt == "luks" or bool(params.get("encrypt"))
    if params.get("encrypt") and fmt != "qcow2":
        raise ValidationError("encrypt=true is for qcow2 images (format=%s); for a plain LUKS image use format=luks" % fmt)
    if encrypted and not params.get("secret"):
        raise ValidationError("an encrypted image (format=%s%s) needs secret, its first passphrase" % (fmt, ", encrypt=true" if params.get("encrypt") else ""))
    if params.get("compression_type") and fmt != "qcow2":
        raise ValidationError("compression_type is a qcow2 option, not one of format=%s" % fmt)
    size = parse_size(params.get("size"))
    backing = params.get("backing_file")
    backing_format = params.get("backing_format")
    if backing:
        if fmt not in ("qcow2", "qed", "vmdk"):
            raise ValidationError("format=%s cannot have a backing file; use qcow2" % fmt)
        backing_abs = backing if os.path.isabs(backing) else os.path.join(os.path.dirname(os.path.abspath(path)), backing)
        backing_info = img.info(backing_abs)
        if backing_info is None:
            raise ValidationError("backing_file %s does not exist" % backing_abs)
        backing_format = backing_format or backing_info["format"]
    elif size is None:
        raise ValidationError("action=create needs size (or a backing_file to take the size from)")

    want = {"format": fmt, "encrypted": encrypted}
    if size is not None:
        want["virtual_size"] = size
    if backing:
        want["backing_file"] = backing_abs
        want["backing_format"] = backing_format
    if params.get("compression_type"):
        want["compression_type"] = params["compression_type"]

    info = img.info(path)
    have = summary(info)
    mismatches = []
    if info is not None:
        for key, value in want.items():
            current = have.get(key)
            wanted = -(-value // 512) * 512 if key == "virtual_size" else value  # qemu rounds sizes up to whole sectors
            if current != wanted:
                mismatches.append("%s is %s, asked for %s" % (key, current, wanted))
        if not mismatches:
            return info, have, want, None
        if not params.get("force"):
            raise ValidationError(
                "image %s exists and differs: %s. qemu-img create would destroy its data: use force=true to recreate it, "
                "or action=resize/convert to change it" % (path, "; ".join(mismatches)),
                mismatches=mismatches,
            )
    opts = []
    if fmt == "qcow2" and params.get("compression_type"):
        opts.append("compression_type=%s" % params["compression_type"])
    if params.get("preallocation"):
        opts.append("preallocation=%s" % params["preallocation"])
    if params.get("extent_size_hint") is not None:
        opts.append("extent_size_hint=%d" % parse_size(params["extent_size_hint"], "extent_size_hint"))
    if params.get("cluster_size") is not None:
        opts.append("cluster_size=%d" % parse_size(params["cluster_size"], "cluster_size"))
    secrets = {}
    if encrypted:
        secrets["sec0"] = _to_bytes(params["secret"])
        prefix = "" if fmt == "luks" else "encrypt."
        if fmt == "qcow2":
            opts.append("encrypt.format=luks")
        opts.append("%skey-secret=sec0" % prefix)
        if params.get("iter_time"):
            opts.append("%siter-time=%d" % (prefix, params["iter_time"]))
    args = ["create", "-q", "-f", fmt]
    if opts:
        args += ["-o", ",".join(opts)]
    if backing:
        args += ["-b", backing, "-F", backing_format]
    args.append(path)
    if size is not None:
        args.append(str(size))
    return info, have, want, {"args": args, "secrets": secrets, "recreate": info is not None, "mismatches": mismatches}


def do_create(img, params, check_mode):
    path = params["path"]
    info, have, want, plan = plan_create(img, params)
    result = {"changed": plan is not None, "diff": {"before": _diff_text(have), "after": _diff_text(dict(have, **want) if plan else have)}}
    if plan and not check_mode:
        existed = info is not None

        def cleanup():
            if not existed and os.path.exists(path):
                os.unlink(path)  # leave nothing half-made behind

        try:
            with secret_objects(plan["secrets"]) as objects:
                args = plan["args"]
                img.run_pbkdf([args[0], *objects, *args[1:]], "qemu-img create %s" % path, cleanup=cleanup)
        except CommandError:
            cleanup()
            raise
    return result


def do_convert(img, params, check_mode, move=os.replace):
    _need(params, "source", action="convert")
    path, source = params["path"], params["source"]
    fmt = params.get("format") or "qcow2"
    source_info = img.info(source)
    if source_info is None:
        raise ValidationError("source image %s does not exist; nothing was converted" % source)
    if encryption_of(source_info)[0]:
        raise ValidationError("source image %s is encrypted; converting encrypted images is not supported by this module" % source)
    if params.get("compression_type") and fmt != "qcow2":
        raise ValidationError("compression_type is a qcow2 option, not one of format=%s" % fmt)
    source_format = params.get("source_format") or source_info["format"]
    if source_format != source_info["format"]:
        raise ValidationError("source %s is a %s image, not %s (source_format)" % (source, source_info["format"], source_format))
    info = img.info(path)
    have = summary(info)
    reasons = []
    if info is None:
        reasons.append("%s does not exist" % path)
    elif info["format"] != fmt:
        reasons.append("%s is %s, asked for %s" % (path, info["format"], fmt))
    elif info.get("virtual-size") != source_info.get("virtual-size"):
        reasons.append("virtual size %s differs from the source's %s" % (info.get("virtual-size"), source_info.get("virtual-size")))
    elif encryption_of(info)[0]:
        reasons.append("%s is encrypted" % path)
    else:
        rc, out, err = img.run(["compare", "-q", "-U", "-f", source_format, "-F", fmt, source, path], "qemu-img compare", check=False)
        if rc == 1:
            reasons.append("content differs (qemu-img compare)")
        elif rc != 0:
            raise CommandError("qemu-img compare %s %s failed (rc=%d): %s" % (source, path, rc, (err or out or "").strip()), rc=rc, stderr=err)
    want = dict(have, format=fmt, virtual_size=source_info.get("virtual-size"), content="same as %s" % source)
    result = {
        "changed": bool(reasons), "reasons": reasons,
        "diff": {"before": _diff_text(dict(have, content="differs" if reasons else "same as %s" % source) if have else {}), "after": _diff_text(want)},
    }
    if reasons and not check_mode:
        tmp = "%s.virtops-convert-%d" % (path, os.getpid())
        args = ["convert", "-q", "-f", source_format, "-O", fmt]
        if params.get("compress"):
            args.append("-c")
        opts = []
        if params.get("compression_type"):
            opts.append("compression_type=%s" % params["compression_type"])
        if params.get("preallocation"):
            opts.append("preallocation=%s" % params["preallocation"])
        if opts:
            args += ["-o", ",".join(opts)]
        try:
            img.run([*args, source, tmp], "qemu-img convert %s to %s" % (source, path))
            move(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return result


def do_resize(img, params, check_mode):
    _need(params, "size", action="resize")
    path = params["path"]
    info = _require_image(img.info(path), path, "resize")
    size = parse_size(params["size"])
    have = summary(info)
    current = info["virtual-size"]
    target = -(-size // 512) * 512
    kind, _slots = encryption_of(info)
    if target < current and not params.get("allow_shrink"):
        raise ValidationError(
            "asked to shrink %s from %d to %d bytes; shrinking discards data past the new end: set allow_shrink=true if that is intended"
            % (path, current, target), current_size=current, requested_size=target,
        )
    if kind and not params.get("secret"):
        raise ValidationError("%s is encrypted; resizing it needs secret" % path)
    changed = target != current
    result = {"changed": changed, "diff": {"before": _diff_text(have), "after": _diff_text(dict(have, virtual_size=target))}}
    if changed and not check_mode:
        args = ["resize", "-q"]
        if target < current:
            args.append("--shrink")
        if params.get("preallocation") and target > current:
            args.append("--preallocation=%s" % params["preallocation"])
        secrets = {"sec0": _to_bytes(params["secret"])} if kind else {}
        with secret_objects(secrets) as objects:
            if kind:
                args += [*objects, "--image-opts", img.image_opts(path, info, "sec0")]
            else:
                args += ["-f", info["format"], path]
            img.run([*args, str(target)], "qemu-img resize %s" % path)
    return result


def do_amend(img, params, check_mode):
    """Add or remove a LUKS keyslot, idempotent by ``qemu-img info`` and by trying passphrases."""
    path = params["path"]
    info = _require_image(img.info(path), path, "amend")
    kind, slots = encryption_of(info)
    if not kind:
        raise ValidationError("%s is a %s image without LUKS encryption; keyslots exist only on luks and encrypted qcow2 images" % (path, info["format"]))
    state = params.get("keyslot_state") or "active"
    keyslot = params.get("keyslot")
    if keyslot is not None and not 0 <= keyslot < len(slots):
        raise ValidationError("keyslot %d does not exist; %s has keyslots 0 to %d" % (keyslot, path, len(slots) - 1))
    active = active_keyslots(info)
    secret, new_secret, old_secret = (_to_bytes(params.get(k)) for k in ("secret", "new_secret", "old_secret"))
    opener = secret if secret is not None else (old_secret if state == "inactive" else None)
    if opener is None:
        raise ValidationError("action=amend needs secret, a passphrase that opens %s" % path)

    opts = []
    if state == "active":
        if new_secret is None:
            raise ValidationError("keyslot_state=active needs new_secret, the passphrase to add")
        if not img.unlocks(path, info, opener):
            raise ValidationError("secret does not open %s (no active keyslot accepts it); nothing was changed" % path)
        if img.unlocks(path, info, new_secret):
            changed = False  # qemu-img cannot tell which slot a passphrase opens; present anywhere is enough
        elif keyslot is not None and keyslot in active:
            raise ValidationError(
                "keyslot %d of %s holds another passphrase; remove it first (keyslot_state=inactive, keyslot=%d)" % (keyslot, path, keyslot)
            )
        elif len(active) >= len(slots):
            raise ValidationError("all %d keyslots of %s are in use; remove one first" % (len(slots), path))
        else:
            changed = True
            opts = ["state=active", "new-secret=new0"]
            if keyslot is not None:
                opts.append("keyslot=%d" % keyslot)
            if params.get("iter_time"):
                opts.append("iter-time=%d" % params["iter_time"])
        after_active = sorted(set(active) | ({keyslot if keyslot is not None else min(set(range(len(slots))) - set(active))} if changed else set()))
    else:
        if old_secret is None and keyslot is None:
            raise ValidationError("keyslot_state=inactive needs old_secret (the passphrase to remove) or keyslot")
        if old_secret is not None and keyslot is not None:
            raise ValidationError("give old_secret or keyslot to remove, not both")
        if secret is not None and not img.unlocks(path, info, secret):
            raise ValidationError("secret does not open %s (no active keyslot accepts it); nothing was changed" % path)
        if keyslot is not None:
            changed = keyslot in active
            removed = {keyslot}
            opts = ["state=inactive", "keyslot=%d" % keyslot]
        else:
            changed = img.unlocks(path, info, old_secret)
            removed = None  # which slots old_secret opens is known only to qemu-img
            opts = ["state=inactive", "old-secret=old0"]
        last = len(active) == 1 if removed is None else set(active) <= removed
        if changed and last and not params.get("force"):
            raise ValidationError(
                "removing this passphrase would leave %s with no active keyslot and its data unreadable forever; "
                "add another passphrase first, or set force=true" % path, active_keyslots=active,
            )
        after_active = [s for s in active if s not in (removed or set())] if removed is not None else ("unknown" if changed else active)
    before = {"active_keyslots": active}
    result = {"changed": changed, "diff": {"before": _diff_text(before), "after": _diff_text({"active_keyslots": after_active})}}
    if changed and not check_mode:
        secrets = {"sec0": opener}
        if "new-secret=new0" in opts:
            secrets["new0"] = new_secret
        if "old-secret=old0" in opts:
            secrets["old0"] = old_secret
        args = ["amend", "-q"]
        if params.get("force"):
            args.append("--force")
        prefix = "encrypt." if kind == "qcow2" else ""
        with secret_objects(secrets) as objects:
            img.run_pbkdf([*args, *objects, "--image-opts", img.image_opts(path, info, "sec0"), "-o", ",".join(prefix + o for o in opts)],
                          "qemu-img amend %s" % path)
        result["diff"]["after"] = _diff_text({"active_keyslots": active_keyslots(img.info(path))})
    return result


def do_bitmap(img, params, check_mode):
    _need(params, "bitmap", action="bitmap")
    path, name = params["path"], params["bitmap"]
    info = _require_image(img.info(path), path, "bitmap")
    if info["format"] != "qcow2":
        raise ValidationError("%s is a %s image; persistent bitmaps need qcow2" % (path, info["format"]))
    state = params.get("bitmap_state") or "present"
    bitmaps = bitmaps_of(info)
    current = bitmaps.get(name)
    granularity = parse_size(params.get("granularity"), "granularity") if params.get("granularity") is not None else None
    merge_from = params.get("merge_from") or []
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
    if current and granularity and current["granularity"] != granularity and state != "absent":
        raise ValidationError(
            "bitmap %r exists with granularity %d, asked for %d; granularity is fixed at creation: remove the bitmap first"
            % (name, current["granularity"], granularity)
        )
    ops = []
    if state == "absent":
        if current:
            ops.append(["--remove"])
    else:
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
                ranges = img.bitmap_dirty_ranges(path, [name, *merge_from])
                needed = [s for s in merge_from if not ranges_cover(ranges[name], ranges[s])]
            ops.extend(["--merge", source] for source in needed)
    before = {name: {"granularity": current["granularity"], "enabled": current["enabled"]}} if current else {}
    after = {}
    if state != "absent":
        after = {name: {
            "granularity": current["granularity"] if current else (granularity or "default"),
            "enabled": (state != "disabled") if (not current or state != "present") else current["enabled"],
        }}
        merged = [op[1] for op in ops if op[0] == "--merge"]
        if merged:
            after[name]["merged_from"] = merged
    result = {"changed": bool(ops), "diff": {"before": _diff_text(before), "after": _diff_text(after)}}
    if ops and not check_mode:
        for op in ops:
            img.run(["bitmap", *op, "-f", "qcow2", path, name], "qemu-img bitmap %s %s" % (op[0], name))
    return result


def apply(img, params, check_mode=False, move=os.replace):
    """Run ``params['action']`` on ``params['path']``; returns the result dict (with ``diff``)."""
    action = params.get("action") or "info"
    if action not in ACTIONS:
        raise ValidationError("unknown action %r; use one of %s" % (action, ", ".join(ACTIONS)))
    if action == "info":
        info = img.info(params["path"])
        return {"changed": False, "exists": info is not None, "image": info or {}, "summary": summary(info)}
    handler = {"create": do_create, "resize": do_resize, "amend": do_amend, "bitmap": do_bitmap}.get(action)
    result = do_convert(img, params, check_mode, move=move) if action == "convert" else handler(img, params, check_mode)
    info = img.info(params["path"])
    result.update(exists=info is not None, image=info or {}, summary=summary(info))
    return result


def run_qemu_img(module):
    runner = CommandRunner(module)
    qemu_img = runner.which("qemu-img")
    if not qemu_img:
        raise HostError("qemu-img is not installed (Debian/Ubuntu: apt-get install qemu-utils; RHEL: dnf install qemu-img)")
    qemu_nbd = runner.which("qemu-nbd") or "qemu-nbd"
    img = QemuImg(runner, qemu_img=qemu_img, qemu_nbd=qemu_nbd)
    result = apply(img, module.params, check_mode=module.check_mode, move=module.atomic_move)
    if not module._diff:  # pylint: disable=protected-access
        result.pop("diff", None)
    return result
