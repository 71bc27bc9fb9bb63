# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain_device logic: parsing the intent, identity, update-vs-replace decisions, scope, checks."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_device as dd
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import VIR_DOMAIN_DEFINE_VALIDATE, VIR_DOMAIN_XML_INACTIVE
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends
from ansible_collections.virtops.kvm.plugins.module_utils._xml import parse_xml, to_string

# A running guest's live <devices> as libvirt 9.0 shows it (aliases, addresses, source index).
LIVE = """
<domain type='qemu'>
  <name>vm</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/img/root.qcow2' index='2'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/img/one.iso' index='1'/>
      <backingStore/>
      <target dev='sda' bus='scsi'/>
      <readonly/>
      <alias name='scsi0-0-0-0'/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source index='3'/>
      <target dev='sdb' bus='scsi'/>
      <readonly/>
      <alias name='scsi0-0-0-1'/>
    </disk>
    <controller type='scsi' index='0' model='virtio-scsi'>
      <alias name='scsi0'/>
    </controller>
    <controller type='usb' index='0' model='qemu-xhci'/>
    <interface type='ethernet'>
      <mac address='52:54:00:dd:00:01'/>
      <target dev='vnet3' managed='yes'/>
      <model type='virtio'/>
      <link state='up'/>
      <alias name='net0'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source network='lan'/>
      <model type='e1000e'/>
    </interface>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source>
        <address domain='0x0000' bus='0x03' slot='0x10' function='0x2'/>
      </source>
    </hostdev>
    <hostdev mode='subsystem' type='usb' managed='no'>
      <source>
        <vendor id='0x0781'/>
        <product id='0x5567'/>
      </source>
    </hostdev>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs'/>
      <source dir='/srv/share'/>
      <target dir='share'/>
    </filesystem>
    <watchdog model='i6300esb' action='reset'/>
  </devices>
</domain>
"""


@pytest.fixture
def devices():
    return parse_xml(LIVE).find("devices")


def _el(text):
    return parse_xml(text)


# ------------------------------------------------------------------ parsing the intent


@pytest.mark.parametrize(
    "text, tag",
    [
        ("<disk type='file' device='disk'><source file='/a'/><target dev='vdb'/></disk>", "disk"),
        ("<devices><interface type='network'><source network='lan'/></interface></devices>", "interface"),
        ("<?xml version='1.0'?>\n<watchdog model='i6300esb'/>", "watchdog"),
        ("  <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\n", "rng"),
    ],
)
def test_parse_device_accepts_one_device(text, tag):
    assert dd.parse_device(text).tag == tag


@pytest.mark.parametrize(
    "text, words",
    [
        ("<disk device='disk'><target dev='vdb'/></disk><disk device='disk'><target dev='vdc'/></disk>", "2 top-level elements"),
        ("<devices><disk/><interface/></devices>", "2 devices (<disk>, <interface>)"),
        ("<devices/>", "0 devices"),
        ("<domain type='qemu'><name>x</name></domain>", "<domain>, which is not a device"),
        ("<disk><target dev='vdb'></disk>", "line 1"),
        ("   ", "xml is empty"),
    ],
)
def test_parse_device_rejects(text, words):
    with pytest.raises(ValidationError) as err:
        dd.parse_device(text)
    assert words in err.value.msg


# ------------------------------------------------------------------ identity


@pytest.mark.parametrize(
    "intent, label",
    [
        ("<disk type='file' device='disk'><target dev='vda'/></disk>", "virtio-disk0"),
        ("<disk device='cdrom'><target dev='sdb'/></disk>", "scsi0-0-0-1"),
        ("<interface type='ethernet'><mac address='52:54:00:DD:00:01'/></interface>", "net0"),
        ("<controller type='scsi' index='0'/>", "scsi0"),
    ],
)
def test_find_device_by_identity(devices, intent, label):
    found = dd.find_device(devices, _el(intent))
    assert found is not None and found.find("alias").get("name") == label


