# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The ``secret`` module's logic: define, update and remove a libvirt secret and set its value.

How a secret's value is compared (libvirt secrets have no ``<metadata>``):

- a secret that is not private is compared by reading its value back from libvirt — the truth;
- a private secret cannot be read back, so once this module has set its value it appends a marker
  to the secret's ``<description>``: ``[virtops-value pbkdf2-sha256:<iterations>:<salt>:<hash>]``, a
  salted PBKDF2 digest of the value. The next run derives the digest of the requested value with the
  same salt and compares. The marker lives and dies with the secret, works for remote URIs, and is
  stripped from the description the user sees and compares. A value changed behind the module's
  back (``virsh secret-set-value``) is not noticed for private secrets; a private secret without a
  marker gets its value set (and the marker written) on the first run that passes ``value``.

The marker is written only after ``setValue`` succeeded, so a failed run leaves either the old
value with the old marker or no marker: the next run sees the value as not converged. Changing
``private``/``ephemeral`` means recreating the secret (libvirt cannot change them in place): the
value is first proven settable on a throw-away ephemeral secret, and if the recreate still fails
the old definition (and its value, when it could be read) is put back.

The value is never returned, never put in a diff, never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re

from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError, VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import VIR_ERR_NO_SECRET, libvirt
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt_objects import SECRET_USAGE_ELEMENTS, find_secret, is_uuid
from ansible_collections.virtops.kvm.plugins.module_utils._xml import etree, parse_xml, to_string

USAGE_TYPES = tuple(SECRET_USAGE_ELEMENTS)
_MARKER_RE = re.compile(r"\s*\[virtops-value pbkdf2-sha256:(\d+):([0-9a-f]+):([0-9a-f]+)\]\s*$")
# Control characters: none in a usage id; a description may hold tabs and newlines (XML keeps them).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
PBKDF2_ITERATIONS = 200000
_PROPS = ("uuid", "usage_type", "usage_id", "description", "private", "ephemeral")


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
    user = text[: match.start()].rstrip() or None
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
        element = SECRET_USAGE_ELEMENTS.get(usage_type)
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
        etree.SubElement(usage, SECRET_USAGE_ELEMENTS[props["usage_type"]]).text = props["usage_id"]
    return to_string(root)


def public_view(props, has_value=None):
    """What the module returns about a secret (never the value)."""
    if props is None:
        return {}
    view = {k: props[k] for k in _PROPS}
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


# ---------------------------------------------------------------- planning


def _secret_value(secret):
    """The stored value, or None when the secret has none. Only for non-private secrets."""
    try:
        return secret.value()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == VIR_ERR_NO_SECRET or "no value" in (exc.get_error_message() or ""):
            return None
        raise LibvirtError("cannot read the value of secret %s: %s" % (secret.UUIDString(), exc.get_error_message()), code=exc.get_error_code()) from exc


def validate_params(params):
    if params.get("usage_type") and not params.get("usage_id"):
        raise ValidationError("usage_type=%s needs usage_id (the %s the secret is for)" % (params["usage_type"], SECRET_USAGE_ELEMENTS[params["usage_type"]]))
    if params.get("usage_id") and not params.get("usage_type"):
        raise ValidationError("usage_id needs usage_type (one of %s)" % ", ".join(USAGE_TYPES))
    if not params.get("uuid") and not params.get("usage_type"):
        raise ValidationError("name the secret by uuid or by usage_type and usage_id")
    if params.get("uuid") and not is_uuid(params["uuid"]):
        raise ValidationError("uuid %r is not a UUID" % params["uuid"])
    if params.get("usage_id") and (_CONTROL.search(params["usage_id"]) or params["usage_id"] != params["usage_id"].strip()):
        raise ValidationError(
            "usage_id %r contains control characters or surrounding white space, which libvirt would store as given: remove them" % params["usage_id"]
        )
    if params.get("description") and _CONTROL_IN_TEXT.search(params["description"]):
        raise ValidationError(
            "description %r contains control characters (only tabs and newlines may be in a description): remove them" % params["description"]
        )


