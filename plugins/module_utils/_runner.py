# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The module contract: :func:`run_module` is the only code that talks to ``AnsibleModule``.

A module file builds its argument spec, creates the ``AnsibleModule`` and calls
``run_module(module, ensure_<object>)``. The logic's one entry point has the signature::

    ensure_<object>(backends, params, check_mode) -> dict

and returns the result: ``changed``, the module's own keys, ``diff`` (``{"before": ..., "after": ...}``
or a list of such) and ``warnings`` (a list of strings). Check mode and the real run come from the
same comparison; only the side effects are skipped. :func:`run_module` owns what Ansible sees:
it emits the warnings, keeps ``diff`` only when diff mode is on and something changed, and turns
:class:`VirtopsError` into ``fail_json``.

:class:`Backends` is everything outside the process the logic may touch, built lazily from the
module's parameters so a module that never reads libvirt never connects. Unit tests build one
directly (``Backends(libvirt=client, hostfs=HostFS(tmp), commands=FakeRunner())``).
"""

from __future__ import annotations

import traceback

from ansible_collections.virtops.kvm.plugins.module_utils._command import CommandRunner
from ansible_collections.virtops.kvm.plugins.module_utils._errors import VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import DEFAULT_URI, is_local_uri, open_client, require_libvirt

_UNSET = object()


class Backends:
    """The libvirt client, the host filesystem, the command runner and netlink, for one run.

    ``root`` (the host modules' option) confines the run: under a root other than ``/`` no command
    with a host effect runs (:attr:`confined`) and :attr:`netlink` is ``None``, so nothing reaches the
    real host. ``host_local`` says whether host-side steps that go with a libvirt change (``ip link``
    for a network's bridge) may run on this machine: only for a local URI and an unconfined root.
    """

    def __init__(self, libvirt=None, hostfs=None, commands=None, netlink=_UNSET, *, uri=None, root="/", read_only=False, module=None):
        self._libvirt = libvirt
        self._hostfs = hostfs
        self._commands = commands
        self._netlink = netlink
        self._module = module
        self.uri = uri or (libvirt.uri if libvirt is not None else DEFAULT_URI)
        self.root = root or "/"
        self.read_only = read_only
        self._owned = []

    @classmethod
    def from_module(cls, module, read_only=False):
        params = module.params
        return cls(uri=params.get("uri"), root=params.get("root") or "/", read_only=read_only, module=module)

    # -- the backends, each built on first use ---------------------------------------------------
    @property
    def libvirt(self):
        if self._libvirt is None:
            if self._module is not None:
                require_libvirt(self._module)
            self._libvirt = open_client(self.uri, read_only=self.read_only)
            self._owned.append(self._libvirt)
        return self._libvirt

    @property
    def hostfs(self):
        if self._hostfs is None:
            move = self._module.atomic_move if self._module is not None else None
            self._hostfs = HostFS(self.root, atomic_move=move)
        return self._hostfs

    @property
    def commands(self):
        if self._commands is None:
            if self._module is None:
                raise RuntimeError("no command runner was given to these backends")
            self._commands = CommandRunner(self._module)
        return self._commands

    @property
    def netlink(self):
        """The host's netlink (``None`` under a fake root: the real host's links are not the tree's)."""
        if self._netlink is _UNSET:
            if self.confined:
                self._netlink = None
            else:
                # imported here: pyroute2 is needed only by the modules that use netlink
                from ansible_collections.virtops.kvm.plugins.module_utils._netlink import open_netlink  # noqa: PLC0415

                self._netlink = open_netlink()
                self._owned.append(self._netlink)
        return self._netlink

    # -- confinement -------------------------------------------------------------------------
    @property
    def confined(self):
        """True when ``root`` is not ``/``: the run must not touch the real host beyond that tree."""
        return self.root != "/"

    @property
    def host_local(self):
        """True when host-side steps for the libvirt URI may run on this machine."""
        return not self.confined and is_local_uri(self.uri)

    def close(self):
        for owned in reversed(self._owned):
            close = getattr(owned, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # pylint: disable=broad-exception-caught  # closing must not hide the run's result
                    pass
        self._owned = []


def finish(result, diff_mode):
    """Split a runner's result into (result, warnings): ``diff`` kept only in diff mode and when changed."""
    result = dict(result)
    warnings = list(result.pop("warnings", None) or [])
    diff = result.pop("diff", None)
    if diff_mode and result.get("changed") and diff is not None:
        result["diff"] = diff
    return result, warnings


def run_module(module, runner, read_only=False):
    """Run ``runner(backends, module.params, module.check_mode)`` and exit the module with its result.

    Domain errors become ``fail_json`` (their ``details`` next to ``msg``, their ``warnings`` emitted);
    anything else is a bug and fails with its traceback.
    """
    backends = Backends.from_module(module, read_only=read_only)
    try:
        result = runner(backends, module.params, module.check_mode)
    except VirtopsError as exc:
        details = dict(exc.details)
        for warning in details.pop("warnings", None) or []:
            module.warn(warning)
        backends.close()
        module.fail_json(msg=exc.msg, **details)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        backends.close()
        module.fail_json(msg="unexpected error: %s" % exc, exception=traceback.format_exc())
    backends.close()
    result, warnings = finish(result, module._diff)  # pylint: disable=protected-access
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)
