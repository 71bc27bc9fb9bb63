# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The collection's one XML engine (lxml).

Parsing and serialising, normalisation of values, the identity of repeated siblings, and the
three-way merge (intent / current / last-applied) used by domain, network, pool, volume and
domain_device. Nothing here talks to libvirt: callers pass elements in and get elements out.
"""

from __future__ import annotations

import copy
import difflib
import re
import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._units import unit_factor

LXML_IMPORT_ERROR = None
try:
    from lxml import etree
except ImportError:
    etree = None
    LXML_IMPORT_ERROR = traceback.format_exc()


def require_lxml(module):
    if etree is None:
        module.fail_json(msg=missing_required_lib("lxml", url="https://pypi.org/project/lxml/"), exception=LXML_IMPORT_ERROR)


def parse_xml(text, what="XML"):
    """Parse ``text`` into an element; malformed input raises ValidationError with line and column."""
    if etree is None:
        raise ValidationError(missing_required_lib("lxml"))
    if isinstance(text, str):
        text = text.encode("utf-8")
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    try:
        return etree.fromstring(text, parser)
    except etree.XMLSyntaxError as exc:
        line, column = exc.position if exc.position else (None, None)
        reason = re.sub(r", line \d+, column \d+$", "", exc.msg or "")
        raise ValidationError(
            "%s is not well-formed XML: %s (line %s, column %s)" % (what, reason, line, column),
            line=line,
            column=column,
        ) from exc


def to_string(element, pretty=True):
    """Serialise an element as text (no XML declaration)."""
    return etree.tostring(element, pretty_print=pretty, encoding="unicode")


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

# Elements whose unit-less value is in bytes (storage); every other scaled element defaults to KiB.
BYTE_DEFAULT_TAGS = frozenset(("capacity", "allocation", "physical"))

_TRUE = frozenset(("yes", "on", "true", "1", "enable", "enabled"))
_FALSE = frozenset(("no", "off", "false", "0", "disable", "disabled"))


def to_bytes(value, unit=None, default_unit="KiB"):
    """``value`` in ``unit`` (libvirt's scaled-integer spelling, case-insensitive) as bytes.

    The units are the collection's one table (:mod:`._units`): ``k``/``KiB`` are 1024, ``KB`` 1000.
    """
    try:
        number = int(str(value).strip())
    except ValueError as exc:
        raise ValidationError("size %r is not an integer" % (value,)) from exc
    return number * unit_factor(unit or default_unit, "size %r" % (value,))


def to_kib(value, unit=None, default_unit="KiB"):
    """``value`` in ``unit`` as KiB (``<memory unit='GiB'>4</memory>`` -> 4194304); rounds up."""
    size = to_bytes(value, unit, default_unit)
    return -(-size // 1024)


def normalize_bool(value):
    """``True``/``False`` for libvirt's boolean spellings (yes/no, on/off, true/false...), else ``None``."""
    if isinstance(value, bool):
        return value
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def normalize_whitespace(text):
    """Collapse runs of whitespace to one space and strip; ``None`` and blank text become ``None``."""
    if text is None:
        return None
    collapsed = " ".join(text.split())
    return collapsed or None


def _as_int(value):
    try:
        return int(str(value).strip(), 0)
    except (TypeError, ValueError):
        try:
            return int(str(value).strip(), 10)
        except (TypeError, ValueError):
            return None


def values_equal(intent_value, current_value):
    """Whether two attribute/text values mean the same thing.

    Equal after whitespace normalisation; or the same boolean (``yes`` == ``on``); or the same
    integer (``0x00`` == ``0``, used by PCI addresses); or the same MAC address in any case.
    """
    a = normalize_whitespace(intent_value)
    b = normalize_whitespace(current_value)
    if a == b:
        return True
    if a is None or b is None:
        return False
    bool_a, bool_b = normalize_bool(a), normalize_bool(b)
    if bool_a is not None and bool_b is not None and not (a.isdigit() or b.isdigit()):
        return bool_a == bool_b
    int_a, int_b = _as_int(a), _as_int(b)
    if int_a is not None and int_b is not None:
        return int_a == int_b
    if len(a) == 17 and a.count(":") == 5:
        return a.lower() == b.lower()
    return False


# ---------------------------------------------------------------------------------------------
# Identity of repeated siblings
# ---------------------------------------------------------------------------------------------


def _child(element, tag):
    if element is None:
        return None
    return element.find(tag)


def _attr(element, path, name):
    node = element.find(path) if path else element
    return None if node is None else node.get(name)


def _int_attr(element, path, name):
    value = _attr(element, path, name)
    if value is None:
        return None
    as_int = _as_int(value)
    return as_int if as_int is not None else value


def _lower(value):
    return value.lower() if isinstance(value, str) else value


_INTERFACE_SOURCE_KEYS = {
    "network": ("network", "portgroup"),
    "bridge": ("bridge",),
    "direct": ("dev",),
    "vhostuser": ("path",),
    None: ("network", "bridge", "dev", "name", "path", "portgroup"),
}


def _identity_keys(element):
    """Every identity key of ``element``; the first is the one :func:`element_identity` returns."""
    tag = element.tag
    if tag == "disk":
        return [("disk", "target", _attr(element, "target", "dev"))]
    if tag == "interface":
        source = _child(element, "source")
        source_key = None
        if source is not None:
            # Only the attributes that name the source for this interface type: libvirt adds others to
            # the live XML (bridge= and portid= on a type='network' source), which must not break the match.
            names = _INTERFACE_SOURCE_KEYS.get(element.get("type"), _INTERFACE_SOURCE_KEYS[None])
            source_key = tuple(sorted((k, v) for k, v in source.attrib.items() if k in names))
        by_source = ("interface", "source", element.get("type"), source_key, _attr(element, "model", "type"))
        mac = _lower(_attr(element, "mac", "address"))
        if mac:
            return [("interface", "mac", mac), by_source]
        return [by_source]
    if tag == "hostdev":
        address = element.find("source/address")
        if address is not None and (address.get("domain") is not None or address.get("slot") is not None):
            return [("hostdev", "pci", tuple(_int_attr(address, None, k) for k in ("domain", "bus", "slot", "function")))]
        vendor = _int_attr(element, "source/vendor", "id")
        product = _int_attr(element, "source/product", "id")
        if vendor is not None or product is not None:
            return [("hostdev", "usb", vendor, product)]
        if address is not None:
            return [("hostdev", "address", tuple(sorted(address.attrib.items())))]
        return [("hostdev", "mode", element.get("mode"), element.get("type"), _attr(element, "source", "uuid"))]
    if tag == "filesystem":
        return [("filesystem", "target", _attr(element, "target", "dir"))]
    if tag == "controller":
        return [("controller", "type", element.get("type"), _int_attr(element, None, "index"))]
    if tag in ("serial", "console", "parallel"):
        return [(tag, "port", _int_attr(element, "target", "port"))]
    if tag == "graphics":
        return [("graphics", "type", element.get("type"))]
    if tag == "channel":
        return [("channel", "target", _attr(element, "target", "name"))]
    if tag == "feature" and element.get("name") is not None:
        return [("feature", "name", element.get("name"))]
    if tag == "cell" and element.get("id") is not None:
        return [("cell", "id", _int_attr(element, None, "id"))]
    return [(tag, "tag")]


def element_identity(element):
    """The identity of ``element`` among its siblings, as a tuple ``(tag, kind, *fields)``.

    Repeated siblings are matched by identity, not by position:

    - ``disk`` by ``target/@dev``;
    - ``interface`` by ``mac/@address`` when it has one, otherwise by its ``type``, its
      ``source`` (network / bridge / dev / name / path / portgroup) and ``model/@type`` -- an
      intent interface without a MAC matches a libvirt interface (which always has a generated MAC)
      with that source and model, in document order;
    - ``hostdev`` by its source PCI address (domain, bus, slot, function as integers), else by USB
      ``vendor``/``product`` ids, else by its mdev ``source/@uuid``;
    - ``filesystem`` by ``target/@dir``;
    - ``controller`` by ``type`` and ``index``;
    - ``serial``, ``console`` and ``parallel`` by ``target/@port``;
    - ``graphics`` by ``type``;
    - ``channel`` by ``target/@name``;
    - a CPU ``feature`` by ``name`` and a NUMA ``cell`` by ``id``;
    - every other element by its tag (namespaced tags in Clark notation ``{uri}local``).

    A field the intent leaves out is ``None`` and acts as a wildcard: ``<controller type='usb'/>``
    matches the first USB controller libvirt numbered. Several siblings with the same identity are
    paired in document order. Integer fields compare as integers (``0x03`` == ``3``), MAC addresses
    case-insensitively.
    """
    return _identity_keys(element)[0]


def _key_matches(intent_key, current_key):
    if len(intent_key) != len(current_key) or intent_key[:2] != current_key[:2]:
        return False
    return all(i is None or i == c for i, c in zip(intent_key[2:], current_key[2:]))


def _has_wildcard(key):
    return any(field is None for field in key[2:])


def _elements(parent):
    return [child for child in parent if isinstance(child.tag, str)]


def match_children(wanted, existing):
    """Pair each element of ``wanted`` with at most one of ``existing`` by identity.

    Returns a list of ``(wanted_child, existing_child_or_None)`` in ``wanted``'s order. Complete keys
    are paired first, wildcard keys afterwards, so ``<controller type='usb'/>`` never steals the
    controller another intent element names by index.
    """
    keyed = [(child, _identity_keys(child)) for child in existing]
    used = set()
    pairs = {}
    ordered = [(pos, child, element_identity(child)) for pos, child in enumerate(wanted)]
    for wildcard_pass in (False, True):
        for pos, _child, key in ordered:
            if _has_wildcard(key) != wildcard_pass:
                continue
            found = None
            for candidate, keys in keyed:
                if id(candidate) not in used and any(_key_matches(key, k) for k in keys):
                    found = candidate
                    break
            if found is not None:
                used.add(id(found))
            pairs[pos] = found
    return [(child, pairs[pos]) for pos, child, _key in ordered]


# ---------------------------------------------------------------------------------------------
# Three-way merge
# ---------------------------------------------------------------------------------------------


def _is_scaled(intent, current):
    if intent.get("unit") is None and current.get("unit") is None:
        return False
    return _as_int(intent.text) is not None and _as_int(current.text) is not None


def _merge_scaled(intent, target, last):
    default_unit = "bytes" if target.tag in BYTE_DEFAULT_TAGS else "KiB"
    wanted = to_bytes(intent.text, intent.get("unit"), default_unit)
    have = to_bytes(target.text, target.get("unit"), default_unit)
    if wanted == have:
        return
    target.text = intent.text.strip()
    if intent.get("unit") is not None:
        target.set("unit", intent.get("unit"))
    elif target.get("unit") is not None:
        target.set("unit", default_unit)
    del last  # a removed unit just means the default unit, handled above


def _merge_element(intent, target, last, equal):
    scaled = _is_scaled(intent, target)
    for name, value in intent.attrib.items():
        if scaled and name == "unit":
            continue
        have = target.get(name)
        if have is not None and (values_equal(value, have) or (equal is not None and equal(target, name, value, have))):
            continue
        target.set(name, value)
    if last is not None:
        for name in last.attrib:
            if name not in intent.attrib and name in target.attrib and not (scaled and name == "unit"):
                del target.attrib[name]

    intent_children = _elements(intent)
    if scaled:
        _merge_scaled(intent, target, last)
    else:
        wanted_text = normalize_whitespace(intent.text)
        if wanted_text is not None:
            have_text = target.text
            if not values_equal(wanted_text, have_text) and not (equal is not None and equal(target, None, wanted_text, have_text)):
                target.text = intent.text.strip() if not intent_children else intent.text
        elif last is not None and normalize_whitespace(last.text) is not None and not intent_children:
            target.text = None

    current_children = _elements(target)
    pairs = match_children(intent_children, current_children)
    last_for = {}
    if last is not None:
        for last_child, current_child in match_children(_elements(last), current_children):
            if current_child is not None:
                last_for[id(current_child)] = last_child
    kept = set()
    previous = None
    for intent_child, current_child in pairs:
        if current_child is None:
            new_child = copy.deepcopy(intent_child)
            new_child.tail = None
            _insert_after(target, previous, new_child)
            previous = new_child
            continue
        kept.add(id(current_child))
        _merge_element(intent_child, current_child, last_for.get(id(current_child)), equal)
        previous = current_child
    for current_child in current_children:
        if id(current_child) not in kept and id(current_child) in last_for:
            target.remove(current_child)


def _insert_after(parent, previous, child):
    if previous is not None:
        previous.addnext(child)
        return
    same = [c for c in _elements(parent) if c.tag == child.tag]
    if same:
        same[0].addprevious(child)
    else:
        parent.append(child)


def three_way_merge(intent, current, last_applied=None, equal=None):
    """Merge the user's ``intent`` into libvirt's ``current`` XML, knowing the ``last_applied`` intent.

    Returns a new element (the inputs are not modified), starting from a copy of ``current``:

    - what ``intent`` says is enforced: its attributes, its text, its child elements (children are
      paired by :func:`element_identity`; unpaired intent children are added);
    - what ``last_applied`` had and ``intent`` no longer has is removed: an attribute, a text, or a
      whole child element (a disk taken out of the XML goes away);
    - everything else in ``current`` is kept: content libvirt generated and the user never wrote
      (UUID, MAC and PCI addresses, implicit controllers, defaults).

    Values are compared normalised (:func:`values_equal`; sizes with a ``unit`` compare in bytes), and
    an equal value keeps libvirt's spelling, so merging an already-applied intent changes nothing.
    ``equal(element, attribute_or_None, intent_value, current_value)`` may add domain-specific
    equivalences (e.g. machine-type aliases); it returns true when the two values mean the same.
    ``current=None`` (the object does not exist yet) returns a copy of ``intent``.
    Works for any root element (``<domain>``, ``<network>``, ``<pool>``...).
    """
    if current is None:
        return copy.deepcopy(intent)
    if intent.tag != current.tag:
        raise ValidationError("the XML root element is <%s>, expected <%s>" % (intent.tag, current.tag))
    result = copy.deepcopy(current)
    _merge_element(intent, result, last_applied, equal)
    return result


# ---------------------------------------------------------------------------------------------
# Last-applied intent in <metadata>, comparison and diff
# ---------------------------------------------------------------------------------------------

LAST_APPLIED_NS = "https://virtops.dev/kvm/last-applied/1"
LAST_APPLIED_PREFIX = "virtops"
_LAST_APPLIED_LOCAL = "last-applied"


def _last_applied_tag(namespace_uri):
    return "{%s}%s" % (namespace_uri, _LAST_APPLIED_LOCAL)


def strip_last_applied(root, namespace_uri=LAST_APPLIED_NS):
    """Remove our last-applied element from ``root``'s ``<metadata>`` (in place); returns ``root``.

    An empty ``<metadata>`` left behind is removed too.
    """
    metadata = root.find("metadata")
    if metadata is not None:
        for node in metadata.findall(_last_applied_tag(namespace_uri)):
            metadata.remove(node)
        if len(metadata) == 0 and normalize_whitespace(metadata.text) is None:
            root.remove(metadata)
    return root


def read_last_applied(root, namespace_uri=LAST_APPLIED_NS):
    """The intent stored by :func:`write_last_applied` in ``root``'s ``<metadata>``, or ``None``."""
    node = root.find("metadata/%s" % _last_applied_tag(namespace_uri))
    if node is None or normalize_whitespace(node.text) is None:
        return None
    try:
        return parse_xml(node.text, "the last-applied intent")
    except ValidationError:
        return None


def canonical(element):
    """A comparable text of ``element``: no blank text, attributes sorted, text whitespace-normalised."""
    clone = copy.deepcopy(element)
    for node in clone.iter():
        if not isinstance(node.tag, str):
            continue
        items = sorted(node.attrib.items())
        node.attrib.clear()
        for key, value in items:
            node.set(key, value)
        node.text = normalize_whitespace(node.text)
        node.tail = None
    return etree.tostring(clone, encoding="unicode")


def xml_equal(left, right):
    """Whether two elements are the same document after :func:`canonical`."""
    return canonical(left) == canonical(right)


def write_last_applied(root, intent, namespace_uri=LAST_APPLIED_NS, prefix=LAST_APPLIED_PREFIX):
    """Store ``intent`` (an element) in ``root``'s ``<metadata>`` under our namespace, in place.

    The intent is kept as escaped text of its canonical form (any last-applied element it carries
    itself is dropped first), so the stored value only changes when the intent's meaning does.
    Returns ``root``.
    """
    stored = strip_last_applied(copy.deepcopy(intent), namespace_uri)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = etree.SubElement(root, "metadata")
    for node in metadata.findall(_last_applied_tag(namespace_uri)):
        metadata.remove(node)
    node = etree.SubElement(metadata, _last_applied_tag(namespace_uri), nsmap={prefix: namespace_uri})
    node.text = canonical(stored)
    return root


def unified_diff(before_text, after_text, before_name="before", after_name="after", context=3):
    """A unified diff of two texts (empty string when they are equal)."""
    lines = difflib.unified_diff(
        (before_text or "").splitlines(True),
        (after_text or "").splitlines(True),
        before_name,
        after_name,
        n=context,
    )
    return "".join(lines)


def parse_named_root(xml_text, kind, name):
    """Parse a libvirt object's XML whose root is ``<kind>`` and whose ``<name>`` is ``name``.

    A missing ``<name>`` is added; a different one is refused, so the XML never defines another object.
    """
    root = parse_xml(xml_text, "%s xml" % kind)
    if root.tag != kind:
        raise ValidationError("%s xml must have <%s> as its root element, found <%s>" % (kind, kind, root.tag))
    name_el = root.find("name")
    if name_el is None:
        name_el = root.makeelement("name", {})
        name_el.text = name
        root.insert(0, name_el)
    elif (name_el.text or "").strip() != name:
        raise ValidationError("%s xml names the %s %r but name is %r; make them the same" % (kind, kind, (name_el.text or "").strip(), name))
    return root