@pytest.mark.parametrize(
    "intent, check",
    [
        ("<interface type='network'><source network='lan'/><model type='e1000e'/></interface>", ("mac", "address", "52:54:00:aa:bb:cc")),
        (
            "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='3' slot='0x10' function='2'/></source></hostdev>",
            ("source/address", "bus", "0x03"),
        ),
        ("<hostdev mode='subsystem' type='usb'><source><vendor id='0x0781'/><product id='0x5567'/></source></hostdev>", ("source/vendor", "id", "0x0781")),
        ("<filesystem type='mount'><source dir='/elsewhere'/><target dir='share'/></filesystem>", ("source", "dir", "/srv/share")),
        ("<watchdog model='ib700'/>", (".", "model", "i6300esb")),
        ("<controller type='usb'/>", (".", "model", "qemu-xhci")),
    ],
)
def test_find_device_other_kinds(devices, intent, check):
    found = dd.find_device(devices, _el(intent))
    path, name, value = check
    assert found is not None and found.find(path).get(name) == value


@pytest.mark.parametrize(
    "intent",
    [
        "<disk device='disk'><target dev='vdz'/></disk>",
        "<interface type='ethernet'><mac address='52:54:00:dd:00:99'/></interface>",
        "<interface type='network'><source network='other'/><model type='e1000e'/></interface>",
        "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='3' slot='0x10' function='3'/></source></hostdev>",
        "<filesystem type='mount'><target dir='other'/></filesystem>",
        "<rng model='virtio'/>",
    ],
)
def test_find_device_absent(devices, intent):
    assert dd.find_device(devices, _el(intent)) is None


def test_match_overrides_identity(devices):
    intent = _el("<disk device='cdrom'><target dev='hdc'/></disk>")
    assert dd.find_device(devices, intent) is None
    found = dd.find_device(devices, intent, match="disk[source/@file='/img/one.iso']")
    assert found.find("target").get("dev") == "sda"


@pytest.mark.parametrize(
    "match, words",
    [
        ("disk[@device='cdrom']", "selects 2 devices"),
        ("disk[", "not a valid XPath"),
        ("count(disk)", "must select elements"),
    ],
)
def test_match_errors(devices, match, words):
    with pytest.raises(ValidationError) as err:
        dd.find_device(devices, _el("<disk/>"), match=match)
    assert words in err.value.msg


# ------------------------------------------------------------------ update vs replace

CD_ONE = "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/img/one.iso'/><target dev='sda' bus='scsi'/><readonly/></disk>"
CD_TWO = "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/img/two.iso'/><target dev='sda' bus='scsi'/><readonly/></disk>"
CD_QCOW = "<disk type='file' device='cdrom'><driver name='qemu' type='qcow2'/><source file='/img/two.qcow2'/><target dev='sda' bus='scsi'/></disk>"
CD_CACHE = "<disk type='file' device='cdrom'><driver name='qemu' type='raw' cache='none'/><source file='/img/one.iso'/><target dev='sda' bus='scsi'/></disk>"
CD_EMPTY = "<disk type='file' device='cdrom'><target dev='sda' bus='scsi'/></disk>"
CD_EMPTY_B = "<disk type='file' device='cdrom'><target dev='sdb' bus='scsi'/></disk>"
CD_FILL_B = "<disk type='file' device='cdrom'><source file='/img/one.iso'/><target dev='sdb' bus='scsi'/></disk>"
ROOT_SAME = "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/root.qcow2'/><target dev='vda' bus='virtio'/></disk>"
ROOT_CACHE = "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/><source file='/img/root.qcow2'/><target dev='vda'/></disk>"
NIC = "<interface type='ethernet'><mac address='52:54:00:dd:00:01'/><model type='virtio'/>%s</interface>"


