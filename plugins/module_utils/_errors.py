# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The collection's one exception hierarchy.

Logic in module_utils raises these; the one boundary, :func:`._runner.run_module`, turns them into
``fail_json(msg=...)``. A message says what was asked, what was found, and what to do next.
"""

from __future__ import annotations


class VirtopsError(Exception):
    """Base of every error the collection raises on purpose.

    ``details`` are extra keys returned next to ``msg`` in the failed result.
    """

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.msg = msg
        self.details = details


class ValidationError(VirtopsError):
    """The user's input is wrong; nothing was changed."""


class LibvirtError(VirtopsError):
    """A libvirt call failed. ``msg`` keeps libvirt's own text; ``code`` is libvirt's error code."""

    def __init__(self, msg, code=None, domain=None, **details):
        super().__init__(msg, libvirt_error_code=code, **details)
        self.code = code
        self.domain = domain


class HostError(VirtopsError):
    """Reading or changing the host (sysfs, /etc, a command) failed."""


class CommandError(HostError):
    """An external command exited non-zero."""

    def __init__(self, msg, cmd=None, rc=None, stdout=None, stderr=None, **details):
        super().__init__(msg, cmd=cmd, rc=rc, stdout=stdout, stderr=stderr, **details)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
