# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The collection's one size parser: ``10G``, ``512MiB``, ``1GB``, ``2048kB`` or a plain integer.

Units follow libvirt's scaled integers (docs: formatdomain.html#memory-allocation), which also read
qemu-img's spellings: ``k``/``K``/``KiB`` and the other one-letter and ``*iB`` units are powers of
1024, ``KB``/``MB``/``GB``... powers of 1000, ``b``/``B``/``bytes`` are bytes.
"""

from __future__ import annotations

import re

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError

UNIT_FACTORS = {
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
    "pb": 1000**5,
    "p": 1024**5,
    "pib": 1024**5,
    "eb": 1000**6,
    "e": 1024**6,
    "eib": 1024**6,
}
# A size no disk, memory or page pool reaches (libvirt and qemu-img use unsigned 64-bit byte counts).
MAX_BYTES = 2**63 - 1
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def unit_factor(unit, what="size"):
    """Bytes per ``unit`` (case-insensitive, libvirt's spelling); ValidationError for an unknown unit."""
    factor = UNIT_FACTORS.get((unit or "b").strip().lower())
    if factor is None:
        raise ValidationError("%s: unknown size unit %r (use B, KiB, MiB, GiB, TiB, KB, MB, GB, or K, M, G, T)" % (what, unit))
    return factor


def parse_size(value, what="size", default_unit="B", minimum=0, maximum=MAX_BYTES):
    """Bytes for ``value`` (an integer in ``default_unit``, or text with a unit).

    Raises :class:`ValidationError` naming ``what`` for anything that is not a whole size, or that
    is outside ``[minimum, maximum]`` bytes.
    """
    if isinstance(value, bool) or value is None:
        raise ValidationError("%s %r is not a size: write an integer with an optional unit, e.g. 10GiB or 512M" % (what, value))
    if isinstance(value, int):
        number, unit = value, default_unit
        if number < 0:
            raise ValidationError("%s must not be negative, got %d" % (what, number))
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise ValidationError("%s %r is not a size: write an integer with an optional unit, e.g. 10GiB or 512M" % (what, value))
        number, unit = int(match.group(1)), match.group(2) or default_unit
    size = number * unit_factor(unit, what)
    if size < minimum:
        raise ValidationError("%s %r is too small: it must be at least %d bytes" % (what, value, minimum))
    if size > maximum:
        raise ValidationError("%s %r is too large: at most %d bytes (%s) are possible" % (what, value, maximum, format_size(maximum)))
    return size


def format_size(size):
    """``10737418240`` -> ``10GiB``: the largest binary unit that divides ``size`` evenly."""
    for unit in ("EiB", "PiB", "TiB", "GiB", "MiB", "KiB"):
        factor = UNIT_FACTORS[unit.lower()]
        if size and size % factor == 0:
            return "%d%s" % (size // factor, unit)
    return "%dB" % size