@pytest.mark.parametrize(
    "intent, action",
    [
        (CD_ONE, "none"),
        (CD_TWO, "updated"),
        (CD_QCOW, "updated"),
        (CD_CACHE, "replaced"),
        (CD_EMPTY, "updated"),
        (CD_EMPTY_B, "none"),
        (CD_FILL_B, "updated"),
        (ROOT_SAME, "none"),
        (ROOT_CACHE, "replaced"),
        (NIC % "", "none"),
        (NIC % "<link state='up'/>", "none"),
        (NIC % "<link state='down'/>", "updated"),
        (NIC % "<bandwidth><inbound average='1000'/></bandwidth>", "updated"),
        (NIC.replace("virtio", "e1000e") % "", "replaced"),
        (NIC.replace("virtio", "e1000e") % "<link state='down'/>", "replaced"),
        ("<watchdog model='i6300esb' action='poweroff'/>", "replaced"),
        ("<watchdog model='i6300esb' action='reset'/>", "none"),
        ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0' bus='3' slot='16' function='2'/></source></hostdev>", "none"),
        ("<hostdev mode='subsystem' type='usb' managed='yes'><source><vendor id='0x0781'/><product id='0x5567'/></source></hostdev>", "replaced"),
        ("<disk type='file' device='disk'><source file='/img/data.qcow2'/><target dev='vdb' bus='virtio'/></disk>", "attached"),
    ],
)
def test_plan_present(devices, intent, action):
    assert dd.plan_target(_el(intent), devices, "present")["action"] == action


@pytest.mark.parametrize(
    "intent, action",
    [
        (CD_EMPTY, "detached"),
        ("<disk device='disk'><target dev='vdq'/></disk>", "none"),
        ("<interface type='ethernet'><mac address='52:54:00:dd:00:01'/></interface>", "detached"),
        ("<interface type='ethernet'><mac address='52:54:00:dd:00:77'/></interface>", "none"),
    ],
)
def test_plan_absent(devices, intent, action):
    plan = dd.plan_target(_el(intent), devices, "absent")
    assert plan["action"] == action
    assert plan["after"] is None


def test_media_change_replaces_the_whole_source(devices):
    plan = dd.plan_target(_el(CD_TWO), devices, "present")
    after = plan["after"]
    assert after.find("source").attrib == {"file": "/img/two.iso"}
    assert after.find("backingStore") is None
    assert after.find("alias").get("name") == "scsi0-0-0-0"  # the rest of the drive is kept
    sent = dd.for_libvirt(after)
    assert sent.find("alias") is None


def test_eject_removes_source(devices):
    plan = dd.plan_target(_el(CD_EMPTY), devices, "present")
    assert plan["after"].find("source") is None
    assert plan["after"].find("readonly") is not None
    assert "<source>" in plan["reason"]


def test_link_update_keeps_generated_content(devices):
    after = dd.plan_target(_el(NIC % "<link state='down'/>"), devices, "present")["after"]
    assert after.find("link").get("state") == "down"
    assert after.find("target").get("dev") == "vnet3"


def test_disk_target_clash_is_refused(devices):
    intent = _el("<disk type='file' device='disk'><source file='/img/other.qcow2'/><target dev='vda' bus='virtio'/></disk>")
    with pytest.raises(ValidationError) as err:
        dd.plan_target(intent, devices, "present")
    assert "target dev vda is already used by another disk (/img/root.qcow2)" in err.value.msg
    assert "sda, sdb, vda" in err.value.msg
    assert dd.plan_target(intent, devices, "present", match="disk[target/@dev='vda']")["action"] == "replaced"


# ------------------------------------------------------------------ scope


@pytest.mark.parametrize(
    "active, persistent, live, config, expected",
    [
        (True, True, "auto", None, (True, True)),
        (False, True, "auto", None, (False, True)),
        (True, False, "auto", None, (True, False)),
        (True, True, "no", None, (False, True)),
        (True, True, "auto", False, (True, False)),
        (True, True, "yes", True, (True, True)),
        (False, True, "no", True, (False, True)),
    ],
)
def test_resolve_scope(active, persistent, live, config, expected):
    assert dd.resolve_scope(active, persistent, live, config) == expected


@pytest.mark.parametrize(
    "active, persistent, live, config, words",
    [
        (False, True, "yes", None, "live=yes"),
        (True, False, "auto", True, "transient"),
        (False, True, "auto", False, "nothing to apply to"),
        (True, True, "no", False, "nothing to apply to"),
    ],
)
def test_resolve_scope_errors(active, persistent, live, config, words):
    with pytest.raises(ValidationError) as err:
        dd.resolve_scope(active, persistent, live, config)
    assert words in err.value.msg


@pytest.mark.parametrize(
    "actions, overall",
    [
        (["none", "none"], "none"),
        (["attached", "none"], "attached"),
        (["updated", "attached"], "attached"),
        (["replaced", "updated"], "replaced"),
        (["detached", None], "detached"),
        ([], "none"),
    ],
)
def test_overall_action(actions, overall):
    assert dd.overall_action(actions) == overall


