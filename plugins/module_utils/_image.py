# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Reading disk images with qemu-img: the shared core of qemu_img and qemu_img_info.

``qemu-img info --output=json --force-share`` is the source of truth. :class:`ImageReader` runs it
through the run's command runner; :func:`summary` reduces its JSON to the facts the modules compare
and show (format, virtual size, backing file, compression type, encryption, keyslots, bitmaps).
"""

from __future__ import annotations

import json
import os
import random
import time

from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError, HostError, ValidationError, VirtopsError

FORMATS = ("qcow2", "raw", "luks", "vmdk", "vdi", "vhdx", "vpc", "qed")
# Formats qemu-img reads that may appear as a backing or source format (what `qemu-img info` names).
READ_FORMATS = (*FORMATS, "qcow", "cloop", "dmg", "parallels", "bochs", "vvfat")
QEMU_IMG_MISSING = "qemu-img is not installed (Debian/Ubuntu: apt-get install qemu-utils; RHEL: dnf install qemu-img)"

# qemu 7.x times a first short PBKDF2 run of a new LUKS key with the thread's CPU clock. On kernels
# that account CPU time per tick that clock moves once a tick (every 4 ms at HZ=250); when the run
# fits between two ticks, qemu gives up with this message before it writes anything. On a 2-core
# EPYC at HZ=250 that is 15 % of attempts, and attempts made back to back keep the same offset to the
# tick and fail in runs (five in a row seen under load), so retries wait a random part of a tick first.
LUKS_BENCHMARK_FLAKE = "Unable to get accurate CPU usage"
LUKS_BENCHMARK_ATTEMPTS = 32


def retry_luks_benchmark(action, failed_benchmark, cleanup=None):
    """``action()``, again while ``failed_benchmark(exc)`` says qemu's LUKS benchmark misread the clock.

    ``cleanup`` runs before each retry (a failed attempt may leave an empty file behind).
    """
    for attempt in range(LUKS_BENCHMARK_ATTEMPTS):
        try:
            return action()
        except VirtopsError as exc:
            if not failed_benchmark(exc) or attempt == LUKS_BENCHMARK_ATTEMPTS - 1:
                raise
        if cleanup:
            cleanup()
        time.sleep(random.uniform(0.001, 0.011))
    return None  # not reached


def qemu_opt_escape(text):
    """QEMU option values double their commas."""
    return str(text).replace(",", ",,")


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
    """The facts the modules compare, as a small dict (also what diffs show)."""
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


def diff_text(facts):
    """JSON text of ``facts`` for a diff (empty for no image)."""
    if not facts:
        return ""
    return json.dumps(facts, indent=2, sort_keys=True) + "\n"


class ImageReader:
    """Runs ``qemu-img`` through a CommandRunner-like ``runner`` (``run(args, check, what)``, ``which(name)``)."""

    def __init__(self, runner, qemu_img=None):
        self.runner = runner
        if qemu_img is None:
            which = getattr(runner, "which", None)
            qemu_img = which("qemu-img") if which is not None else "qemu-img"
        if not qemu_img:
            raise HostError(QEMU_IMG_MISSING)
        self.qemu_img = qemu_img

    def run(self, args, what, check=True):
        return self.runner.run([self.qemu_img, *args], check=check, what=what)

    def info(self, path, chain=False):
        """``qemu-img info --output=json --force-share`` of ``path``, or None when there is no file.

        With ``chain``, the list of infos of the image and its backing files (``--backing-chain``).
        """
        if not os.path.lexists(path):
            return None
        if os.path.isdir(path):
            raise ValidationError("%s is a directory, not a disk image" % path)
        args = ["info", "--output=json", "--force-share"] + (["--backing-chain"] if chain else [])
        try:
            _rc, out, _err = self.run([*args, path], "qemu-img info %s" % path)
        except CommandError as exc:
            if not os.path.exists(path):
                raise ValidationError("%s is a symbolic link to a file that does not exist" % path) from exc
            raise
        try:
            return json.loads(out)
        except ValueError as exc:
            raise HostError("qemu-img info %s printed no JSON: %s" % (path, (out or "").strip()[:200])) from exc
