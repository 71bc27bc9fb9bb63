# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The collection's one accessor for the host's /sys, /proc, /dev and /etc.

Every host module reads and writes through a :class:`HostFS`. Paths are always written as the
host sees them (``/sys/kernel/mm/ksm/run``); the accessor maps them below ``root``, so a unit or
integration test points ``root`` at a temporary tree laid out like the host and exercises the
same code as a real run.

It also carries the safety discipline every module gets for free:

- :func:`validate_path` / :func:`validate_name`: paths and names checked before any use (absolute,
  no control characters, no ``..``, inside the root);
- :meth:`HostFS.locked`: an ``fcntl`` lock around every read-modify-write of a host file, so two
  concurrent runs both land their change;
- :func:`private_tempdir`: a 0700 directory from ``mkdtemp`` for temporary and secret files, removed
  on every exit path including SIGTERM/SIGINT/SIGHUP;
- :meth:`HostFS.write_atomic`: temporary file with ``O_EXCL`` in the target's directory, fsync,
  rename, and a read-back that proves the bytes landed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import stat
import tempfile

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError

# The ``root`` option of every host module (twin of the ``virtops.kvm._hostfs`` doc fragment).
HOSTFS_COMMON_ARGS = dict(
    root=dict(type="path", default="/"),
)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
LOCK_DIRS = ("/run/lock", "/run", tempfile.gettempdir())


def validate_name(value, what="name", allow=r"[A-Za-z0-9_.+:@-]+"):
    """``value`` if it is a plain name (no ``/``, no control characters, not ``.``/``..``), else ValidationError."""
    text = "" if value is None else str(value)
    if not text or text in (".", "..") or text != text.strip() or not re.fullmatch(allow, text):
        raise ValidationError("%s %r is not a valid name: it must match %s, with no spaces, '/' or control characters" % (what, value, allow))
    return text


def validate_path(value, what="path", absolute=True, root=None):
    """``value`` normalised if it is a safe path, else :class:`ValidationError`.

    Safe means: text without control characters or surrounding white space, absolute (unless
    ``absolute`` is False), no ``..`` component, and, when ``root`` is given, inside that directory.
    """
    text = "" if value is None else str(value)
    if not text or text != text.strip():
        raise ValidationError("%s %r is not a path: give an absolute path with no surrounding white space" % (what, value))
    if _CONTROL.search(text):
        raise ValidationError("%s %r contains control characters (newline, tab, NUL...), which no path here may hold" % (what, value))
    if absolute and not text.startswith("/"):
        raise ValidationError("%s %r is not absolute: give the full path, starting with /" % (what, value))
    if ".." in text.split("/"):
        raise ValidationError("%s %r contains '..': give the path without parent references" % (what, value))
    norm = os.path.normpath(text)
    if root is not None:
        base = os.path.normpath(root)
        if norm != base and not norm.startswith(base.rstrip("/") + "/"):
            raise ValidationError("%s %r is outside %s, where it must be" % (what, value, base))
    return norm


@contextlib.contextmanager
def cleanup_on_signals(cleanup):
    """Run ``cleanup()`` when the block exits, also when SIGTERM, SIGINT or SIGHUP ends the process."""
    previous = {}

    def handler(signum, _frame):
        cleanup()
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: cleanup still runs on normal exit
            pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        cleanup()


@contextlib.contextmanager
def private_tempdir(prefix="virtops-", parent=None):
    """A fresh 0700 directory (``mkdtemp``), removed with its content on every exit path.

    Secret files go here (write them with :func:`write_private`), never to a predictable name.
    """
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(path, 0o700)
    with cleanup_on_signals(lambda: shutil.rmtree(path, ignore_errors=True)):
        yield path


def write_private(directory, name, content):
    """Create ``directory/name`` with mode 0600 and ``O_EXCL`` (never follows a planted file); returns its path."""
    path = os.path.join(directory, validate_name(name, "file name"))
    if isinstance(content, str):
        content = content.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    return path