# ------------------------------------------------------------------ virtiofs and host devices

FS = "<filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/><source dir='/srv'/><target dir='srv'/></filesystem>"


@pytest.mark.parametrize(
    "domain, shared",
    [
        ("<domain><memoryBacking><access mode='shared'/></memoryBacking></domain>", True),
        ("<domain><memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking></domain>", True),
        ("<domain><memoryBacking><source type='memfd'/></memoryBacking></domain>", False),
        ("<domain><memoryBacking><access mode='private'/></memoryBacking></domain>", False),
        ("<domain/>", False),
        ("<domain><cpu><numa><cell id='0' memAccess='shared'/><cell id='1' memAccess='shared'/></numa></cpu></domain>", True),
        ("<domain><cpu><numa><cell id='0' memAccess='shared'/><cell id='1'/></numa></cpu></domain>", False),
    ],
)
def test_shared_memory(domain, shared):
    assert dd.has_shared_memory(_el(domain)) is shared


def test_virtiofs_without_shared_memory_fails_with_the_xml():
    with pytest.raises(ValidationError) as err:
        dd.check_virtiofs(_el(FS), _el("<domain/>"), "vm")
    assert "<access mode='shared'/>" in err.value.msg
    assert err.value.details["xml_to_add"] == dd.SHARED_MEMORY_XML
    dd.check_virtiofs(_el(FS.replace("virtiofs", "path")), _el("<domain/>"), "vm")  # 9p needs nothing
    dd.check_virtiofs(_el(FS), _el("<domain><memoryBacking><access mode='shared'/></memoryBacking></domain>"), "vm")


@pytest.mark.parametrize(
    "intent, expected",
    [
        (
            "<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x03' slot='0x10' function='0x2'/></source></hostdev>",
            ("pci", (0, 3, 16, 2)),
        ),
        (
            "<interface type='hostdev'><source><address type='pci' domain='0x0000' bus='0x03' slot='0x10' function='0x3'/></source></interface>",
            ("pci", (0, 3, 16, 3)),
        ),
        (
            "<hostdev mode='subsystem' type='usb'><source><vendor id='0x0781'/><product id='0x5567'/></source></hostdev>",
            ("usb", {"vendor": 0x781, "product": 0x5567}),
        ),
        ("<hostdev mode='subsystem' type='usb'><source><address bus='1' device='4'/></source></hostdev>", ("usb", {"bus": 1, "device": 4})),
        ("<interface type='network'><source network='vf-pool'/></interface>", None),
        ("<hostdev mode='capabilities' type='storage'><source><block>/dev/sdf</block></source></hostdev>", None),
    ],
)
def test_hostdev_source(intent, expected):
    assert dd.hostdev_source(_el(intent)) == expected


@pytest.mark.parametrize(
    "intent, words",
    [
        (
            "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0x99' slot='0' function='0'/></source></hostdev>",
            "host PCI device 0000:99:00.0 does not exist on this host",
        ),
        (
            "<hostdev mode='subsystem' type='usb'><source><vendor id='0xdead'/><product id='0xbeef'/></source></hostdev>",
            "host USB device product=beef, vendor=dead does not exist",
        ),
    ],
)
def test_missing_host_device(test_conn, intent, words):
    with pytest.raises(LibvirtError) as err:
        dd.check_host_device(test_conn, _el(intent))
    assert words in err.value.msg


# ------------------------------------------------------------------ whole runs on test:///default (check mode)


def manage_device(client, name, xml, *, check_mode=False, **options):
    """The module's entry point with the module's defaults for the options a test leaves out."""
    params = dict(domain=name, xml=xml, state="present", live="auto", config=None, match=None, timeout=30, uri=client.uri)
    params.update(options)
    return dd.ensure_domain_device(Backends(libvirt=client), params, check_mode)


DATA_DISK = "<disk type='file' device='disk'><source file='/guest/data.img'/><target dev='vdb' bus='virtio'/></disk>"