def _check_usage(client, secret, params):
    if secret is None or not (params.get("uuid") and params.get("usage_type")):
        return
    found = parse_secret_xml(client.call("cannot read secret", secret.XMLDesc, 0))
    if (found["usage_type"], found["usage_id"]) != (params["usage_type"], params["usage_id"]):
        raise ValidationError(
            "secret %s exists with usage %s %r, not %s %r; the usage of a secret cannot change: remove it first (state=absent)"
            % (params["uuid"], found["usage_type"], found["usage_id"], params["usage_type"], params["usage_id"])
        )


def _desired(params, before):
    before = before or {}
    description = params.get("description")
    return {
        "uuid": before.get("uuid") or params.get("uuid"),
        "usage_type": params.get("usage_type") or before.get("usage_type"),
        "usage_id": params.get("usage_id") or before.get("usage_id"),
        "description": (description or None) if description is not None else before.get("description"),
        "private": bool(params.get("private")),
        "ephemeral": bool(params.get("ephemeral")),
    }


def _value_plan(before, recreate, value, old_value):
    """(value_change, carried): whether the value must be set, and an old value to carry over a recreate."""
    if value is None:
        if recreate and before["private"]:
            raise ValidationError(
                "secret %s must be recreated to change private/ephemeral (libvirt cannot change them in place), and its private value "
                "cannot be read back to carry over: pass value" % before["uuid"]
            )
        return False, (old_value if recreate else None)
    if before is None or recreate:
        return True, None
    if not before["private"]:
        return old_value is None or not hmac.compare_digest(old_value, value), None
    return not marker_matches(before["marker"], value), None


def plan_secret(client, params):
    """Everything the run will do, worked out before anything changes."""
    validate_params(params)
    value = decode_value(params.get("value"), params.get("value_encoding") or "text")
    secret = find_secret(client, uuid=params.get("uuid"), usage_type=params.get("usage_type"), usage_id=params.get("usage_id"))
    _check_usage(client, secret, params)
    before_xml = client.call("cannot read secret", secret.XMLDesc, 0) if secret is not None else None
    before = parse_secret_xml(before_xml) if before_xml else None
    plan = dict(secret=secret, before=before, before_xml=before_xml, absent=params["state"] == "absent")
    if plan["absent"]:
        plan["changed"] = before is not None
        return plan

    desired = _desired(params, before)
    recreate = before is not None and (before["private"], before["ephemeral"]) != (desired["private"], desired["ephemeral"])
    old_value = _secret_value(secret) if before is not None and not before["private"] else None
    value_change, carried = _value_plan(before, recreate, value, old_value)
    to_set = value if value_change else carried

    # The marker of the value libvirt will hold once setValue succeeded, and the one it holds until then.
    old_marker = before["marker"]["text"] if before is not None and before["marker"] and not recreate else None
    final_marker = None
    if desired["private"]:
        final_marker = make_marker(value) if value_change else old_marker
    plan.update(
        desired=desired,
        recreate=recreate,
        value=to_set,
        value_change=value_change,
        old_value=old_value,
        interim_marker=old_marker if desired["private"] else None,
        final_marker=final_marker,
        changed=before is None or recreate or value_change or _comparable(before) != _comparable(desired),
        has_value=_has_value(before, value, carried, old_value),
    )
    return plan


def _has_value(before, value, carried, old_value):
    if value is not None or carried is not None or old_value is not None:
        return True
    if before is not None and before["private"]:
        return True if before["marker"] else None  # a private value cannot be read back
    return False


# ---------------------------------------------------------------- applying


def _set_value(client, secret, value, kept=True):
    note = " (the value libvirt held before is kept)" if kept else ""
    client.call("cannot set the value of secret %s%s" % (secret.UUIDString(), note), secret.setValue, value, 0)


def _add_note(exc, note):
    """Append ``note`` to a domain error's message (what was undone, what is left)."""
    exc.msg = "%s; %s" % (exc.msg, note)
    exc.args = (exc.msg,)


def _probe_value(client, value):
    """Prove libvirt accepts ``value`` on a throw-away ephemeral, private secret without usage."""
    probe = client.call("cannot define a probe secret", client.conn.secretDefineXML, "<secret ephemeral='yes' private='yes'/>", 0)
    try:
        client.call("libvirt refused the value (nothing was changed)", probe.setValue, value, 0)
    finally:
        try:
            probe.undefine()
        except Exception:  # pylint: disable=broad-exception-caught  # an ephemeral probe disappears with libvirtd anyway
            pass


