# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Reading libvirt objects the way several modules need it (shared core, next to :mod:`._libvirt`).

- :func:`inactive_xml`: an object's persistent definition (networks, pools; drivers that do not
  know the INACTIVE flag, like libvirt's test driver, get the plain XML);
- :func:`validate_object_name`: a name libvirt takes for a network, pool or volume;
- :func:`find_secret` / :func:`resolve_secret`: a secret by uuid or by usage, as the ``secret``
  module manages them and the ``volume`` module refers to them for LUKS.
"""

from __future__ import annotations

import re

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import VIR_ERR_INVALID_ARG, libvirt

# Secret usage type -> the element under <usage> that names what the secret is for.
SECRET_USAGE_ELEMENTS = {
    "volume": "volume",
    "ceph": "name",
    "iscsi": "target",
    "tls": "name",
    "vtpm": "name",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def inactive_xml(client, obj, what, flag):
    """``obj.XMLDesc(flag)`` with libvirt's INACTIVE ``flag`` for its kind: the persistent definition.

    Drivers that refuse the flag (VIR_ERR_INVALID_ARG: libvirt's test driver) get a plain XMLDesc.
    """
    try:
        return client.call("cannot read %s" % what, obj.XMLDesc, flag)
    except LibvirtError as exc:
        if exc.code != VIR_ERR_INVALID_ARG:
            raise
        return client.call("cannot read %s" % what, obj.XMLDesc, 0)


def validate_object_name(name, kind):
    """``name`` if libvirt takes it for a ``kind`` (network, pool, volume): not empty, no '/', no control
    characters or surrounding blanks, not ``.`` or ``..``; else :class:`ValidationError` (also in check mode)."""
    text = "" if name is None else str(name)
    if not text or text in (".", "..") or text != text.strip() or "/" in text or _CONTROL.search(text):
        raise ValidationError("%s name %r is not valid: it must be non-empty, without '/', control characters or surrounding white space" % (kind, name))
    return text


def is_uuid(text):
    return bool(text) and bool(_UUID_RE.match(text))


def secret_usage_number(usage_type):
    """libvirt's ``VIR_SECRET_USAGE_TYPE_<TYPE>`` for a usage type name."""
    if usage_type not in SECRET_USAGE_ELEMENTS:
        raise ValidationError("unknown secret usage type %r; use one of %s" % (usage_type, ", ".join(SECRET_USAGE_ELEMENTS)))
    return getattr(libvirt, "VIR_SECRET_USAGE_TYPE_" + usage_type.upper())


def find_secret(client, uuid=None, usage_type=None, usage_id=None):
    """The ``virSecret`` with this uuid, or else with this usage; ``None`` when there is none."""
    if uuid:
        return client.lookup_secret(uuid)
    if usage_type and usage_id:
        return client.lookup_secret_by_usage(secret_usage_number(usage_type), usage_id)
    raise ValidationError("a secret is identified by its uuid or by usage_type and usage_id")


def resolve_secret(client, ref, usage_type="volume"):
    """The secret ``ref`` names: a uuid, or else the usage id of a secret of ``usage_type``.

    Raises ValidationError when there is no such secret (``encryption: luks`` of a volume names its
    passphrase this way: a ``volume`` secret's usage id is the volume's path).
    """
    secret = find_secret(client, uuid=ref) if is_uuid(ref) else find_secret(client, usage_type=usage_type, usage_id=ref)
    if secret is None:
        raise ValidationError(
            "no libvirt secret with %s %r on %s; create it first with virtops.kvm.secret"
            % ("uuid" if is_uuid(ref) else "%s usage id" % usage_type, ref, client.uri)
        )
    return secret