class HostFS:
    """Read and write host files below ``root`` (``/`` on a real host)."""

    def __init__(self, root="/", atomic_move=None):
        self.root = os.path.abspath(root or "/")
        self._atomic_move = atomic_move

    def path(self, host_path):
        """The real path of ``host_path`` (an absolute path as the host sees it)."""
        if not host_path.startswith("/"):
            raise ValueError("host paths are absolute, got %r" % host_path)
        if self.root == "/":
            return host_path
        return os.path.join(self.root, host_path.lstrip("/"))

    def host_path(self, real_path):
        """Inverse of :meth:`path`: the path the host would show for ``real_path``."""
        if self.root == "/":
            return real_path
        rel = os.path.relpath(real_path, self.root)
        return "/" + ("" if rel == "." else rel)

    # -- reading -----------------------------------------------------------------------------
    def exists(self, host_path):
        return os.path.exists(self.path(host_path))

    def isdir(self, host_path):
        return os.path.isdir(self.path(host_path))

    def read(self, host_path, default=None):
        """The file's text stripped of surrounding white space, or ``default`` if unreadable."""
        try:
            with open(self.path(host_path), encoding="utf-8", errors="replace") as handle:
                return handle.read().strip()
        except OSError:
            return default

    def read_lines(self, host_path):
        text = self.read(host_path)
        return text.splitlines() if text else []

    def read_int(self, host_path, default=None):
        text = self.read(host_path)
        if text is None:
            return default
        try:
            return int(text.split()[0])
        except (ValueError, IndexError):
            return default

    def listdir(self, host_path):
        """Sorted entries of a directory, or ``[]`` when it does not exist."""
        try:
            return sorted(os.listdir(self.path(host_path)))
        except OSError:
            return []

    def readlink_name(self, host_path):
        """Base name of a symlink's target (``driver`` -> ``vfio-pci``), or ``None``."""
        try:
            return os.path.basename(os.readlink(self.path(host_path)))
        except OSError:
            return None

    def stat(self, host_path):
        try:
            return os.stat(self.path(host_path))
        except OSError:
            return None

    def is_char_device(self, host_path):
        st = self.stat(host_path)
        return st is not None and stat.S_ISCHR(st.st_mode)

    def inside(self, host_path):
        """True when ``host_path``, with symlinks resolved, stays below the root."""
        if self.root == "/":
            return True
        real = os.path.realpath(self.path(host_path))
        return real == self.root or real.startswith(self.root.rstrip("/") + "/")

    # -- locking -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, host_path):
        """Hold an exclusive ``fcntl`` lock for ``host_path`` while reading, changing and writing it.

        The lock lives in a lock file named after the file's real path (in /run/lock), not on the
        file itself: an atomic write replaces the file's inode, which would drop a lock held on it.
        """
        real = os.path.realpath(self.path(host_path))
        digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:24]
        handle = None
        for directory in LOCK_DIRS:
            try:
                handle = open(os.path.join(directory, "virtops-kvm-%s.lock" % digest), "a+b")  # noqa: SIM115
                break
            except OSError:
                continue
        if handle is None:
            raise HostError("cannot create a lock file for %s in any of %s" % (host_path, ", ".join(LOCK_DIRS)))
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield
        finally:
            handle.close()

    # -- writing -----------------------------------------------------------------------------
    def write(self, host_path, value):
        """Write a kernel attribute in place (sysfs/procfs files cannot be replaced atomically)."""
        try:
            with open(self.path(host_path), "w", encoding="utf-8") as handle:
                handle.write(str(value))
        except OSError as exc:
            raise HostError("cannot write %r to %s: %s" % (str(value), host_path, os.strerror(exc.errno) if exc.errno else exc)) from exc

    def write_atomic(self, host_path, content, mode=0o644):
        """Write a regular file atomically: temporary file in the same directory, fsync, rename.

        Returns ``True`` when the content changed.
        """
        real = self.path(host_path)
        if isinstance(content, str):
            content = content.encode("utf-8")
        try:
            with open(real, "rb") as handle:
                if handle.read() == content:
                    return False
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise HostError("cannot read %s: %s" % (host_path, exc)) from exc
        if not self.inside(host_path):
            raise HostError("refusing to write %s: it resolves outside %s" % (host_path, self.root))
        directory = os.path.dirname(real)
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".virtops-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(content)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, mode)
                if self._atomic_move is not None:
                    self._atomic_move(tmp, real)
                    # atomic_move keeps an existing file's mode and gives a new one the default:
                    # the mode asked for wins either way (0600 for files holding secrets).
                    os.chmod(real, mode)
                else:
                    os.replace(tmp, real)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            with open(real, "rb") as handle:
                if handle.read() != content:
                    raise HostError("wrote %s but reading it back gave other content; the file system may be full or failing" % host_path)
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise HostError("cannot write %s: the file system is read-only; nothing was written to it" % host_path) from exc
            raise HostError("cannot write %s: %s" % (host_path, exc)) from exc
        return True

    def remove(self, host_path):
        """Remove a regular file; ``True`` when something was removed."""
        try:
            os.unlink(self.path(host_path))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise HostError("cannot remove %s: %s" % (host_path, exc)) from exc
        return True


def hostfs_for(module, root=None):
    """The accessor a module uses: rooted at ``root`` (tests) or ``/``, writing via ``atomic_move``."""
    return HostFS(root or "/", atomic_move=module.atomic_move)
