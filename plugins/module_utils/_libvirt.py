# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The collection's one libvirt client wrapper, and the one home of libvirt's constants.

Modules build their argument spec from :data:`LIBVIRT_COMMON_ARGS` (twin of the
``virtops.kvm._libvirt`` doc fragment), open a :class:`LibvirtClient` with :func:`connect`, and get
``None`` from the ``lookup_*`` helpers when an object does not exist. Every libvirt error is raised
as :class:`LibvirtError` with libvirt's text and code. The logic never opens a connection itself:
it receives the client, so unit tests pass one on ``test:///default``.
"""

from __future__ import annotations

import contextlib
import re
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

# libvirt's constants, under libvirt's own names and with libvirt's values (stable numbers from
# libvirt-domain.h, libvirt-network.h, libvirt-storage.h, virterror.h), so module_utils import
# without libvirt-python. No other file defines a libvirt number.
VIR_DOMAIN_XML_SECURE = 1
VIR_DOMAIN_XML_INACTIVE = 2
VIR_DOMAIN_XML_MIGRATABLE = 8
VIR_NETWORK_XML_INACTIVE = 1
VIR_STORAGE_XML_INACTIVE = 1
VIR_DOMAIN_AFFECT_CURRENT = 0
VIR_DOMAIN_AFFECT_LIVE = 1
VIR_DOMAIN_AFFECT_CONFIG = 2
VIR_DOMAIN_DEFINE_VALIDATE = 1
VIR_DOMAIN_START_PAUSED = 1
VIR_CONNECT_LIST_DOMAINS_ACTIVE = 1
VIR_CONNECT_LIST_DOMAINS_INACTIVE = 2
VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV = 2
VIR_CONNECT_LIST_NODE_DEVICES_CAP_USB_DEV = 4
VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE = 0
VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT = 1
VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP = 2
VIR_DOMAIN_UNDEFINE_MANAGED_SAVE = 1
VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA = 2
VIR_DOMAIN_UNDEFINE_NVRAM = 4
VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA = 16
VIR_DOMAIN_UNDEFINE_TPM = 32
VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY = 16
VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE = 64
VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC = 128
VIR_DOMAIN_SNAPSHOT_CREATE_LIVE = 256
VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING = 1
VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED = 2
VIR_DOMAIN_SNAPSHOT_REVERT_FORCE = 4
VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN = 1
VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT = 0
VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP = 1

# virDomainMigrateFlags (libvirt-domain.h)
VIR_MIGRATE_LIVE = 1
VIR_MIGRATE_PEER2PEER = 2
VIR_MIGRATE_TUNNELLED = 4
VIR_MIGRATE_PERSIST_DEST = 8
VIR_MIGRATE_UNDEFINE_SOURCE = 16
VIR_MIGRATE_NON_SHARED_DISK = 64
VIR_MIGRATE_NON_SHARED_INC = 128
VIR_MIGRATE_OFFLINE = 1024
VIR_MIGRATE_COMPRESSED = 2048
VIR_MIGRATE_ABORT_ON_ERROR = 4096
VIR_MIGRATE_AUTO_CONVERGE = 8192
VIR_MIGRATE_POSTCOPY = 32768
VIR_MIGRATE_PARAM_BANDWIDTH = "bandwidth"
VIR_DOMAIN_JOB_STATS_COMPLETED = 1
VIR_DOMAIN_JOB_NONE = 0
VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE = 1
VIR_CPU_COMPARE_INCOMPATIBLE = 0
VIR_NODE_MEMORY_STATS_ALL_CELLS = -1
VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE = 2

VIR_ERR_INTERNAL_ERROR = 1
VIR_ERR_NO_SUPPORT = 3
VIR_ERR_NO_CONNECT = 5
VIR_ERR_INVALID_ARG = 8
VIR_ERR_OPERATION_FAILED = 9
VIR_ERR_SYSTEM_ERROR = 38
VIR_ERR_RPC = 39
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_NO_NETWORK = 43
VIR_ERR_NO_STORAGE_POOL = 49
VIR_ERR_NO_STORAGE_VOL = 50
VIR_ERR_NO_NODE_DEVICE = 53
VIR_ERR_OPERATION_INVALID = 55
VIR_ERR_NO_SECRET = 66
VIR_ERR_OPERATION_TIMEOUT = 68
VIR_ERR_NO_DOMAIN_SNAPSHOT = 72
VIR_ERR_CPU_INCOMPATIBLE = 91
VIR_FROM_CPU = 31

# libvirt error codes that mean "no such object".
_NOT_FOUND_CODES = {
    "domain": VIR_ERR_NO_DOMAIN,
    "network": VIR_ERR_NO_NETWORK,
    "pool": VIR_ERR_NO_STORAGE_POOL,
    "volume": VIR_ERR_NO_STORAGE_VOL,
    "secret": VIR_ERR_NO_SECRET,
    "nodedev": VIR_ERR_NO_NODE_DEVICE,
    "snapshot": VIR_ERR_NO_DOMAIN_SNAPSHOT,
}

# What libvirt says when a driver failed without reporting why.
_UNKNOWN_CAUSE = "cause is unknown"
LIBVIRT_LOG_HINT = (
    "libvirt gave no cause; its daemon log has it (journalctl -u libvirtd or -u virtqemud, "
    "or /var/log/libvirt/libvirtd.log when logging to a file) and a guest's QEMU log is /var/log/libvirt/qemu/<name>.log"
)


def is_local_uri(uri):
    """Whether ``uri`` manages the libvirtd of *this* machine (so host-side side effects may run here).

    ``qemu:///system`` and ``qemu+unix:///system`` are local; a URI naming a host (``qemu+ssh://hv1/system``)
    is not, and neither is libvirt's ``test:///`` driver, which has no host behind it.
    """
    match = re.match(r"^([a-z0-9+.-]+)://([^/?]*)(/[^?]*)?", uri or "", re.IGNORECASE)
    if not match:
        return False
    scheme, authority = match.group(1).lower(), match.group(2)
    driver, _plus, transport = scheme.partition("+")
    if driver == "test":
        return False
    host = authority.rpartition("@")[2].split(":")[0]
    return transport in ("", "unix") and host in ("", "localhost")


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
    if _UNKNOWN_CAUSE in text or not text.strip():
        text = "%s (%s)" % (text.strip() or "libvirt reported an error without text", LIBVIRT_LOG_HINT)
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
        self._refreshed = set()
        self._memo = {}

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

    def refresh_pool(self, pool, name):
        """Refresh ``pool`` (re-read its directory) once per connection, so that a batch of entries on one
        pool costs one refresh; what this connection changes afterwards, libvirt tracks itself, and a
        step that writes a volume behind libvirt's back refreshes again with ``pool.refresh``."""
        if name not in self._refreshed:
            self.call("cannot refresh pool %s" % name, pool.refresh, 0)
            self._refreshed.add(name)

    def memo(self, key, factory):
        """``factory()``, computed once per connection under ``key``: for what does not change while the
        connection is open (the host's capabilities), so a batch of entries reads it once."""
        if key not in self._memo:
            self._memo[key] = factory()
        return self._memo[key]

    def call(self, action, func, *args):
        """Run ``func(*args)``; a libvirt error becomes :class:`LibvirtError` prefixed by ``action``."""
        with translated(action):
            return func(*args)


def qemu_monitor_command(dom, command, flags):
    """``libvirt_qemu.qemuMonitorCommand`` (part of libvirt-python; imported only by the one module that needs it)."""
    import libvirt_qemu  # noqa: PLC0415  # pylint: disable=import-outside-toplevel

    with translated("QEMU monitor command on guest %s failed" % dom.name()):
        return libvirt_qemu.qemuMonitorCommand(dom, command, flags)


def open_client(uri, read_only=False):
    """The one client factory: a :class:`LibvirtClient` on ``uri``, read-only for ``_info`` modules."""
    return LibvirtClient.open(uri or DEFAULT_URI, read_only=read_only)


def connect(module, read_only=False):
    """Open the client for ``module.params['uri']`` (fails the module if libvirt-python is missing).

    Deprecated inside the collection: :func:`run_module` builds the client through :class:`Backends`.
    """
    require_libvirt(module)
    return open_client(module.params["uri"], read_only=read_only)
