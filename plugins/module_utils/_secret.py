# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt secrets: lookup (shared with the volume module) and the ``secret`` module's logic.

How a secret's value is compared (libvirt secrets have no ``<metadata>``):

- a secret that is not private is compared by reading its value back from libvirt — the truth;
- a private secret cannot be read back, so when this module sets its value it appends a marker to
  the secret's ``<description>``: ``[virtops-value pbkdf2-sha256:<iterations>:<salt>:<hash>]``, a
  salted PBKDF2 digest of the value. The next run derives the digest of the requested value with the
  same salt and compares. The marker lives and dies with the secret, works for remote URIs, and is
  stripped from the description the user sees and compares. A value changed behind the module's
  back (``virsh secret-set-value``) is not noticed for private secrets; a private secret without a
  marker gets its value set (and the marker written) on the first run that passes ``value``.

The value is never returned, never put in a diff, never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import connect, libvirt
from ansible_collections.virtops.kvm.plugins.module_utils._xml import etree, parse_xml, to_string

# Usage type -> (libvirt's VIR_SECRET_USAGE_TYPE_* number, the element under <usage> naming it).
USAGE_TYPES = {
    "volume": (1, "volume"),
    "ceph": (2, "name"),
    "iscsi": (3, "target"),
    "tls": (4, "name"),
    "vtpm": (5, "name"),
}
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_MARKER_RE = re.compile(r"\s*\[virtops-value pbkdf2-sha256:(\d+):([0-9a-f]+):([0-9a-f]+)\]\s*$")
PBKDF2_ITERATIONS = 200000


def is_uuid(text):
    return bool(text) and bool(_UUID_RE.match(text))


def find_secret(client, uuid=None, usage_type=None, usage_id=None):
    """The ``virSecret`` with this uuid, or else with this usage; ``None`` when there is none."""
    if uuid:
        return client.lookup_secret(uuid)
    if usage_type and usage_id:
        if usage_type not in USAGE_TYPES:
            raise ValidationError("unknown secret usage type %r; use one of %s" % (usage_type, ", ".join(USAGE_TYPES)))
        return client.lookup_secret_by_usage(USAGE_TYPES[usage_type][0], usage_id)
    raise ValidationError("a secret is identified by its uuid or by usage_type and usage_id")


def resolve_secret(client, ref, usage_type="volume"):
    """The secret ``ref`` names: a uuid, or else the usage id of a secret of ``usage_type``.

    Raises ValidationError when there is no such secret. This is what the volume module uses for
    ``encryption: luks`` (a ``volume`` secret's usage id is the volume's path).
    """
    secret = find_secret(client, uuid=ref) if is_uuid(ref) else find_secret(client, usage_type=usage_type, usage_id=ref)
    if secret is None:
        raise ValidationError(
            "no libvirt secret with %s %r on %s; create it first with virtops.kvm.secret"
            % ("uuid" if is_uuid(ref) else "%s usage id" % usage_type, ref, client.uri)
        )
    return secret


# ---------------------------------------------------------------- value digest in the description


def value_digest(value, salt, iterations=PBKDF2_ITERATIONS):
    return hashlib.pbkdf2_hmac("sha256", value, salt, iterations).hex()


def make_marker(value, salt=None, iterations=PBKDF2_ITERATIONS):
    salt = salt if salt is not None else os.urandom(16)
    return "[virtops-value pbkdf2-sha256:%d:%s:%s]" % (iterations, salt.hex(), value_digest(value, salt, iterations))


def split_description(text):
    """``(user description or None, marker dict or None)`` from a stored description."""
    text = text or ""
    match = _MARKER_RE.search(text)
    if not match:
        return (text or None), None
    user = text[:match.start()].rstrip() or None
    return user, {"iterations": int(match.group(1)), "salt": bytes.fromhex(match.group(2)), "digest": match.group(3), "text": match.group(0).strip()}