def _apply_in_place(client, plan):
    """Create or update the secret; the marker of a new value is stored only after setValue."""
    secret = plan["secret"]
    created = secret is None
    secret = client.call("cannot define secret", client.conn.secretDefineXML, build_secret_xml(plan["desired"], plan["interim_marker"]), 0)
    if plan["value"] is not None:
        try:
            _set_value(client, secret, plan["value"], kept=not created)
        except VirtopsError as exc:
            if created:  # undo: a rerun creates it again
                try:
                    secret.undefine()
                    _add_note(exc, "the secret this run defined was removed again")
                except Exception:  # pylint: disable=broad-exception-caught
                    _add_note(exc, "the secret this run defined is left without a value")
            raise
    return _store_marker(client, secret, plan)


def _store_marker(client, secret, plan):
    """Redefine ``secret`` with the marker of the value it now holds (same uuid: an update)."""
    if plan["final_marker"] == plan["interim_marker"]:
        return secret
    xml = build_secret_xml(dict(plan["desired"], uuid=secret.UUIDString()), plan["final_marker"])
    return client.call("cannot store the value marker of secret %s" % secret.UUIDString(), client.conn.secretDefineXML, xml, 0)


def _apply_recreate(client, plan):
    """Undefine and define again with the same uuid, proving the value first and restoring the old one on failure."""
    old = plan["secret"]
    if plan["value"] is not None:
        _probe_value(client, plan["value"])
    client.call("cannot remove secret %s to recreate it" % plan["before"]["uuid"], old.undefine)
    try:
        secret = client.call("cannot define secret", client.conn.secretDefineXML, build_secret_xml(plan["desired"], plan["interim_marker"]), 0)
        if plan["value"] is not None:
            _set_value(client, secret, plan["value"], kept=False)
        return _store_marker(client, secret, plan)
    except VirtopsError as exc:
        _add_note(exc, _restore(client, plan))
        raise


def _restore(client, plan):
    """Put the secret as it was before a failed recreate back; returns what was done, for the message."""
    before = plan["before"]
    try:
        current = find_secret(client, uuid=before["uuid"])
        if current is not None:
            current.undefine()
        if before["private"]:
            # its value could not be read: restore the definition without a marker, so the next run sets the value
            client.conn.secretDefineXML(build_secret_xml(before), 0)
            return "the old definition of secret %s was restored, without its private value (pass value to set it again)" % before["uuid"]
        restored = client.conn.secretDefineXML(plan["before_xml"], 0)
        if plan["old_value"] is not None:
            restored.setValue(plan["old_value"], 0)
        return "secret %s was restored as it was, with its value" % before["uuid"]
    except Exception as exc:  # pylint: disable=broad-exception-caught
        return "restoring secret %s failed too (%s): it is now missing" % (before["uuid"], exc)


def ensure_secret(backends, params, check_mode):
    """Bring one secret to ``params``; returns the result (``changed``, ``secret``, ``diff``)."""
    client = backends.libvirt
    plan = plan_secret(client, params)
    before = plan["before"]
    if plan["absent"]:
        if before is not None and not check_mode:
            client.call("cannot remove secret %s" % before["uuid"], plan["secret"].undefine)
        result = {"changed": plan["changed"], "secret": {}}
        if plan["changed"]:
            result["diff"] = {"before": _diff_text(before, False), "after": ""}
        return result
    secret = plan["secret"]
    if plan["changed"] and not check_mode:
        secret = _apply_recreate(client, plan) if plan["recreate"] else _apply_in_place(client, plan)
    after = dict(plan["desired"], uuid=secret.UUIDString() if secret is not None else None)
    result = {"changed": plan["changed"], "secret": public_view(after, has_value=plan["has_value"])}
    if plan["changed"]:
        result["diff"] = {"before": _diff_text(before, False), "after": _diff_text(after, plan["value_change"])}
    return result


def _comparable(props):
    return tuple(props.get(k) for k in _PROPS[1:])


def _diff_text(props, value_change):
    if props is None:
        return ""
    lines = ["%s: %s" % (k, props.get(k)) for k in _PROPS]
    lines.append("value: %s" % ("(new)" if value_change else "(stored)"))
    return "\n".join(lines) + "\n"
