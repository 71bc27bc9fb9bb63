# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Hotplug and persistent management of one guest device (the logic of ``domain_device``).

The flow is: parse the user's device element (the *intent*), read the guest's live and/or
persistent XML, find the device with the XML engine's identity rules (or the user's ``match``
XPath), and plan one action per target (``live``, ``config``):

- ``attached``: no such device there yet;
- ``updated``: it exists and every difference is one libvirt changes in place
  (``virDomainUpdateDeviceFlags``): CD-ROM/floppy media change or eject, interface link state
  and bandwidth;
- ``replaced``: it exists with other differences. In the persistent definition the whole new
  definition (the old device swapped for the new one) is defined with ``VIR_DOMAIN_DEFINE_VALIDATE``,
  so libvirt validates the new element before the old one is dropped, and an invalid element leaves
  the old device in place. On the running guest (after the persistent definition, so an invalid
  element fails before the guest is touched): detach, wait for the guest to release it, attach the
  new one, and re-attach the old one if libvirt refuses the new;
- ``detached``: ``state=absent`` and it exists;
- ``none``: already as asked.

Check mode and diff come from that plan; the real run only adds the libvirt calls. The entry
point is :func:`ensure_domain_device`. XML is read with ``VIR_DOMAIN_XML_SECURE`` so secret values
(a graphics password) compare, and every device returned is masked (:mod:`._domain_state`).
"""

from __future__ import annotations

import copy
import time

from ansible_collections.virtops.kvm.plugins.module_utils._domain_state import SchemaCheck, masked_text
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtError, ValidationError, VirtopsError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import (
    VIR_CONNECT_LIST_NODE_DEVICES_CAP_USB_DEV,
    VIR_DOMAIN_AFFECT_CONFIG,
    VIR_DOMAIN_AFFECT_LIVE,
    VIR_DOMAIN_DEFINE_VALIDATE,
    VIR_DOMAIN_XML_INACTIVE,
    VIR_DOMAIN_XML_SECURE,
    libvirt,
)
from ansible_collections.virtops.kvm.plugins.module_utils._xml import (
    etree,
    match_children,
    parse_xml,
    three_way_merge,
    to_string,
    values_equal,
    xml_equal,
)

AFFECT_LIVE = VIR_DOMAIN_AFFECT_LIVE
AFFECT_CONFIG = VIR_DOMAIN_AFFECT_CONFIG
# The persistent and the live XML, with secret values so they compare.
XML_CONFIG = VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE
XML_LIVE = VIR_DOMAIN_XML_SECURE

# Children of <devices> that libvirt can attach, update or detach.
DEVICE_TAGS = (
    "disk",
    "interface",
    "hostdev",
    "filesystem",
    "controller",
    "rng",
    "watchdog",
    "input",
    "sound",
    "video",
    "serial",
    "console",
    "channel",
    "parallel",
    "redirdev",
    "smartcard",
    "tpm",
    "memballoon",
    "vsock",
    "memory",
    "graphics",
    "shmem",
    "iommu",
    "panic",
    "lease",
    "hub",
    "audio",
    "crypto",
)

ACTIONS = ("none", "updated", "attached", "replaced", "detached")

# What virDomainUpdateDeviceFlags changes in place, per device kind: differing root attributes,
# differing children, and (per child) the only attributes that may differ in it.
_UPDATABLE = {
    "removable-disk": {"attrs": {"type"}, "children": {"source", "backingStore"}, "child_attrs": {"driver": {"type"}}},
    "interface": {"attrs": set(), "children": {"link", "bandwidth"}, "child_attrs": {}},
}

SHARED_MEMORY_XML = "<memoryBacking>\n  <source type='memfd'/>\n  <access mode='shared'/>\n</memoryBacking>"

POLL_INTERVAL = 0.5


# --------------------------------------------------------------------------------------------
# Parsing and validation of the intent
# --------------------------------------------------------------------------------------------


def parse_device(text):
    """Parse ``text`` into exactly one device element; anything else raises ValidationError."""
    if not text or not text.strip():
        raise ValidationError("xml is empty: give one device element such as <disk>, <interface> or <hostdev>")
    try:
        element = parse_xml(text, "the device xml")
    except ValidationError as exc:
        # Two top-level elements are a well-formedness error; say what the user did instead.
        count = _count_top_level(text)
        if count and count > 1:
            raise ValidationError(
                "xml holds %d top-level elements; domain_device manages exactly one device per task: "
                "split them into one task each (or loop over a list)" % count
            ) from exc
        raise
    if element.tag == "devices":
        children = [child for child in element if isinstance(child.tag, str)]
        if len(children) != 1:
            raise ValidationError(
                "xml holds %d devices (%s) inside <devices>; domain_device manages exactly one device per task: "
                "split them into one task each (or loop over a list)" % (len(children), ", ".join("<%s>" % c.tag for c in children))
            )
        element = children[0]
        element.getparent().remove(element)
    if not isinstance(element.tag, str) or element.tag not in DEVICE_TAGS:
        raise ValidationError(
            "xml root element is <%s>, which is not a device; give one child of <devices>: %s" % (element.tag, ", ".join("<%s>" % tag for tag in DEVICE_TAGS))
        )
    return element


def _count_top_level(text):
    try:
        wrapped = parse_xml("<virtops-wrap>%s</virtops-wrap>" % text, "the device xml")
    except (ValidationError, TypeError):
        return None
    return len([child for child in wrapped if isinstance(child.tag, str)])


def is_removable_disk(element):
    return element.tag == "disk" and element.get("device") in ("cdrom", "floppy")


def device_label(element):
    """Short human name of a device for messages: <disk target=vdb>, <interface mac=...>."""
    if element is None:
        return "<none>"
    if element.tag == "disk":
        return "<disk device=%s target=%s>" % (element.get("device", "disk"), _attr(element, "target", "dev"))
    if element.tag == "interface":
        return "<interface mac=%s>" % _attr(element, "mac", "address")
    if element.tag == "filesystem":
        return "<filesystem target dir=%s>" % _attr(element, "target", "dir")
    if element.tag == "controller":
        return "<controller type=%s index=%s>" % (element.get("type"), element.get("index"))
    return "<%s>" % element.tag


def _attr(element, child, name):
    found = element.find(child)
    return found.get(name) if found is not None else None


# --------------------------------------------------------------------------------------------
# Finding the device in a domain's XML
# --------------------------------------------------------------------------------------------


def devices_of(domain_xml):
    """The <devices> element of a parsed domain (an empty one when the domain has none)."""
    devices = domain_xml.find("devices")
    if devices is None:
        devices = etree.SubElement(domain_xml, "devices")
    return devices


def find_device(devices, intent, match=None):
    """The device in ``devices`` the intent designates, or None.

    Without ``match``, the XML engine pairs the intent with a device by identity
    (:func:`match_children`: disk by target dev, interface by MAC or else source and model,
    hostdev by source...). ``match`` is an XPath relative to ``<devices>`` that selects the device
    instead; it must select at most one element.
    """
    if match:
        try:
            found = devices.xpath(match)
        except etree.XPathError as exc:
            raise ValidationError("match %r is not a valid XPath expression: %s" % (match, exc)) from exc
        if not isinstance(found, list) or not all(etree.iselement(item) for item in found):
            raise ValidationError("match %r must select elements below <devices>, it returned %r" % (match, found))
        found = [item for item in found if item.getparent() is devices]
        if len(found) > 1:
            raise ValidationError("match %r selects %d devices (%s); make it select one" % (match, len(found), ", ".join(device_label(item) for item in found)))
        return found[0] if found else None
    return match_children([intent], [child for child in devices if isinstance(child.tag, str)])[0][1]


def target_clash(devices, intent, current):
    """A disk whose target dev is taken by a *different* disk (another source) is a clash, not a replacement.

    Removable media (cdrom, floppy) change their source by design, so they never clash.
    """
    if intent.tag != "disk" or current is None or is_removable_disk(intent) or is_removable_disk(current):
        return None
    want, have = _disk_source(intent), _disk_source(current)
    if want is not None and have is not None and want != have:
        return have
    return None


def _disk_source(disk):
    source = disk.find("source")
    if source is None:
        return None
    for key in ("file", "dev", "dir", "name", "volume", "pool"):
        if source.get(key):
            return "%s=%s" % (key, source.get(key)) if key in ("volume", "pool") else source.get(key)
    return None


# --------------------------------------------------------------------------------------------
# Comparing intent and current device
# --------------------------------------------------------------------------------------------


def differences(intent, current):
    """What the intent asks that ``current`` lacks: (root attribute names, child tags).

    "Satisfied" is the XML engine's comparison: merging the intent into the device changes
    nothing. What libvirt added and the user never wrote (alias, address, a tap's target dev, a
    source index) is kept, so it is no difference. Removable media are special: an intent without
    <source> means "empty drive", so a current source is a difference.
    """
    attrs = {name for name, value in intent.attrib.items() if not values_equal(value, current.get(name))}
    children = set()
    intent_children = [child for child in intent if isinstance(child.tag, str)]
    for child, found in match_children(intent_children, [item for item in current if isinstance(item.tag, str)]):
        if found is None or not xml_equal(three_way_merge(child, found), found):
            children.add(child.tag)
    if is_removable_disk(intent) and intent.find("source") is None and _disk_source(current) is not None:
        children.add("source")  # an empty drive shows as <source index='2'/> in the live XML: no media
    return attrs, children


def can_update(intent, current, attrs, children):
    """True when every difference is one libvirt changes in place (updateDeviceFlags)."""
    if is_removable_disk(intent) and is_removable_disk(current):
        rules = _UPDATABLE["removable-disk"]
    elif intent.tag == "interface" and current.tag == "interface":
        rules = _UPDATABLE["interface"]
    else:
        return False
    if not attrs <= rules["attrs"]:
        return False
    for tag in children:
        if tag in rules["children"]:
            continue
        allowed = rules["child_attrs"].get(tag)
        if allowed is None:
            return False
        want, have = intent.find(tag), current.find(tag)
        if have is None or len(want):
            return False
        if any(name not in allowed for name, value in want.attrib.items() if not values_equal(value, have.get(name))):
            return False
    return True


def merged(intent, current):
    """The device after an in-place update: the intent merged into ``current`` by the XML engine.

    New media replace the old source whole (a source ``index`` or ``<backingStore>`` of the old
    image must not stick to the new one); no <source> in a removable-disk intent ejects.
    """
    result = three_way_merge(intent, current)
    if is_removable_disk(intent):
        for tag in ("source", "backingStore"):
            for old in result.findall(tag):
                result.remove(old)
        source = intent.find("source")
        if source is not None:
            target = result.find("target")
            new = copy.deepcopy(source)
            new.tail = None
            if target is not None:
                target.addprevious(new)
            else:
                result.append(new)
    return result


def for_libvirt(element):
    """A copy fit to send to libvirt: libvirt-generated aliases (not ``ua-`` ones) removed."""
    result = copy.deepcopy(element)
    for alias in result.iter("alias"):
        if not (alias.get("name") or "").startswith("ua-"):
            alias.getparent().remove(alias)
    return result


def without_address(element):
    result = for_libvirt(element)
    for address in result.findall("address"):
        result.remove(address)
    return result


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def plan_target(intent, devices, state, match=None):
    """Plan one target (the live or the persistent definition).

    Returns a dict: action, current (element or None), after (element or None), reason.
    """
    current = find_device(devices, intent, match)
    if state == "absent":
        if current is None:
            return dict(action="none", current=None, after=None, reason="no such device")
        return dict(action="detached", current=current, after=None, reason="device present")
    if current is None:
        return dict(action="attached", current=None, after=intent, reason="no such device")
    if not match:
        clash = target_clash(devices, intent, current)
        if clash is not None:
            raise ValidationError(
                "target dev %s is already used by another disk (%s), the xml asks for %s; pick a free target dev "
                "(in use: %s), or give match to replace that disk on purpose"
                % (_attr(intent, "target", "dev"), clash, _disk_source(intent), ", ".join(_targets_in_use(devices)))
            )
    attrs, children = differences(intent, current)
    if not attrs and not children:
        return dict(action="none", current=current, after=current, reason="already as asked")
    reason = "differs in %s" % ", ".join(sorted(["@" + name for name in attrs] + ["<%s>" % tag for tag in children]))
    if can_update(intent, current, attrs, children):
        return dict(action="updated", current=current, after=merged(intent, current), reason=reason)
    return dict(action="replaced", current=current, after=intent, reason=reason)


def _targets_in_use(devices):
    return sorted(disk.find("target").get("dev") for disk in devices.findall("disk") if disk.find("target") is not None and disk.find("target").get("dev"))


def resolve_scope(active, persistent, live, config):
    """Which targets a run touches: (apply_live, apply_config). ``live`` is auto/yes/no, ``config`` True/False/None."""
    if live == "yes" and not active:
        raise ValidationError("live=yes asks to change the running guest, but it is not running; start it first or use live=auto")
    apply_live = active if live == "auto" else live == "yes"
    if config is True and not persistent:
        raise ValidationError("config=true asks to change the persistent definition, but the guest is transient; use config=false")
    apply_config = persistent if config is None else bool(config)
    if not apply_live and not apply_config:
        raise ValidationError(
            "nothing to apply to: live=%s with the guest %s, and config=%s; use live=auto or config=true"
            % (live, "running" if active else "not running", config)
        )
    return apply_live, apply_config


def has_shared_memory(domain_xml):
    """True when the guest's memory is shared (virtiofs needs it): memoryBacking access or every NUMA cell."""
    access = domain_xml.find("memoryBacking/access")
    if access is not None and access.get("mode") == "shared":
        return True
    cells = domain_xml.findall("cpu/numa/cell")
    return bool(cells) and all(cell.get("memAccess") == "shared" for cell in cells)


