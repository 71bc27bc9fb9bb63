# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's one libvirt client wrapper.

Modules build their argument spec from :data:`LIBVIRT_COMMON_ARGS` (twin of the
``virtops.kvm._libvirt`` doc fragment), open a :class:`LibvirtClient` with :func:`connect`, and get
``None`` from the ``lookup_*`` helpers when an object does not exist. Every libvirt error is raised
as :class:`LibvirtError` with libvirt's text and code. The logic never opens a connection itself:
it receives the client, so unit tests pass one on ``test:///default``.
"""

from __future__ import annotations

import contextlib
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError

LIBVIRT_IMPORT_ERROR = None
try:
    import libvirt
except ImportError:
    libvirt = None
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

DEFAULT_URI = "qemu:///system"

LIBVIRT_COMMON_ARGS = dict(
    uri=dict(type="str", default=DEFAULT_URI, fallback=(env_fallback, ["LIBVIRT_DEFAULT_URI"])),
)

# libvirt error codes that mean "no such object" (stable numbers from virterror.h, so this
# module imports without libvirt installed).
_NOT_FOUND_CODES = {
    "domain": 42,  # VIR_ERR_NO_DOMAIN
    "network": 43,  # VIR_ERR_NO_NETWORK
    "pool": 49,  # VIR_ERR_NO_STORAGE_POOL
    "volume": 50,  # VIR_ERR_NO_STORAGE_VOL
    "secret": 66,  # VIR_ERR_NO_SECRET
    "nodedev": 67,  # VIR_ERR_NO_NODE_DEVICE
    "snapshot": 72,  # VIR_ERR_NO_DOMAIN_SNAPSHOT
}


def require_libvirt(module):
    """Fail the module with ``missing_required_lib`` when libvirt-python is not importable."""
    if libvirt is None:
        module.fail_json(
            msg=missing_required_lib("libvirt-python", url="https://pypi.org/project/libvirt-python/"),
            exception=LIBVIRT_IMPORT_ERROR,
        )


def error_from_libvirt(exc, action=None):
    """Turn a ``libvirt.libvirtError`` into our :class:`LibvirtError`, keeping libvirt's text."""
    text = exc.get_error_message() or str(exc)
    msg = "%s: %s" % (action, text) if action else text
    return LibvirtError(msg, code=exc.get_error_code(), domain=exc.get_error_domain())


@contextlib.contextmanager
def translated(action=None):
    """Context manager: any libvirt error inside becomes :class:`LibvirtError`."""
    try:
        yield
    except Exception as exc:  # libvirt.libvirtError, but libvirt may be missing at import time
        if libvirt is not None and isinstance(exc, libvirt.libvirtError):
            raise error_from_libvirt(exc, action) from exc
        raise


class LibvirtClient:
    """A libvirt connection with lookups that return ``None`` for "not found"."""

    def __init__(self, conn, uri=None):
        self.conn = conn
        self.uri = uri or conn.getURI()

    @classmethod
    def open(cls, uri, read_only=False):
        with translated("cannot connect to libvirt at %s" % uri):
            conn = libvirt.openReadOnly(uri) if read_only else libvirt.open(uri)
        return cls(conn, uri)

    def close(self):
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _lookup(self, kind, func, key):
        try:
            return func(key)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == _NOT_FOUND_CODES[kind]:
                return None
            raise error_from_libvirt(exc, "cannot look up %s %r" % (kind, key)) from exc

    def lookup_domain(self, name):
        return self._lookup("domain", self.conn.lookupByName, name)

    def lookup_domain_by_uuid(self, uuid):
        return self._lookup("domain", self.conn.lookupByUUIDString, uuid)

    def lookup_network(self, name):
        return self._lookup("network", self.conn.networkLookupByName, name)

    def lookup_pool(self, name):
        return self._lookup("pool", self.conn.storagePoolLookupByName, name)

    def lookup_volume(self, pool, name):
        return self._lookup("volume", pool.storageVolLookupByName, name)

    def lookup_volume_by_path(self, path):
        return self._lookup("volume", self.conn.storageVolLookupByPath, path)

    def lookup_secret(self, uuid):
        return self._lookup("secret", self.conn.secretLookupByUUIDString, uuid)

    def lookup_secret_by_usage(self, usage_type, usage_id):
        try:
            return self.conn.secretLookupByUsage(usage_type, usage_id)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == _NOT_FOUND_CODES["secret"]:
                return None
            raise error_from_libvirt(exc, "cannot look up secret %r" % usage_id) from exc

    def call(self, action, func, *args):
        """Run ``func(*args)``; a libvirt error becomes :class:`LibvirtError` prefixed by ``action``."""
        with translated(action):
            return func(*args)


def connect(module, read_only=False):
    """Open the client for ``module.params['uri']`` (fails the module if libvirt-python is missing)."""
    require_libvirt(module)
    return LibvirtClient.open(module.params["uri"], read_only=read_only)
