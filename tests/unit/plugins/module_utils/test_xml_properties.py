# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property tests of the three-way merge: idempotent, intent satisfied, generated content kept."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.virtops.kvm.plugins.module_utils._xml import (
    element_identity,
    parse_xml,
    three_way_merge,
    to_bytes,
    xml_equal,
)

UNITS = ["KiB", "MiB", "GiB", "k", "M", "b"]
DEVS = ["vda", "vdb", "vdc", "vdd", "sda"]


@st.composite
def intents(draw):
    mib = draw(st.integers(min_value=64, max_value=8192))
    unit = draw(st.sampled_from(UNITS))
    value = {"KiB": mib * 1024, "k": mib * 1024, "MiB": mib, "M": mib, "GiB": None, "b": mib * 1024 * 1024}[unit]
    if value is None:
        unit, value = "MiB", mib
    disks = draw(st.lists(st.sampled_from(DEVS), unique=True, max_size=4))
    nics = draw(st.lists(st.sampled_from(["virtio", "e1000", None]), max_size=3))
    vcpus = draw(st.integers(min_value=1, max_value=8))
    boolean = draw(st.sampled_from(["yes", "no", "on", "off"]))
    parts = ["<domain type='qemu'><name>p</name>", "<memory unit='%s'>%d</memory>" % (unit, value), "<vcpu>%d</vcpu>" % vcpus]
    parts.append("<features><acpi/><hyperv><relaxed state='%s'/></hyperv></features>" % boolean)
    parts.append("<devices>")
    for dev in disks:
        parts.append("<disk type='file' device='disk'><source file='/img/%s'/><target dev='%s'/></disk>" % (dev, dev))
    for model in nics:
        parts.append("<interface type='network'><source network='default'/>%s</interface>" % ("<model type='%s'/>" % model if model else ""))
    parts.append("</devices></domain>")
    return parse_xml("".join(parts))


def libvirt_define(intent, seed=0):
    """Imitate libvirt: spell sizes in KiB, add a UUID, MACs, PCI addresses and a controller."""
    root = three_way_merge(intent, None)
    memory = root.find("memory")
    memory.text = str(to_bytes(memory.text, memory.get("unit")) // 1024)
    memory.set("unit", "KiB")
    relaxed = root.find("features/hyperv/relaxed")
    relaxed.set("state", {"yes": "on", "no": "off"}.get(relaxed.get("state"), relaxed.get("state")))
    uuid = parse_xml("<uuid>00000000-0000-0000-0000-%012d</uuid>" % seed)
    root.insert(1, uuid)
    devices = root.find("devices")
    for slot, node in enumerate(devices):
        if node.tag == "interface":
            node.insert(0, parse_xml("<mac address='52:54:00:00:00:%02x'/>" % slot))
        node.append(parse_xml("<address type='pci' domain='0x0000' bus='0x%02x' slot='0x00' function='0x0'/>" % (slot + 1)))
    devices.append(parse_xml("<controller type='usb' index='0' model='qemu-xhci'/>"))
    return root


def satisfied(intent, result):
    if to_bytes(intent.findtext("memory"), intent.find("memory").get("unit")) != to_bytes(result.findtext("memory"), result.find("memory").get("unit")):
        return False
    if result.findtext("vcpu") != intent.findtext("vcpu"):
        return False
    want = sorted(repr(element_identity(d)) for d in intent.findall("devices/disk"))
    have = sorted(repr(element_identity(d)) for d in result.findall("devices/disk"))
    return want == have and len(result.findall("devices/interface")) == len(intent.findall("devices/interface"))


@settings(max_examples=150, deadline=None)
@given(first=intents(), second=intents())
def test_merge_properties(first, second):
    current = libvirt_define(first, seed=7)
    once = three_way_merge(second, current, first)
    twice = three_way_merge(second, once, second)
    # merging an intent twice equals merging it once
    assert xml_equal(once, twice)
    assert xml_equal(three_way_merge(second, once, first), once)
    # after a merge the intent is satisfied
    assert satisfied(second, once)
    # unrelated libvirt-generated content survives
    assert once.findtext("uuid") == "00000000-0000-0000-0000-000000000007"
    assert once.find("devices/controller[@type='usb']") is not None
    for disk in once.findall("devices/disk"):
        dev = disk.find("target").get("dev")
        if dev in [d.find("target").get("dev") for d in first.findall("devices/disk")]:
            assert disk.find("address") is not None


@settings(max_examples=100, deadline=None)
@given(intent=intents())
def test_applying_the_applied_intent_changes_nothing(intent):
    current = libvirt_define(intent, seed=1)
    assert xml_equal(three_way_merge(intent, current, intent), current)
    assert xml_equal(three_way_merge(intent, current, None), current)
