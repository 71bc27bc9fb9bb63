# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's one XML engine (lxml).

This file starts with parsing and serialising; the three-way merge used by domain, network, pool,
volume and domain_device lives here too.
"""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError

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
        raise ValidationError(
            "%s is not well-formed XML: %s (line %s, column %s)" % (what, exc.msg, line, column),
            line=line, column=column,
        ) from exc


def to_string(element, pretty=True):
    """Serialise an element as text (no XML declaration)."""
    return etree.tostring(element, pretty_print=pretty, encoding="unicode")