def marker_matches(marker, value):
    return marker is not None and hmac.compare_digest(value_digest(value, marker["salt"], marker["iterations"]), marker["digest"])


def join_description(user, marker_text):
    parts = [p for p in (user, marker_text) if p]
    return " ".join(parts) or None


# ---------------------------------------------------------------- XML


def parse_secret_xml(text):
    """Properties of a secret from its XML."""
    root = parse_xml(text, "secret XML")
    usage = root.find("usage")
    usage_type = usage_id = None
    if usage is not None:
        usage_type = usage.get("type")
        element = USAGE_TYPES.get(usage_type, (None, None))[1]
        usage_id = usage.findtext(element) if element else None
    description, marker = split_description(root.findtext("description"))
    return {
        "uuid": root.findtext("uuid"),
        "usage_type": usage_type,
        "usage_id": usage_id,
        "description": description,
        "private": root.get("private", "no") == "yes",
        "ephemeral": root.get("ephemeral", "no") == "yes",
        "marker": marker,
    }


def build_secret_xml(props, marker_text=None):
    root = etree.Element("secret", ephemeral="yes" if props["ephemeral"] else "no", private="yes" if props["private"] else "no")
    if props.get("uuid"):
        etree.SubElement(root, "uuid").text = props["uuid"]
    description = join_description(props.get("description"), marker_text)
    if description:
        etree.SubElement(root, "description").text = description
    if props.get("usage_type"):
        usage = etree.SubElement(root, "usage", type=props["usage_type"])
        etree.SubElement(usage, USAGE_TYPES[props["usage_type"]][1]).text = props["usage_id"]
    return to_string(root)


def public_view(props, has_value=None):
    """What the module returns about a secret (never the value)."""
    if props is None:
        return {}
    view = {k: props[k] for k in ("uuid", "usage_type", "usage_id", "description", "private", "ephemeral")}
    if has_value is not None:
        view["has_value"] = has_value
    return view


def decode_value(value, encoding):
    if value is None:
        return None
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationError("value is not valid base64 (value_encoding=base64): %s" % exc) from exc
    return value.encode("utf-8")


# ---------------------------------------------------------------- the module's logic


def _secret_value(client, secret):
    """The stored value, or None when the secret has none. Only for non-private secrets."""
    try:
        return secret.value()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == 66 or "no value" in (exc.get_error_message() or ""):  # VIR_ERR_NO_SECRET: no value set
            return None
        raise LibvirtError("cannot read the value of secret %s: %s" % (secret.UUIDString(), exc.get_error_message()), code=exc.get_error_code()) from exc


def _validate(params):
    if params.get("usage_type") and not params.get("usage_id"):
        raise ValidationError("usage_type=%s needs usage_id (the %s the secret is for)" % (params["usage_type"], USAGE_TYPES[params["usage_type"]][1]))
    if params.get("usage_id") and not params.get("usage_type"):
        raise ValidationError("usage_id needs usage_type (one of %s)" % ", ".join(USAGE_TYPES))
    if not params.get("uuid") and not params.get("usage_type"):
        raise ValidationError("name the secret by uuid or by usage_type and usage_id")
    if params.get("uuid") and not is_uuid(params["uuid"]):
        raise ValidationError("uuid %r is not a UUID" % params["uuid"])