def is_virtiofs(intent):
    driver = intent.find("driver")
    return intent.tag == "filesystem" and driver is not None and driver.get("type") == "virtiofs"


def check_virtiofs(intent, domain_xml, name):
    if is_virtiofs(intent) and not has_shared_memory(domain_xml):
        raise ValidationError(
            "virtiofs needs the guest's memory to be shared with virtiofsd, and guest %s has no shared memory backing. "
            "Add this to its <domain> (virtops.kvm.domain) and restart the guest, then attach the filesystem:\n%s" % (name, SHARED_MEMORY_XML),
            xml_to_add=SHARED_MEMORY_XML,
        )


def overall_action(actions):
    """One word for the whole run: the strongest of the per-target actions."""
    present = [action for action in actions if action]
    return max(present, key=ACTIONS.index) if present else "none"


# --------------------------------------------------------------------------------------------
# Host devices: do they exist?
# --------------------------------------------------------------------------------------------


def hostdev_source(intent):
    """('pci', (domain, bus, slot, function)) / ('usb', {...}) for a host device intent, else None."""
    if intent.tag == "hostdev" and intent.get("mode", "subsystem") == "subsystem":
        kind = intent.get("type")
    elif intent.tag == "interface" and intent.get("type") == "hostdev":
        kind = "pci"
    else:
        return None
    source = intent.find("source")
    if source is None or kind not in ("pci", "usb"):
        return None
    address = source.find("address")
    if kind == "pci":
        if address is None:
            return None
        return "pci", tuple(_hex(address.get(key, "0")) for key in ("domain", "bus", "slot", "function"))
    vendor, product = source.find("vendor"), source.find("product")
    want = {}
    if vendor is not None and product is not None:
        want.update(vendor=_hex(vendor.get("id")), product=_hex(product.get("id")))
    if address is not None:
        want.update(bus=int(address.get("bus", "0"), 0), device=int(address.get("device", "0"), 0))
    return ("usb", want) if want else None


