# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The XML engine: normalisation, identity, three-way merge, last-applied metadata and diff."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _xml
from ansible_collections.virtops.kvm.plugins.module_utils._errors import ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._xml import (
    LAST_APPLIED_NS,
    canonical,
    element_identity,
    match_children,
    normalize_bool,
    normalize_whitespace,
    parse_xml,
    read_last_applied,
    three_way_merge,
    to_bytes,
    to_kib,
    to_string,
    unified_diff,
    values_equal,
    write_last_applied,
    xml_equal,
)

CURRENT = """
<domain type='qemu'>
  <name>vm</name>
  <uuid>6b1f1c2e-9d1e-4a55-8a0e-2b7a0c1d2e3f</uuid>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/a.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/b.img'/>
      <target dev='vdb' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci'>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </controller>
    <controller type='pci' index='0' model='pcie-root'/>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source network='default'/>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <serial type='pty'>
      <target type='isa-serial' port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
  </devices>
</domain>
"""

INTENT = """
<domain type='qemu'>
  <name>vm</name>
  <memory unit='GiB'>4</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/a.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/b.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <interface type='network'>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
  </devices>
</domain>
"""


def machine_alias(element, attribute, intent_value, current_value):
    return element.tag == "type" and attribute == "machine" and {"q35": "pc-q35-7.2"}.get(intent_value) == current_value


def merged(intent=INTENT, current=CURRENT, last=None, equal=machine_alias):
    return three_way_merge(parse_xml(intent), parse_xml(current), parse_xml(last) if last else None, equal=equal)


@pytest.mark.parametrize(
    "value,unit,default,expected",
    [
        ("4", "GiB", "KiB", 4 * 1024**3),
        ("4194304", "KiB", "KiB", 4 * 1024**3),
        ("4194304", None, "KiB", 4 * 1024**3),
        ("1", "KB", "KiB", 1000),
        ("1", "k", "KiB", 1024),
        ("1", "m", "KiB", 1024**2),
        ("1", "MB", "KiB", 1000**2),
        ("512", "b", "KiB", 512),
        ("512", None, "bytes", 512),
        ("2", "TiB", "KiB", 2 * 1024**4),
        (" 3 ", "bytes", "KiB", 3),
    ],
)
def test_to_bytes(value, unit, default, expected):
    assert to_bytes(value, unit, default) == expected


@pytest.mark.parametrize("value,unit,expected", [("4", "GiB", 4194304), ("1", "b", 1), ("1025", "b", 2), ("192", "MiB", 196608)])
def test_to_kib_rounds_up(value, unit, expected):
    assert to_kib(value, unit) == expected


@pytest.mark.parametrize("value,unit", [("x", "KiB"), ("1", "furlong"), ("1.5", "GiB")])
def test_bad_sizes_are_validation_errors(value, unit):
    with pytest.raises(ValidationError):
        to_bytes(value, unit)


@pytest.mark.parametrize(
    "value,expected",
    [("yes", True), ("on", True), ("TRUE", True), (True, True), ("no", False), ("off", False), ("false", False), ("maybe", None), (None, None)],
)
def test_normalize_bool(value, expected):
    assert normalize_bool(value) is expected


@pytest.mark.parametrize("value,expected", [("  a \n b ", "a b"), ("\n  ", None), (None, None), ("x", "x")])
def test_normalize_whitespace(value, expected):
    assert normalize_whitespace(value) == expected


@pytest.mark.parametrize(
    "left,right,expected",
    [
        ("yes", "on", True),
        ("no", "off", True),
        ("yes", "off", False),
        ("0x00", "0", True),
        ("0x1f", "31", True),
        ("52:54:00:AA:BB:CC", "52:54:00:aa:bb:cc", True),
        ("hvm ", " hvm", True),
        ("1", "yes", False),
        ("a", None, False),
        ("virtio", "e1000", False),
    ],
)
def test_values_equal(left, right, expected):
    assert values_equal(left, right) is expected


@pytest.mark.parametrize(
    "xml,expected",
    [
        ("<disk><target dev='vda' bus='virtio'/></disk>", ("disk", "target", "vda")),
        ("<interface type='network'><mac address='52:54:00:AA:00:01'/></interface>", ("interface", "mac", "52:54:00:aa:00:01")),
        (
            "<interface type='network'><source network='default'/><model type='virtio'/></interface>",
            ("interface", "source", "network", (("network", "default"),), "virtio"),
        ),
        (
            "<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x03' slot='0x00' function='0x1'/></source></hostdev>",
            ("hostdev", "pci", (0, 3, 0, 1)),
        ),
        (
            "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/><product id='0xbeef'/></source></hostdev>",
            ("hostdev", "usb", 0x1234, 0xBEEF),
        ),
        ("<filesystem><target dir='share'/></filesystem>", ("filesystem", "target", "share")),
        ("<controller type='usb' index='0'/>", ("controller", "type", "usb", 0)),
        ("<controller type='usb'/>", ("controller", "type", "usb", None)),
        ("<serial type='pty'><target port='1'/></serial>", ("serial", "port", 1)),
        ("<console type='pty'><target type='serial' port='0'/></console>", ("console", "port", 0)),
        ("<graphics type='vnc' port='-1'/>", ("graphics", "type", "vnc")),
        ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>", ("channel", "target", "org.qemu.guest_agent.0")),
        ("<feature policy='require' name='vmx'/>", ("feature", "name", "vmx")),
        ("<cell id='1' cpus='2-3' memory='1'/>", ("cell", "id", 1)),
        ("<memory unit='KiB'>1</memory>", ("memory", "tag")),
        ("<x:y xmlns:x='urn:x'/>", ("{urn:x}y", "tag")),
    ],
)
def test_element_identity(xml, expected):
    assert element_identity(parse_xml(xml)) == expected