@pytest.mark.parametrize(
    "xml, state, changed, action",
    [
        (DATA_DISK, "present", True, "attached"),
        (DATA_DISK, "absent", False, "none"),
        ("<disk type='file' device='disk'><source file='/guest/diskimage1'/><target dev='vda' bus='virtio'/></disk>", "present", False, "none"),
        ("<disk device='disk'><target dev='vda'/></disk>", "absent", True, "detached"),
        ("<interface type='network'><mac address='AA:BB:CC:DD:EE:FF'/><source network='default'/><link state='down'/></interface>", "present", True, "updated"),
        (
            "<interface type='network'><mac address='aa:bb:cc:dd:ee:ff'/><source network='default'/><model type='e1000'/></interface>",
            "present",
            True,
            "replaced",
        ),
    ],
)
def test_manage_device_check_mode(test_conn, xml, state, changed, action):
    before = test_conn.lookup_domain("test").XMLDesc(0)
    result = manage_device(test_conn, "test", xml, state=state, check_mode=True)
    assert result["changed"] is changed
    assert result["action"] == action
    assert result["actions"] == {"live": action, "config": action}
    assert result["live_applied"] is changed and result["config_applied"] is changed
    assert (result["diff"]["before"] != result["diff"]["after"]) is changed
    assert test_conn.lookup_domain("test").XMLDesc(0) == before


def test_manage_device_diff_shows_the_device(test_conn):
    result = manage_device(test_conn, "test", DATA_DISK, check_mode=True)
    assert result["diff"]["before"] == ""
    assert "/guest/data.img" in result["diff"]["after"] and "vdb" in result["device"]
    result = manage_device(test_conn, "test", "<disk device='disk'><target dev='vda'/></disk>", state="absent", check_mode=True)
    assert "/guest/diskimage1" in result["diff"]["before"] and result["diff"]["after"] == "" and result["device"] == ""


def test_manage_device_scope_on_a_stopped_guest(test_conn):
    test_conn.lookup_domain("test").destroy()
    result = manage_device(test_conn, "test", DATA_DISK, check_mode=True)
    assert result["actions"] == {"live": None, "config": "attached"}
    assert result["config_applied"] is True and result["live_applied"] is False
    with pytest.raises(ValidationError) as err:
        manage_device(test_conn, "test", DATA_DISK, live="yes", check_mode=True)
    assert "not running" in err.value.msg


@pytest.mark.parametrize(
    "name, xml, words",
    [
        ("no-such-guest", DATA_DISK, "guest no-such-guest does not exist"),
        ("test", "<domain/>", "not a device"),
        ("test", "<disk type='file' device='disk'><source file='/guest/diskimage1'/></disk>", "needs <target dev='...'/>"),
        ("test", FS, "no shared memory backing"),
        ("test", "<disk type='file' device='disk'><source file='/x.img'/><target dev='vda'/></disk>", "already used by another disk"),
    ],
)
def test_manage_device_bad_input(test_conn, name, xml, words):
    with pytest.raises(ValidationError) as err:
        manage_device(test_conn, name, xml, check_mode=True)
    assert words in err.value.msg


# ------------------------------------------------------------------ applying (libvirt's test driver has no device
# hotplug, so a recording stand-in for the virDomain checks the order and flags of the calls; the
# integration target does the same against the real libvirtd)


class RecordingDomain:
    def __init__(self, live_xml, config_xml, release=True, refuse_define=False, refuse_attach=False):
        self.live_xml, self.config_xml, self.release = live_xml, config_xml, release
        self.refuse_define, self.refuse_attach = refuse_define, refuse_attach
        self.calls = []

    def isActive(self):
        return 1

    def isPersistent(self):
        return 1

    def XMLDesc(self, flags):
        return self.config_xml if flags & VIR_DOMAIN_XML_INACTIVE else self.live_xml

    def attachDeviceFlags(self, xml, flags):
        self.calls.append(("attach", flags, xml))
        if self.refuse_attach and "x1" in xml:
            raise LibvirtError("unsupported configuration: the new disk")

    def updateDeviceFlags(self, xml, flags):
        self.calls.append(("update", flags, xml))

    def detachDeviceFlags(self, xml, flags):
        self.calls.append(("detach", flags, xml))
        if self.release and flags & dd.AFFECT_LIVE:
            self.live_xml = self.live_xml.replace("<target dev='vda' bus='virtio'/>", "<target dev='vdx' bus='virtio'/>")


