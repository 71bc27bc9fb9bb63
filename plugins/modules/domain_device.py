#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: domain_device
short_description: Hotplug and persistent management of one libvirt guest device
version_added: 0.1.0
description:
  - Attaches, updates, replaces or detaches one device (a child of C(<devices>)) of a libvirt guest, on the
    running guest, in its persistent definition, or both.
  - The device is found with the same identity rules as the O(xml) merge of M(virtops.kvm.domain). A disk by
    its target dev, an interface by its MAC address, a host device by its source (PCI address, USB
    vendor/product or bus/device), a filesystem by its target dir, a controller by type and index. O(match)
    overrides them.
  - A device that exists with other settings is changed in place when libvirt can do that
    (C(virDomainUpdateDeviceFlags)), that is CD-ROM and floppy media change or eject, interface link state and
    bandwidth. Any other difference replaces the device. RV(action) says which.
  - A replacement in the persistent definition defines the guest's whole definition with the new element in
    place of the old one, validated by libvirt (C(VIR_DOMAIN_DEFINE_VALIDATE)), so an invalid element fails and
    the old device stays. It runs before the running guest is touched. On the running guest the old device is
    detached, released by the guest, and the new one attached; when libvirt refuses the new one, the old one is
    attached again and the module fails saying so.
  - Secret values (a graphics C(passwd)) are compared, but never returned; RV(device) and the diff show
    C(********), and the value is masked in the task's C(invocation).
  - A C(<disk device='cdrom'>) (or floppy) without C(<source>) means an empty drive, so giving it for a drive
    that holds media ejects it.
  - A C(<disk device='disk'>) whose target dev is already used by a disk with another source is refused
    (two disks cannot share a target); give O(match) to replace that disk on purpose.
  - Before a virtiofs C(<filesystem>) is attached, the guest must have shared memory
    (C(<memoryBacking><access mode='shared'/></memoryBacking>) or C(memAccess='shared') on every NUMA cell);
    otherwise the module fails with the XML to add.
  - Before a host device (C(<hostdev>) or C(<interface type='hostdev'>)) is attached, it must exist on the host
    (libvirt's node devices), so a typo fails without changing anything.
  - Detaching from the running guest waits until the guest has released the device (the live XML no longer has
    it), up to O(timeout) seconds.
options:
  domain:
    description: Name of the guest.
    type: str
    required: true
  xml:
    description:
      - One device element, as in the guest's C(<devices>), for example C(<disk>), C(<interface>),
        C(<hostdev>), C(<filesystem>), C(<controller>), C(<rng>) or C(<watchdog>).
      - With O(state=present), what it says is enforced; what libvirt adds (PCI address, alias, a generated
        MAC address) is left alone. With O(state=absent), only what identifies the device matters.
    type: str
    required: true
  state:
    description:
      - V(present) makes sure the device exists with the given settings; V(absent) detaches it.
      - Detaching a device the guest does not have is not a change.
    type: str
    choices: [present, absent]
    default: present
  live:
    description:
      - Whether to change the running guest.
      - V(auto) changes it when the guest is running; V(yes) requires it to run (fails otherwise);
        V(no) never touches the running guest.
    type: str
    choices: [auto, "yes", "no"]
    default: auto
  config:
    description:
      - Whether to change the persistent definition (what the guest gets at its next start).
      - When not set, the persistent definition is changed when the guest has one (it is not transient).
    type: bool
  match:
    description:
      - An XPath expression relative to the guest's C(<devices>) that selects the device to manage, instead of
        the identity rules. It must select at most one device, for example
        V(disk[@device='cdrom']) or V(interface[source/@network='lan']).
    type: str
  timeout:
    description: Seconds to wait for the running guest to release a detached device.
    type: int
    default: 30
extends_documentation_fragment:
  - virtops.kvm._libvirt
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
    details:
      - A replacement in the persistent definition is validated against libvirt's installed schema (lxml
        RelaxNG), as the real run's define will; where no schema is installed it warns that it could not.
  diff_mode:
    support: full
    details:
      - The diff shows the device element before and after, from the persistent definition when it is managed,
        else from the running guest.
  idempotent:
    description: Running it again with the same options changes nothing.
    support: full
  platform:
    platforms: posix