def _hex(value):
    return int(value, 16) if value else 0


def check_host_device(client, intent):
    """Fail (nothing changed) when a hostdev's source is not a device of this host."""
    source = hostdev_source(intent)
    if source is None:
        return
    kind, want = source
    if kind == "pci":
        name = "pci_%04x_%02x_%02x_%x" % want
        try:
            client.conn.nodeDeviceLookupByName(name)
        except libvirt.libvirtError as exc:
            raise LibvirtError(
                "host PCI device %04x:%02x:%02x.%x does not exist on this host: %s" % (*want, exc.get_error_message()),
                code=exc.get_error_code(),
            ) from exc
        return
    devices = client.call("cannot list the host's USB devices", client.conn.listAllDevices, VIR_CONNECT_LIST_NODE_DEVICES_CAP_USB_DEV)
    for device in devices:
        capability = parse_xml(device.XMLDesc(0), "node device").find("capability[@type='usb_device']")
        if capability is None:
            continue
        have = {
            "bus": int(capability.findtext("bus", "-1")),
            "device": int(capability.findtext("device", "-1")),
            "vendor": _hex(_attr(capability, "vendor", "id")),
            "product": _hex(_attr(capability, "product", "id")),
        }
        if all(have[key] == value for key, value in want.items()):
            return
    raise LibvirtError(
        "host USB device %s does not exist on this host (libvirt lists %d USB devices); check lsusb"
        % (", ".join("%s=%s" % (key, ("%04x" % value) if key in ("vendor", "product") else value) for key, value in sorted(want.items())), len(devices))
    )


