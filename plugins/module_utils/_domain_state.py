# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What the guest modules (domain, domain_info, domain_device) share about a libvirt guest.

- its power state under libvirt's names (:func:`state_of`);
- check-mode validation against libvirt's installed domain schema (:class:`SchemaCheck`);
- the values libvirt treats as secret in a domain's XML, that is what ``virDomainGetXMLDesc`` only
  shows with ``VIR_DOMAIN_XML_SECURE``: graphics passwords (VNC, SPICE) and the cookies of a
  network disk source (HTTP(S) disks). :func:`mask_secrets` replaces them by :data:`MASK` in a copy
  of an element, including inside the last-applied intent the domain module keeps in
  ``<metadata>``; :func:`secret_values` lists them so a module can hide them from Ansible's output.
"""

from __future__ import annotations

import copy
import os
import re
import shutil

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import is_local_uri, translated
from ansible_collections.virtops.kvm.plugins.module_utils._xml import LAST_APPLIED_NS, etree, parse_xml, to_string

# virDomainState and the reasons of each state (libvirt-domain.h: virDomainState,
# virDomainRunningReason, virDomainPausedReason, ...), as the names libvirt's own tools print.
STATE_NAMES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed", 7: "pmsuspended"}
STATE_REASONS = {
    0: ["unknown"],
    1: [
        "unknown",
        "booted",
        "migrated",
        "restored",
        "from_snapshot",
        "unpaused",
        "migration_canceled",
        "save_canceled",
        "wakeup",
        "crashed",
        "postcopy",
        "postcopy_failed",
    ],
    2: ["unknown"],
    3: [
        "unknown",
        "user",
        "migration",
        "save",
        "dump",
        "ioerror",
        "watchdog",
        "from_snapshot",
        "shutting_down",
        "snapshot",
        "crashed",
        "starting_up",
        "postcopy",
        "postcopy_failed",
        "api_error",
    ],
    4: ["unknown", "user"],
    5: ["unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from_snapshot", "daemon"],
    6: ["unknown", "panicked"],
    7: ["unknown"],
}
STATE_CHOICES = sorted(set(STATE_NAMES.values()))
# States in which the guest has a QEMU process.
ACTIVE_STATES = ("running", "blocked", "paused", "shutdown", "pmsuspended", "crashed")


def state_of(dom):
    """``(state_name, reason_name)`` of a libvirt domain."""
    with translated("cannot read the state of guest %s" % dom.name()):
        state, reason = dom.state()
    reasons = STATE_REASONS.get(state, ["unknown"])
    return STATE_NAMES.get(state, "unknown"), reasons[reason] if 0 <= reason < len(reasons) else "unknown"


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------

MASK = "********"

# What libvirt 9's domain formatter writes only with VIR_DOMAIN_XML_SECURE
# (src/conf/domain_conf.c: virDomainGraphicsAuthDefFormatAttr, virDomainDiskSourceFormatNetworkCookies):
# (XPath of the element relative to <domain> or to a device, attribute or None for the text).
_SECRET_ATTRIBUTES = (("graphics", "passwd"),)
_SECRET_TEXTS = ("source/cookies/cookie",)


def _secret_nodes(root):
    """``(element, attribute_or_None)`` of every secret value below (or at) ``root``."""
    found = []
    for tag, attribute in _SECRET_ATTRIBUTES:
        candidates = [root] if root.tag == tag else []
        candidates += list(root.iter(tag))
        for element in dict.fromkeys(candidates):
            if element.get(attribute) is not None:
                found.append((element, attribute))
    for path in _SECRET_TEXTS:
        disks = [root] if root.tag == "disk" else list(root.iter("disk"))
        for disk in disks:
            for element in disk.findall(path):
                if (element.text or "").strip():
                    found.append((element, None))
    return found


def secret_values(root):
    """The secret strings in ``root`` (an element), in document order, without duplicates."""
    values = []
    for element, attribute in _secret_nodes(root):
        value = element.get(attribute) if attribute else element.text.strip()
        if value and value != MASK and value not in values:
            values.append(value)
    return values


def secret_values_of_text(xml_text):
    """:func:`secret_values` of XML text; text that does not parse has none this module could use."""
    if not xml_text or not str(xml_text).strip():
        return []
    try:
        return secret_values(parse_xml(xml_text))
    except ValidationError:
        return []


def secrets_digest(root):
    """A comparable view of the secrets: ``[(where, value)]`` (compare it, never return it)."""
    digest = []
    for element, attribute in _secret_nodes(root):
        where = "%s/@%s" % (element.tag, attribute) if attribute else element.tag
        digest.append((where, element.get(attribute) if attribute else (element.text or "").strip()))
    return digest


def mask_in_place(root):
    """Replace every secret value below ``root`` by :data:`MASK`, in place; returns ``root``.

    The last-applied intent the domain module stores in ``<metadata>`` is masked too (it is text
    holding an XML document), so XML written by an older version that kept a password there does
    not show it either.
    """
    for element, attribute in _secret_nodes(root):
        if attribute:
            element.set(attribute, MASK)
        else:
            element.text = MASK
    for node in root.iter("{%s}last-applied" % LAST_APPLIED_NS):
        if not (node.text or "").strip():
            continue
        try:
            stored = parse_xml(node.text, "the last-applied intent")
        except ValidationError:
            continue
        if any(value != MASK for _where, value in secrets_digest(stored)):
            node.text = to_string(mask_in_place(stored), pretty=False)
    return root


def mask_secrets(root):
    """A copy of ``root`` with every secret value replaced by :data:`MASK` (``None`` stays ``None``)."""
    if root is None:
        return None
    return mask_in_place(copy.deepcopy(root))


def masked_text(root, pretty=True):
    """The XML text of ``root`` with its secrets masked; ``""`` for ``None``."""
    if root is None:
        return ""
    return to_string(mask_secrets(root), pretty=pretty)


# ---------------------------------------------------------------------------------------------
# Check-mode schema validation (lxml RelaxNG against libvirt's installed domain.rng)
# ---------------------------------------------------------------------------------------------

SCHEMA_DIRS = ("/usr/share/libvirt/schemas", "/usr/local/share/libvirt/schemas")
_SCHEMA_LINE = re.compile(r"""SCHEMA=["']?([^"'\s]+)/\$\{?TYPE\}?\.rng""")


def schema_dirs():
    """Where libvirt's schemas may be: the directory its own virt-xml-validate names, then the usual prefixes."""
    found = []
    tool = shutil.which("virt-xml-validate")
    if tool:
        try:
            with open(tool, encoding="utf-8", errors="replace") as handle:
                match = _SCHEMA_LINE.search(handle.read())
        except OSError:
            match = None
        if match:
            found.append(match.group(1))
    for candidate in SCHEMA_DIRS:
        if candidate not in found:
            found.append(candidate)
    return found


def find_domain_schema(dirs=None):
    """The path of libvirt's installed ``domain.rng``, or ``None``."""
    for directory in schema_dirs() if dirs is None else dirs:
        path = os.path.join(directory, "domain.rng")
        if os.path.isfile(path):
            return path
    return None


class SchemaCheck:
    """Validates merged domain XML in check mode, so a schema error is predicted as the real run will meet it.

    The real run relies on libvirt (``VIR_DOMAIN_DEFINE_VALIDATE``) against the same schema. The
    schema is libvirt's own, so it is used only when libvirt runs on this machine (a local URI, or
    libvirt's in-process ``test:///`` driver); otherwise, or when no schema is installed, check mode
    still predicts the change and :attr:`warning` says that it could not validate.
    """

    def __init__(self, uri, dirs=None):
        self.path = None
        self.warning = None
        self._schema = None
        local = is_local_uri(uri) or (uri or "").startswith("test:")
        if not local:
            self.warning = "check mode could not validate the XML against libvirt's schema: libvirt at %s is not on this machine" % uri
            return
        self.path = find_domain_schema(dirs)
        if self.path is None:
            self.warning = "check mode could not validate the XML: libvirt's domain.rng is not installed here (looked in %s)" % ", ".join(
                schema_dirs() if dirs is None else dirs
            )

    def _load(self):
        if self._schema is None:
            try:
                self._schema = etree.RelaxNG(file=self.path)
            except (etree.RelaxNGParseError, OSError) as exc:
                self.warning = "check mode could not validate the XML: libvirt's schema %s does not load: %s" % (self.path, exc)
                self.path = None
        return self._schema

    def validate(self, element, name):
        """Raise :class:`ValidationError` when ``element`` breaks the schema; returns whether it was checked."""
        if self.path is None or self._load() is None:
            return False
        if self._schema.validate(element):
            return True
        errors = ["%s (at %s)" % (error.message, error.path) for error in self._schema.error_log]
        raise ValidationError(
            "the XML of guest %s failed to validate against schema %s (checked in check mode, as libvirt will when it is defined): %s"
            % (name, self.path, "; ".join(errors[:5]) or "no detail"),
            schema_errors=errors,
        )