class RecordingConnection:
    def __init__(self, dom):
        self.dom = dom

    def defineXMLFlags(self, xml, flags):
        self.dom.calls.append(("define", flags, xml))
        if self.dom.refuse_define:
            raise LibvirtError("XML document failed to validate against schema: Unable to validate doc against domain.rng")
        self.dom.config_xml = xml
        return self.dom


class RecordingClient:
    uri = "test:///recording"

    def __init__(self, dom):
        self.dom = dom
        self.conn = RecordingConnection(dom)

    def lookup_domain(self, name):
        return self.dom

    def call(self, action, func, *args):
        try:
            return func(*args)
        except LibvirtError as exc:  # as LibvirtClient.call: the action first, then libvirt's text
            raise LibvirtError("%s: %s" % (action, exc.msg)) from exc


LIVE_ONE_DISK = (
    "<domain><devices><disk type='file' device='disk'><source file='/img/a'/><target dev='vda' bus='virtio'/>"
    "<alias name='virtio-disk0'/></disk></devices></domain>"
)
CONFIG_ONE_DISK = "<domain><devices><disk type='file' device='disk'><source file='/img/a'/><target dev='vda' bus='virtio'/></disk></devices></domain>"
EMPTY = "<domain><devices/></domain>"
BOTH = dd.AFFECT_LIVE | dd.AFFECT_CONFIG


@pytest.mark.parametrize(
    "live_xml, config_xml, xml, state, calls",
    [
        (EMPTY, EMPTY, "<disk type='file' device='disk'><source file='/img/a'/><target dev='vda'/></disk>", "present", [("attach", BOTH)]),
        (LIVE_ONE_DISK, CONFIG_ONE_DISK, "<disk device='disk'><target dev='vda'/></disk>", "absent", [("detach", BOTH)]),
        (LIVE_ONE_DISK, EMPTY, "<disk device='disk'><target dev='vda'/></disk>", "absent", [("detach", dd.AFFECT_LIVE)]),
        (EMPTY, CONFIG_ONE_DISK, "<disk type='file' device='disk'><source file='/img/a'/><target dev='vda'/></disk>", "present", [("attach", dd.AFFECT_LIVE)]),
        (
            LIVE_ONE_DISK,
            CONFIG_ONE_DISK,
            "<disk type='file' device='disk'><source file='/img/a'/><target dev='vda'/><serial>x1</serial></disk>",
            "present",
            [("define", VIR_DOMAIN_DEFINE_VALIDATE), ("detach", dd.AFFECT_LIVE), ("attach", dd.AFFECT_LIVE)],
        ),
    ],
)
def test_apply_calls(live_xml, config_xml, xml, state, calls):
    dom = RecordingDomain(live_xml, config_xml)
    result = manage_device(RecordingClient(dom), "vm", xml, state=state, timeout=1)
    assert [(verb, flags) for verb, flags, _xml in dom.calls] == calls
    assert result["changed"] is True
    assert all("<alias" not in sent for verb, _flags, sent in dom.calls if verb != "define")


SERIAL_DISK = "<disk type='file' device='disk'><source file='/img/a'/><target dev='vda'/><serial>x1</serial></disk>"
CONFIG_WITH_ADDRESS = (
    "<domain><name>vm</name><devices><disk type='file' device='disk'><source file='/img/a'/><target dev='vda' bus='virtio'/>"
    "<address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/></disk><interface type='user'/></devices></domain>"
)


def test_replace_defines_the_whole_new_definition_keeping_the_address():
    dom = RecordingDomain(EMPTY, CONFIG_WITH_ADDRESS)
    result = manage_device(RecordingClient(dom), "vm", SERIAL_DISK, live="no")
    assert [(verb, flags) for verb, flags, _xml in dom.calls] == [("define", VIR_DOMAIN_DEFINE_VALIDATE)]
    defined = parse_xml(dom.calls[0][2])
    (disk,) = defined.findall("devices/disk")
    assert disk.findtext("serial") == "x1" and disk.find("address").get("bus") == "0x04"
    assert defined.find("devices/interface") is not None and defined.findtext("name") == "vm"
    assert result["action"] == "replaced" and result["config_applied"] is True


