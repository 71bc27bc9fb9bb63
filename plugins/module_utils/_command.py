# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The collection's one way to run external commands: argument lists, never a shell."""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError


class CommandRunner:
    """Runs commands through ``module.run_command`` and raises :class:`CommandError` on failure."""

    def __init__(self, module):
        self.module = module

    def which(self, name, required=False):
        return self.module.get_bin_path(name, required=required)

    def run(self, args, check=True, data=None, what=None, environ_update=None):
        """Run ``args`` (a list). Returns ``(rc, stdout, stderr)``; raises when ``check`` and rc != 0."""
        if not isinstance(args, (list, tuple)):
            raise TypeError("commands are argument lists")
        rc, out, err = self.module.run_command(list(args), data=data, binary_data=data is not None and not isinstance(data, str), environ_update=environ_update)
        if check and rc != 0:
            detail = (err or out or "").strip()
            raise CommandError(
                "%s failed (rc=%d): %s" % (what or args[0], rc, detail),
                cmd=list(args),
                rc=rc,
                stdout=out,
                stderr=err,
            )
        return rc, out, err