requirements:
  - lxml
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Hot-attach a data disk to the running guest and keep it in its definition
  virtops.kvm.domain_device:
    domain: web1
    xml: |
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/var/lib/libvirt/images/web1-data.qcow2'/>
        <target dev='vdb' bus='virtio'/>
      </disk>

- name: Insert an ISO into the CD-ROM drive (media change in place)
  virtops.kvm.domain_device:
    domain: web1
    xml: |
      <disk type='file' device='cdrom'>
        <driver name='qemu' type='raw'/>
        <source file='/var/lib/libvirt/images/tools.iso'/>
        <target dev='sda' bus='scsi'/>
        <readonly/>
      </disk>

- name: Eject it (a cdrom without source is an empty drive)
  virtops.kvm.domain_device:
    domain: web1
    xml: |
      <disk type='file' device='cdrom'>
        <target dev='sda' bus='scsi'/>
      </disk>

- name: Take a NIC's link down without detaching it
  virtops.kvm.domain_device:
    domain: web1
    xml: |
      <interface type='network'>
        <mac address='52:54:00:12:34:56'/>
        <source network='lan'/>
        <model type='virtio'/>
        <link state='down'/>
      </interface>

- name: Pass a USB key through by vendor and product
  virtops.kvm.domain_device:
    domain: web1
    xml: |
      <hostdev mode='subsystem' type='usb'>
        <source>
          <vendor id='0x0781'/>
          <product id='0x5567'/>
        </source>
      </hostdev>

- name: Detach an SR-IOV VF, waiting up to a minute for the guest to release it
  virtops.kvm.domain_device:
    domain: web1
    state: absent
    timeout: 60
    xml: |
      <hostdev mode='subsystem' type='pci' managed='yes'>
        <source><address domain='0x0000' bus='0x03' slot='0x10' function='0x2'/></source>
      </hostdev>

- name: Only the persistent definition (takes effect at the next start)
  virtops.kvm.domain_device:
    domain: web1
    live: "no"
    xml: |
      <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
"""

RETURN = r"""
action:
  description:
    - What was done (or, in check mode, would be done), the strongest over the running guest and the
      persistent definition.
    - V(attached), V(updated) (changed in place), V(replaced) (detached and attached again), V(detached), V(none).
  returned: always
  type: str
  sample: attached
actions:
  description: The action per target; V(null) for a target this run does not manage.
  returned: always
  type: dict
  sample: {live: attached, config: attached}
live_applied:
  description: Whether the running guest was (in check mode, would be) changed.
  returned: always
  type: bool
config_applied:
  description: Whether the persistent definition was (in check mode, would be) changed.
  returned: always
  type: bool
device:
  description:
    - The device XML as applied, read back from libvirt (from the persistent definition when it is managed,
      else from the running guest). In check mode, the predicted device.
    - Empty after a detach.
  returned: always
  type: str
  sample: "<disk type='file' device='disk'>...</disk>"
diff:
  description: The device element before and after.
  returned: when diff mode is on
  type: dict
  contains:
    before:
      description: The device XML before, empty when it did not exist.
      type: str
    after:
      description: The device XML after, empty when it was detached.
      type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._domain_device import ensure_domain_device
from ansible_collections.virtops.kvm.plugins.module_utils._domain_state import secret_values_of_text
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module
from ansible_collections.virtops.kvm.plugins.module_utils._xml import require_lxml


def main():
    argument_spec = dict(
        domain=dict(type="str", required=True),
        xml=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        live=dict(type="str", default="auto", choices=["auto", "yes", "no"]),
        config=dict(type="bool"),
        match=dict(type="str"),
        timeout=dict(type="int", default=30),
    )
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_lxml(module)
    # a password in the device XML is masked wherever Ansible shows the task (result, invocation)
    module.no_log_values.update(secret_values_of_text(module.params["xml"]))
    run_module(module, ensure_domain_device)


if __name__ == "__main__":
    main()
