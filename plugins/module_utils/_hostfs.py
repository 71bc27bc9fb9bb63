# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's one accessor for the host's /sys, /proc, /dev and /etc.

Every host module reads and writes through a :class:`HostFS`. Paths are always written as the
host sees them (``/sys/kernel/mm/ksm/run``); the accessor maps them below ``root``, so a unit or
integration test points ``root`` at a temporary tree laid out like the host and exercises the
same code as a real run.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError

# The ``root`` option of every host module (twin of the ``virtops.kvm._hostfs`` doc fragment).
HOSTFS_COMMON_ARGS = dict(
    root=dict(type="path", default="/"),
)


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
        except OSError as exc:
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