def test_an_invalid_replacement_keeps_the_old_device_everywhere():
    """Issue 11 item 4: libvirt refuses the new definition, so nothing was detached before."""
    dom = RecordingDomain(LIVE_ONE_DISK, CONFIG_ONE_DISK, refuse_define=True)
    with pytest.raises(LibvirtError) as err:
        manage_device(RecordingClient(dom), "vm", SERIAL_DISK, timeout=1)
    assert [verb for verb, _flags, _xml in dom.calls] == ["define"]
    assert "the old device is kept" in err.value.msg
    assert err.value.details["config_applied"] is False and err.value.details["live_applied"] is False
    assert dom.config_xml == CONFIG_ONE_DISK


def test_a_live_replacement_libvirt_refuses_puts_the_old_device_back():
    dom = RecordingDomain(LIVE_ONE_DISK, CONFIG_ONE_DISK, refuse_attach=True)
    with pytest.raises(LibvirtError) as err:
        manage_device(RecordingClient(dom), "vm", SERIAL_DISK, config=False, timeout=1)
    calls = [(verb, flags) for verb, flags, _xml in dom.calls]
    assert calls == [("detach", dd.AFFECT_LIVE), ("attach", dd.AFFECT_LIVE), ("attach", dd.AFFECT_LIVE)]
    assert "x1" not in dom.calls[2][2] and "/img/a" in dom.calls[2][2]
    assert "the old device was attached again" in err.value.msg and "persistent definition was not changed" in err.value.msg
    assert err.value.details["live_applied"] is False


def test_check_mode_predicts_an_invalid_replacement(test_conn):
    """The replaced definition is validated against libvirt's schema, as the real run's define will be."""
    before = test_conn.lookup_domain("test").XMLDesc(2)
    with pytest.raises(ValidationError, match="failed to validate against schema"):
        manage_device(test_conn, "test", "<interface type='network'><mac address='aa:bb:cc:dd:ee:ff'/><model type='e1000'/></interface>", check_mode=True)
    assert test_conn.lookup_domain("test").XMLDesc(2) == before


VNC = "<graphics type='vnc' port='-1' autoport='yes' passwd='%s'/>"


def test_a_graphics_password_is_compared_but_never_returned():
    config = "<domain type='test'><name>vm</name><memory>1024</memory><os><type>hvm</type></os><devices>%s</devices></domain>" % (VNC % "s3cret-one")
    dom = RecordingDomain(EMPTY, config)
    same = manage_device(RecordingClient(dom), "vm", VNC % "s3cret-one", live="no")
    assert same["changed"] is False and "s3cret" not in str(same) and "********" in same["device"]
    dom = RecordingDomain(EMPTY, config)
    other = manage_device(RecordingClient(dom), "vm", VNC % "s3cret-two", live="no", check_mode=True)
    assert other["changed"] is True and other["action"] == "replaced"
    assert "s3cret" not in str(other) and "********" in other["diff"]["before"]


def test_detach_timeout_reports_what_happened(monkeypatch):
    monkeypatch.setattr(dd, "POLL_INTERVAL", 0.01)
    dom = RecordingDomain(LIVE_ONE_DISK, CONFIG_ONE_DISK, release=False)
    with pytest.raises(LibvirtError) as err:
        manage_device(RecordingClient(dom), "vm", "<disk device='disk'><target dev='vda'/></disk>", state="absent", timeout=0.05)
    assert "did not release <disk device=disk target=vda> within 0.05 seconds" in err.value.msg
    assert "the persistent definition no longer has it" in err.value.msg
    assert err.value.details["config_applied"] is True and err.value.details["live_applied"] is False


def test_device_returned_is_read_back():
    dom = RecordingDomain(EMPTY, EMPTY)
    result = manage_device(RecordingClient(dom), "vm", "<watchdog model='i6300esb'/>", state="present")
    assert result["device"] == ""  # the recording domain does not really attach: nothing to read back
    assert to_string(parse_xml(dom.calls[0][2]), pretty=False) == '<watchdog model="i6300esb"/>'