# --------------------------------------------------------------------------------------------
# Doing it
# --------------------------------------------------------------------------------------------


class DeviceManager:
    """Plans and applies one device on one guest. ``client`` is a LibvirtClient."""

    def __init__(self, client, name, intent, *, state="present", live="auto", config=None, match=None, timeout=30):
        self.client = client
        self.name = name
        self.intent = intent
        self.state = state
        self.live = live
        self.config = config
        self.match = match
        self.timeout = timeout
        self.inactive = None
        self.dom = client.lookup_domain(name)
        if self.dom is None:
            raise ValidationError("guest %s does not exist on %s; define it first (virtops.kvm.domain)" % (name, client.uri))

    def read(self, flags):
        text = self.client.call("cannot read the XML of guest %s" % self.name, self.dom.XMLDesc, flags)
        return parse_xml(text, "the XML of guest %s" % self.name)

    def plan(self):
        active = bool(self.client.call("cannot get the state of %s" % self.name, self.dom.isActive))
        persistent = bool(self.client.call("cannot get the state of %s" % self.name, self.dom.isPersistent))
        apply_live, apply_config = resolve_scope(active, persistent, self.live, self.config)
        plans = {}
        if apply_config:
            self.inactive = self.read(XML_CONFIG)
            if self.state == "present":
                check_virtiofs(self.intent, self.inactive, self.name)
            plans["config"] = plan_target(self.intent, devices_of(self.inactive), self.state, self.match)
        if apply_live:
            running = self.read(XML_LIVE)
            if self.state == "present":
                check_virtiofs(self.intent, running, self.name)
            plans["live"] = plan_target(self.intent, devices_of(running), self.state, self.match)
        if self.state == "present" and any(plan["action"] in ("attached", "replaced") for plan in plans.values()):
            check_host_device(self.client, self.intent)
        return plans

    def replaced_definition(self, plan):
        """The persistent definition with the planned device swapped for the intent (its old address kept)."""
        old = plan["current"]
        devices = old.getparent()
        root = copy.deepcopy(self.inactive)
        target = devices_of(root)[devices.index(old)]
        new = for_libvirt(self.intent)
        new.tail = None
        if new.find("address") is None and old.find("address") is not None:
            new.append(copy.deepcopy(old.find("address")))
        target.addprevious(new)
        target.getparent().remove(target)
        return root

    def validate(self, plans, schema):
        """Check mode: a replacement in the persistent definition is validated as the real run's define will.

        Returns ``None`` when nothing needed it, else whether the schema was there to check.
        """
        config = plans.get("config")
        if config is None or config["action"] != "replaced":
            return None
        return schema.validate(self.replaced_definition(config), self.name)

    def apply(self, plans):
        """Carry out ``plans``; returns {'live': bool, 'config': bool} of what was changed."""
        done = {"live": False, "config": False}
        live, config = plans.get("live"), plans.get("config")
        live_action = live["action"] if live else "none"
        config_action = config["action"] if config else "none"
        try:
            if live_action == config_action == "attached":
                self._call("attach", self.dom.attachDeviceFlags, self.intent, AFFECT_LIVE | AFFECT_CONFIG)
                done.update(live=True, config=True)
            elif live_action == config_action == "detached":
                self._call("detach", self.dom.detachDeviceFlags, without_address(config["current"]), AFFECT_LIVE | AFFECT_CONFIG)
                done["config"] = True
                self.wait_removed(done)
                done["live"] = True
            else:
                # A replacement validates the new element in the persistent definition first, so an
                # invalid one fails before the running guest is touched; otherwise the running guest
                # goes first, and when it refuses the persistent definition is untouched.
                order = [("config", config, AFFECT_CONFIG), ("live", live, AFFECT_LIVE)]
                if config_action != "replaced":
                    order.reverse()
                for key, plan, flag in order:
                    if plan is not None and plan["action"] != "none":
                        self._apply_one(plan, flag, done)
                        done[key] = True
        except VirtopsError as exc:
            exc.details.setdefault("live_applied", done["live"])
            exc.details.setdefault("config_applied", done["config"])
            raise
        return done

    def _apply_one(self, plan, flag, done):
        action = plan["action"]
        if action == "attached":
            self._call("attach", self.dom.attachDeviceFlags, self.intent, flag)
        elif action == "updated":
            self._call("update", self.dom.updateDeviceFlags, plan["after"], flag)
        elif action == "detached":
            self._call("detach", self.dom.detachDeviceFlags, plan["current"], flag)
            if flag == AFFECT_LIVE:
                self.wait_removed(done)
        elif action == "replaced" and flag == AFFECT_CONFIG:
            self.client.call(
                "cannot replace %s in the persistent definition of %s (defining it with the new element, validated by libvirt; "
                "the old device is kept)" % (device_label(plan["current"]), self.name),
                self.client.conn.defineXMLFlags,
                to_string(self.replaced_definition(plan), pretty=False),
                VIR_DOMAIN_DEFINE_VALIDATE,
            )
        elif action == "replaced":
            self._replace_live(plan, done)

    def _replace_live(self, plan, done):
        """Detach the old device, wait for the guest to release it, attach the new one; undo when that fails."""
        self._call("detach", self.dom.detachDeviceFlags, plan["current"], AFFECT_LIVE)
        self.wait_removed(done)
        try:
            self._call("attach", self.dom.attachDeviceFlags, self.intent, AFFECT_LIVE)
        except VirtopsError as exc:
            try:
                self._call("re-attach the old", self.dom.attachDeviceFlags, plan["current"], AFFECT_LIVE)
                undo = "the old device was attached again"
            except VirtopsError as undo_exc:
                undo = "re-attaching the old device failed too (%s): the running guest has neither" % undo_exc.msg
            config_note = "the persistent definition has the new device" if done.get("config") else "the persistent definition was not changed"
            raise LibvirtError(
                "%s; %s, %s" % (exc.msg, undo, config_note),
                code=getattr(exc, "code", None),
                live_applied=False,
                config_applied=bool(done.get("config")),
            ) from exc

    def _call(self, verb, func, element, flags):
        where = " and ".join(name for bit, name in ((AFFECT_LIVE, "running guest"), (AFFECT_CONFIG, "persistent definition")) if flags & bit)
        action = "cannot %s %s on %s (%s)" % (verb, device_label(element), self.name, where)
        self.client.call(action, func, to_string(for_libvirt(element), pretty=False), flags)

    def wait_removed(self, done):
        """Poll the live XML until the device is gone (the guest released it), up to ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        while True:
            if not self.client.call("cannot get the state of %s" % self.name, self.dom.isActive):
                return
            if find_device(devices_of(self.read(XML_LIVE)), self.intent, self.match) is None:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        config_note = (
            "the persistent definition no longer has it, so it is gone after the next shutdown"
            if done.get("config")
            else "the persistent definition was not changed"
        )
        raise LibvirtError(
            "guest %s did not release %s within %s seconds after the detach request: the running guest still has it; %s. "
            "The guest OS must support hot-unplug (ACPI/PCIe hotplug, its driver loaded); run again with a larger timeout, "
            "or shut the guest down" % (self.name, device_label(self.intent), self.timeout, config_note),
            live_applied=False,
            config_applied=bool(done.get("config")),
        )

    def applied_device(self, plans):
        """The device as libvirt now holds it (persistent definition when managed, else live)."""
        key, flags = ("config", XML_CONFIG) if "config" in plans else ("live", XML_LIVE)
        return find_device(devices_of(self.read(flags)), self.intent, self.match if plans[key]["action"] != "replaced" else None)


def check_params(params):
    """What is refused from the parameters alone; returns the parsed intent."""
    name = params["domain"]
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise ValidationError("domain %r is not a guest name libvirt accepts (empty, or with '/')" % (name,))
    if params.get("timeout") is not None and params["timeout"] < 0:
        raise ValidationError("timeout must not be negative, got %s" % params["timeout"])
    intent = parse_device(params["xml"])
    if params.get("match") is None and intent.tag == "disk" and not _attr(intent, "target", "dev"):
        # Without it the engine's identity is a wildcard that would pick the guest's first disk.
        raise ValidationError("a <disk> needs <target dev='...'/> (it is how the disk is found), or give match")
    return intent


def ensure_domain_device(backends, params, check_mode):
    """Plan, validate, and unless ``check_mode`` apply, one device; returns the module result."""
    intent = check_params(params)
    name, state = params["domain"], params.get("state") or "present"
    manager = DeviceManager(
        backends.libvirt, name, intent, state=state, live=params.get("live") or "auto", config=params.get("config"),
        match=params.get("match"), timeout=params.get("timeout") if params.get("timeout") is not None else 30,
    )  # fmt: skip
    plans = manager.plan()
    warnings = []
    if check_mode:
        schema = SchemaCheck(backends.uri)
        if manager.validate(plans, schema) is False and schema.warning:
            warnings.append(schema.warning)
    actions = {key: plan["action"] for key, plan in plans.items()}
    changed = any(action != "none" for action in actions.values())
    shown = plans.get("config") or plans.get("live")
    header = "%s %s (%s)" % (name, device_label(intent), "persistent" if "config" in plans else "live")
    result = dict(
        changed=changed,
        action=overall_action(actions.values()),
        actions={key: actions.get(key) for key in ("live", "config")},
        live_applied=actions.get("live", "none") != "none",
        config_applied=actions.get("config", "none") != "none",
        device=masked_text(shown["after"]),
        diff=dict(before=masked_text(shown["current"]), after=masked_text(shown["after"]), before_header=header, after_header=header),
        warnings=warnings,
    )
    if changed and not check_mode:
        done = manager.apply(plans)
        result["live_applied"], result["config_applied"] = done["live"], done["config"]
        if state == "present":
            result["device"] = masked_text(manager.applied_device(plans))
    return result
