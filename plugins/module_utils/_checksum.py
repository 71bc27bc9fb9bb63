# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Checksums for what the collection stores: parse the user's ``<algorithm>:<hex>``, hash, read back.

Write-then-verify: whatever a module stores (a volume upload, a cloud-init seed) is read back
after the write and hashed again, because a store can report success and hold something else
(libvirt 9.0's upload stream does not report ENOSPC on a sparse target: the volume then holds
zeros). The helpers here do the reading:

- :func:`parse_checksum` validates ``checksum`` options fully before anything is changed: a blank
  value, an empty digest (``sha256:``), an unknown or variable-length algorithm (``shake_128``) and
  a digest of the wrong length or not hexadecimal are each a clear :class:`ValidationError`;
- :class:`Hasher` hashes while data streams and compares against the expected :class:`Checksum`;
- :func:`hash_volume` reads a libvirt volume back through a download stream (any pool type, local
  or remote); :func:`hash_file` reads a local file.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError

DEFAULT_ALGORITHM = "sha256"
# Fixed-length digests every Python has (hashlib.algorithms_guaranteed without the shake_* XOFs,
# whose digest length is the caller's choice and so cannot be checked against a given digest).
ALGORITHMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_224", "sha3_256", "sha3_384", "sha3_512", "blake2b", "blake2s")
CHUNK = 1024 * 1024
_HEX = re.compile(r"^[0-9a-f]+$")
_ALIASES = {"sha-1": "sha1", "sha-224": "sha224", "sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512"}


class Checksum:
    """An expected digest: ``algorithm`` (hashlib's name) and ``digest`` (lower-case hex)."""

    def __init__(self, algorithm, digest):
        self.algorithm = algorithm
        self.digest = digest

    def matches(self, hexdigest):
        return hmac.compare_digest(self.digest, (hexdigest or "").lower())

    def __str__(self):
        return "%s:%s" % (self.algorithm, self.digest)

    def __eq__(self, other):
        return isinstance(other, Checksum) and (self.algorithm, self.digest) == (other.algorithm, other.digest)

    def __hash__(self):
        return hash((self.algorithm, self.digest))


def check_algorithm(name, what="checksum"):
    """hashlib's name for ``name`` (case-insensitive, ``SHA-256`` accepted), or ValidationError."""
    algo = _ALIASES.get((name or "").strip().lower(), (name or "").strip().lower())
    if algo not in ALGORITHMS:
        if algo.startswith("shake"):
            raise ValidationError(
                "%s: algorithm %s has no fixed digest length, so a digest cannot be checked against it; use one of %s" % (what, name, ", ".join(ALGORITHMS))
            )
        raise ValidationError("%s: unknown algorithm %r; use one of %s (e.g. sha256:<hex digest>)" % (what, name, ", ".join(ALGORITHMS)))
    return algo


def parse_checksum(text, what="checksum"):
    """The :class:`Checksum` in ``text`` (``<algorithm>:<hex>``, or a bare sha256 hex digest).

    ``None`` (the option not given) returns ``None``: nothing to verify. Anything given must be a
    complete checksum; a blank string or an empty digest is an error, never a silent skip.
    """
    if text is None:
        return None
    raw = str(text)
    if not raw.strip():
        raise ValidationError("%s is blank: give <algorithm>:<hex digest> (e.g. sha256:9f86d0...) or leave the option out" % what)
    algo_text, sep, digest = raw.strip().rpartition(":")
    algo = check_algorithm(algo_text if sep else DEFAULT_ALGORITHM, what)
    digest = digest.strip().lower()
    if not digest:
        raise ValidationError("%s %r has no digest after the algorithm: give %s:<hex digest>" % (what, raw, algo))
    if not _HEX.match(digest):
        raise ValidationError("%s %r: the digest is not hexadecimal" % (what, raw))
    length = hashlib.new(algo).digest_size * 2
    if len(digest) != length:
        raise ValidationError("%s %r: a %s digest has %d hex digits, this one has %d" % (what, raw, algo, length, len(digest)))
    return Checksum(algo, digest)


class Hasher:
    """Hash data as it streams; ``algorithm`` defaults to the expected checksum's, else sha256."""

    def __init__(self, expected=None, algorithm=None):
        self.expected = expected
        self.algorithm = algorithm or (expected.algorithm if expected is not None else DEFAULT_ALGORITHM)
        self._hash = hashlib.new(self.algorithm)
        self.length = 0

    def update(self, data):
        self._hash.update(data)
        self.length += len(data)

    def hexdigest(self):
        return self._hash.hexdigest()

    def matches(self):
        """True when no checksum was expected or the data hashed so far has it."""
        return self.expected is None or self.expected.matches(self.hexdigest())


def hash_bytes(data, algorithm=DEFAULT_ALGORITHM):
    return hashlib.new(algorithm, data).hexdigest()


def hash_file(path, algorithm=DEFAULT_ALGORITHM, length=None):
    """Hex digest of the first ``length`` bytes of ``path`` (all of it when ``length`` is None)."""
    hasher = hashlib.new(algorithm)
    remaining = length
    try:
        with open(path, "rb") as handle:
            while remaining is None or remaining > 0:
                chunk = handle.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    break
                hasher.update(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
    except OSError as exc:
        raise HostError("cannot read %s back to verify it: %s" % (path, exc.strerror or exc)) from exc
    if remaining:
        raise HostError("%s holds %d bytes fewer than were written to it" % (path, remaining))
    return hasher.hexdigest()


def hash_volume(client, volume, length, algorithm=DEFAULT_ALGORITHM, what=None):
    """Hex digest of the first ``length`` bytes of a libvirt volume, read back through a download stream.

    ``client`` is a :class:`LibvirtClient`; errors become :class:`LibvirtError`. A volume that gives
    fewer than ``length`` bytes is a :class:`HostError` (it does not hold what was written).
    """
    name = what or "volume %s" % volume.name()
    hasher = hashlib.new(algorithm)
    got = 0
    stream = client.call("cannot open a libvirt stream", client.conn.newStream, 0)
    finished = False
    try:
        client.call("cannot read %s back" % name, volume.download, stream, 0, length, 0)
        while got < length:
            chunk = client.call("cannot read %s back" % name, stream.recv, min(CHUNK, length - got))
            if isinstance(chunk, int):  # -2: would block (not on a blocking stream)
                continue
            if not chunk:
                break
            hasher.update(chunk)
            got += len(chunk)
        client.call("cannot finish reading %s back" % name, stream.finish)
        finished = True
    finally:
        if not finished:
            try:
                stream.abort()
            except Exception:  # pylint: disable=broad-exception-caught  # the read's own error is the one to report
                pass
    if got < length:
        raise HostError("%s gave back %d of the %d bytes written to it" % (name, got, length))
    return hasher.hexdigest()