def test_match_children_prefers_complete_keys_over_wildcards():
    wanted = parse_xml("<d><controller type='usb'/><controller type='usb' index='0'/></d>")
    existing = parse_xml("<d><controller type='usb' index='0'/><controller type='usb' index='1'/></d>")
    pairs = match_children(list(wanted), list(existing))
    assert [cur.get("index") for _want, cur in pairs] == ["1", "0"]


def test_match_children_unmatched_is_none():
    pairs = match_children(list(parse_xml("<d><disk><target dev='vdz'/></disk></d>")), list(parse_xml(CURRENT).find("devices")))
    assert pairs[0][1] is None


def test_applied_intent_is_no_change():
    current = parse_xml(CURRENT)
    assert xml_equal(merged(), current)
    assert xml_equal(merged(last=INTENT), current)


def test_without_alias_hook_machine_is_changed():
    result = merged(equal=None)
    assert result.find("os/type").get("machine") == "q35"


def test_generated_content_is_kept():
    result = merged()
    assert result.findtext("uuid") == "6b1f1c2e-9d1e-4a55-8a0e-2b7a0c1d2e3f"
    assert result.find("devices/interface/mac").get("address") == "52:54:00:aa:bb:cc"
    assert result.find("devices/disk/address").get("bus") == "0x04"
    assert len(result.findall("devices/controller")) == 2
    assert result.find("devices/console") is not None


@pytest.mark.parametrize(
    "old,new,check",
    [
        ("<vcpu>2</vcpu>", "<vcpu>3</vcpu>", lambda r: r.findtext("vcpu") == "3" and r.find("vcpu").get("placement") == "static"),
        ("<memory unit='GiB'>4</memory>", "<memory unit='MiB'>512</memory>", lambda r: (r.findtext("memory"), r.find("memory").get("unit")) == ("512", "MiB")),
        ("<memory unit='GiB'>4</memory>", "<memory>2097152</memory>", lambda r: (r.findtext("memory"), r.find("memory").get("unit")) == ("2097152", "KiB")),
        (
            "<model type='virtio'/>\n    </interface>",
            "<model type='e1000'/>\n    </interface>",
            # without a MAC a different model is another NIC (identity = source + model): replaced, new MAC later
            lambda r: [i.find("model").get("type") for i in r.findall("devices/interface")] == ["e1000"] and r.find("devices/interface/mac") is None,
        ),
        ("<target dev='vdb' bus='virtio'/>", "<target dev='vdb' bus='sata'/>", lambda r: r.findall("devices/disk/target")[1].get("bus") == "sata"),
    ],
)
def test_intent_changes_are_enforced(old, new, check):
    intent = INTENT.replace(old, new, 1)
    assert intent != INTENT
    result = merged(intent=intent, last=INTENT)
    assert check(result), to_string(result)
    assert not xml_equal(result, parse_xml(CURRENT))


def test_removed_disk_is_removed_but_unmanaged_one_is_kept():
    without_vdb = INTENT.replace(
        """<disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/b.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>""",
        "",
    )
    assert without_vdb != INTENT
    removed = merged(intent=without_vdb, last=INTENT)
    assert [t.get("dev") for t in removed.findall("devices/disk/target")] == ["vda"]
    # without a last-applied record vdb was never ours: it stays
    kept = merged(intent=without_vdb, last=None)
    assert [t.get("dev") for t in kept.findall("devices/disk/target")] == ["vda", "vdb"]


def test_removed_attribute_and_text_are_removed():
    last = INTENT.replace("<vcpu>2</vcpu>", "<vcpu current='1'>2</vcpu><description>hello</description>")
    current = CURRENT.replace("<vcpu placement='static'>2</vcpu>", "<vcpu placement='static' current='1'>2</vcpu><description>hello</description>")
    result = merged(intent=INTENT, current=current, last=last)
    assert result.find("vcpu").get("current") is None
    assert result.find("vcpu").get("placement") == "static"
    assert result.find("description") is None