def ensure_secret(client, params, check_mode=False):
    """Bring one secret to ``params``; returns the result dict (``changed``, ``secret``, ``diff``)."""
    _validate(params)
    value = decode_value(params.get("value"), params.get("value_encoding") or "text")
    secret = find_secret(client, uuid=params.get("uuid"), usage_type=params.get("usage_type"), usage_id=params.get("usage_id"))
    if secret is not None and params.get("uuid") and params.get("usage_type"):
        found = parse_secret_xml(client.call("cannot read secret", secret.XMLDesc, 0))
        if (found["usage_type"], found["usage_id"]) != (params["usage_type"], params["usage_id"]):
            raise ValidationError(
                "secret %s exists with usage %s %r, not %s %r; the usage of a secret cannot change: remove it first (state=absent)"
                % (params["uuid"], found["usage_type"], found["usage_id"], params["usage_type"], params["usage_id"])
            )
    before_xml = client.call("cannot read secret", secret.XMLDesc, 0) if secret is not None else None
    before = parse_secret_xml(before_xml) if before_xml else None

    if params["state"] == "absent":
        result = {"changed": before is not None, "secret": {}, "diff": {"before": _diff_text(before, False), "after": ""}}
        if before is not None and not check_mode:
            client.call("cannot remove secret %s" % before["uuid"], secret.undefine)
        return result

    desired = {
        "uuid": before["uuid"] if before else params.get("uuid"),
        "usage_type": params.get("usage_type") or (before or {}).get("usage_type"),
        "usage_id": params.get("usage_id") or (before or {}).get("usage_id"),
        "description": (params.get("description") or None) if params.get("description") is not None else (before or {}).get("description"),
        "private": bool(params.get("private")),
        "ephemeral": bool(params.get("ephemeral")),
    }
    recreate = before is not None and (before["private"], before["ephemeral"]) != (desired["private"], desired["ephemeral"])

    # Does the value need setting?
    old_value = None
    if before is not None and not before["private"]:
        old_value = _secret_value(client, secret)
    if value is None:
        value_change = False
        if recreate and before["private"]:
            raise ValidationError(
                "secret %s must be recreated to change private/ephemeral (libvirt cannot change them in place), and its private value "
                "cannot be read back to carry over: pass value" % before["uuid"]
            )
        carried = old_value if recreate else None
    else:
        carried = None
        if before is None or recreate:
            value_change = True
        elif not before["private"]:
            value_change = old_value is None or not hmac.compare_digest(old_value, value)
        else:
            value_change = not marker_matches(before["marker"], value)

    marker_text = None
    if desired["private"] and value is not None:
        keep = before is not None and not value_change and before["marker"] is not None
        marker_text = before["marker"]["text"] if keep else make_marker(value)
    elif desired["private"] and before is not None and before["marker"] and not recreate:
        marker_text = before["marker"]["text"]
    after_xml = build_secret_xml(desired, marker_text)
    xml_change = before is None or recreate or _comparable(before) != _comparable(desired)
    changed = xml_change or value_change

    after = dict(desired, marker=None)
    result = {"changed": changed, "diff": {"before": _diff_text(before, False), "after": _diff_text(after, value_change)}}
    if changed and not check_mode:
        if recreate:
            client.call("cannot remove secret %s to recreate it" % before["uuid"], secret.undefine)
        secret = client.call("cannot define secret", client.conn.secretDefineXML, after_xml, 0)
        if value_change or carried is not None:
            client.call("cannot set the value of secret %s" % secret.UUIDString(), secret.setValue, value if value is not None else carried, 0)
    uuid = secret.UUIDString() if secret is not None else None
    after["uuid"] = uuid
    if value is not None or carried is not None or old_value is not None:
        has_value = True
    elif before is not None and before["private"]:
        has_value = True if before["marker"] else None  # a private value cannot be read back
    else:
        has_value = False
    result["secret"] = public_view(after, has_value=has_value)
    return result


def _comparable(props):
    return tuple(props.get(k) for k in ("usage_type", "usage_id", "description", "private", "ephemeral"))


def _diff_text(props, value_change):
    if props is None:
        return ""
    lines = ["%s: %s" % (k, props.get(k)) for k in ("uuid", "usage_type", "usage_id", "description", "private", "ephemeral")]
    lines.append("value: %s" % ("(new)" if value_change else "(stored)"))
    return "\n".join(lines) + "\n"


def run_secret(module):
    with connect(module) as client:
        result = ensure_secret(client, module.params, check_mode=module.check_mode)
    if not module._diff:  # pylint: disable=protected-access
        result.pop("diff", None)
    return result