def test_added_disk_is_inserted_next_to_its_sibling():
    new_disk = "<disk type='file' device='disk'><source file='/x.img'/><target dev='vdc'/></disk>"
    intent = INTENT.replace("</disk>\n    <interface", "</disk>\n    %s\n    <interface" % new_disk)
    result = merged(intent=intent, last=INTENT)
    assert [t.get("dev") for t in result.findall("devices/disk/target")] == ["vda", "vdb", "vdc"]
    assert result.find("devices/disk[3]/source").get("file") == "/x.img"


def test_interface_with_mac_matches_by_mac_only():
    intent = INTENT.replace("<source network='default'/>", "<mac address='52:54:00:AA:BB:CC'/><source network='other'/>")
    result = merged(intent=intent, last=INTENT)
    assert len(result.findall("devices/interface")) == 1
    assert result.find("devices/interface/source").get("network") == "other"


def test_root_mismatch_is_rejected():
    with pytest.raises(ValidationError, match="<network>, expected <domain>"):
        three_way_merge(parse_xml("<network/>"), parse_xml(CURRENT))


def test_new_object_is_a_copy_of_intent():
    intent = parse_xml(INTENT)
    result = three_way_merge(intent, None)
    assert result is not intent and xml_equal(result, intent)


def test_inputs_are_not_modified():
    intent, current, last = parse_xml(INTENT), parse_xml(CURRENT), parse_xml(INTENT)
    before = [canonical(x) for x in (intent, current, last)]
    three_way_merge(intent, current, last)
    assert [canonical(x) for x in (intent, current, last)] == before


@pytest.mark.parametrize(
    "root_xml", [CURRENT, "<network><name>n</name></network>", "<network><name>n</name><metadata><a:x xmlns:a='urn:a'/></metadata></network>"]
)
def test_last_applied_round_trip(root_xml):
    root = parse_xml(root_xml)
    intent = parse_xml(INTENT)
    write_last_applied(root, intent)
    stored = read_last_applied(root)
    assert xml_equal(stored, intent)
    # writing again replaces, never duplicates; other metadata stays
    write_last_applied(root, intent)
    assert len(root.findall("metadata/{%s}last-applied" % LAST_APPLIED_NS)) == 1
    if "urn:a" in root_xml:
        assert root.find("metadata/{urn:a}x") is not None
    # survives serialisation (what libvirt stores)
    assert xml_equal(read_last_applied(parse_xml(to_string(root))), intent)


def test_last_applied_is_not_nested():
    root = parse_xml(CURRENT)
    write_last_applied(root, parse_xml(INTENT))
    write_last_applied(root, root)  # e.g. a user feeding back dumpxml output
    assert "last-applied" not in read_last_applied(root).findtext("metadata/*", default="") and read_last_applied(root).find("metadata") is None


@pytest.mark.parametrize(
    "root_xml",
    [
        "<domain/>",
        "<domain><metadata/></domain>",
        "<domain><metadata><v:last-applied xmlns:v='%s'>&lt;broken</v:last-applied></metadata></domain>" % LAST_APPLIED_NS,
    ],
)
def test_read_last_applied_absent_or_broken(root_xml):
    assert read_last_applied(parse_xml(root_xml)) is None


def test_unified_diff_shows_only_the_change():
    before = to_string(parse_xml(CURRENT))
    after = to_string(merged(intent=INTENT.replace("<vcpu>2</vcpu>", "<vcpu>3</vcpu>"), last=INTENT))
    diff = unified_diff(before, after)
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == ['-  <vcpu placement="static">2</vcpu>', '+  <vcpu placement="static">3</vcpu>']
    assert unified_diff(before, before) == ""


def test_canonical_ignores_attribute_order_and_whitespace():
    assert xml_equal(parse_xml("<a x='1' y='2'>\n <b> t </b></a>"), parse_xml("<a y='2' x='1'><b>t</b></a>"))
    assert not xml_equal(parse_xml("<a x='1'/>"), parse_xml("<a x='2'/>"))


def test_module_constant_is_a_namespace_uri():
    assert _xml.LAST_APPLIED_NS.startswith("https://")


def test_interface_without_mac_matches_its_live_xml():
    """libvirt adds bridge= and portid= to a network source in the live XML; the identity ignores them."""
    from ansible_collections.virtops.kvm.plugins.module_utils._xml import element_identity, match_children, parse_xml

    intent = parse_xml("<devices><interface type='network'><source network='virtops-net'/><model type='virtio'/></interface></devices>")
    live = parse_xml(
        "<devices><interface type='network'><mac address='52:54:00:12:34:56'/>"
        "<source network='virtops-net' portid='0a6b1a8e-1111-2222-3333-444455556666' bridge='virbr9'/>"
        "<model type='virtio'/></interface></devices>"
    )
    pairs = match_children(list(intent), list(live))
    assert pairs[0][1] is live[0]
    assert element_identity(intent[0]) == ("interface", "source", "network", (("network", "virtops-net"),), "virtio")
