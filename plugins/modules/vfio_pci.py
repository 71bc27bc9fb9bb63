#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vfio_pci
short_description: Bind PCI devices to vfio-pci for passthrough, or give them back to the host
version_added: 0.1.0
description:
  - With O(state=bound), loads C(vfio-pci), sets the device's C(driver_override), unbinds it from its
    current driver and probes it, so C(vfio-pci) holds it and a guest can be given it. The original
    driver is recorded in C(/var/lib/virtops-kvm/vfio-pci-drivers.json).
  - With O(state=unbound), clears C(driver_override), releases the device from C(vfio-pci) and returns
    it to the recorded original driver (or the kernel's default driver when none was recorded).
  - Refuses to bind when the IOMMU is off, naming the kernel parameters to add.
  - A guest can only use a device when every endpoint of its IOMMU group is on C(vfio-pci); see O(group_policy).
  - Refuses to take a device the host is using (a NIC that is up with an address or carries the
    default route, a controller with mounted disks, the boot GPU) unless O(force=true).
options:
  devices:
    description: PCI addresses (C(0000:03:10.0), or C(03:10.0) for domain 0).
    type: list
    elements: str
  ids:
    description:
      - C(vendor:device) IDs (as in C(lspci -nn)); every device present with one of them is handled as if listed
        in O(devices), and with O(persistent=true) the IDs go to the C(vfio-pci ids=) module option.
      - At least one of O(devices) and O(ids) is required.
    type: list
    elements: str
  state:
    description: V(bound) to vfio-pci, or V(unbound) back to the original driver.
    type: str
    choices: [bound, unbound]
    default: bound
  group_policy:
    description:
      - What to do when another endpoint of a device's IOMMU group is not on vfio-pci.
        V(fail) lists the group and changes nothing; V(bind_all) binds those endpoints too (host-in-use checks apply to them).
    type: str
    choices: [fail, bind_all]
    default: fail
  force:
    description: Unbind devices even when the host uses them (may cut the host's network or storage).
    type: bool
    default: false
  persistent:
    description:
      - >-
        Make the binding survive reboots. Writes C(/etc/modprobe.d/virtops-vfio-pci.conf) (C(options vfio-pci ids=...) with
        the IDs of O(ids) and of O(devices), and C(softdep <driver> pre: vfio-pci) for their original drivers) and
        C(/etc/modules-load.d/virtops-vfio-pci.conf), then rebuilds the initramfs. With O(state=unbound) the IDs are removed
        again (and the files when no ID is left).
      - C(ids=) binds B(every) device with that ID at boot, not only the listed addresses.
    type: bool
    default: false
  update_initramfs:
    description: With O(persistent=true), run C(update-initramfs -u) (or C(dracut -f)) when the files changed.
    type: bool
    default: true
extends_documentation_fragment:
  - virtops.kvm._hostfs
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second run reports no change.
    support: full
  platform:
    platforms: posix
notes:
  - When O(root) is not V(/), nothing runs on this machine - no C(modprobe vfio-pci) (C(vfio-pci) must already be loaded in
    that tree) and no initramfs rebuild; the module warns with the command to run inside that system instead.
  - The recorded drivers and the persistent files are changed under a file lock, so concurrent runs both land their change.
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Give a VF to vfio-pci for a guest
  virtops.kvm.vfio_pci:
    devices: ["0000:03:10.0"]

- name: A GPU and its audio function, on vfio-pci at every boot
  virtops.kvm.vfio_pci:
    devices: ["0000:01:00.0"]
    group_policy: bind_all
    persistent: true
  register: gpu

- name: Reboot when the initramfs changed
  ansible.builtin.reboot:
  when: gpu.reboot_required

- name: Return the VF to igbvf
  virtops.kvm.vfio_pci:
    devices: ["0000:03:10.0"]
    state: unbound
"""

RETURN = r"""
devices:
  description: Every device handled (listed, matched by O(ids), or added by O(group_policy=bind_all)).
  returned: always
  type: list
  elements: dict
  contains:
    address: {description: PCI address., type: str, returned: always, sample: "0000:03:10.0"}
    ids: {description: vendor:device., type: str, returned: always, sample: "8086:10ca"}
    iommu_group: {description: IOMMU group number (null without IOMMU)., type: int, returned: always, sample: 3}
    driver_before: {description: Driver before the task., type: str, returned: always, sample: igbvf}
    driver_after: {description: Driver after the task (predicted in check mode)., type: str, returned: always, sample: vfio-pci}
    group_members: {description: Endpoints of the IOMMU group., type: list, elements: str, returned: always, sample: ["0000:03:10.0"]}
files_changed:
  description: Persistent configuration files written or removed.
  returned: always
  type: list
  elements: str
  sample: [/etc/modprobe.d/virtops-vfio-pci.conf]
reboot_required:
  description: The persistent configuration changed; it takes full effect at the next boot.
  returned: always
  type: bool
initramfs_updated:
  description: The tool that rebuilt the initramfs (V(update-initramfs), V(dracut)), or null.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HOSTFS_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module
from ansible_collections.virtops.kvm.plugins.module_utils._vfio_pci import ensure_vfio_pci


def main():
    argument_spec = dict(
        devices=dict(type="list", elements="str"),
        ids=dict(type="list", elements="str"),
        state=dict(type="str", choices=["bound", "unbound"], default="bound"),
        group_policy=dict(type="str", choices=["fail", "bind_all"], default="fail"),
        force=dict(type="bool", default=False),
        persistent=dict(type="bool", default=False),
        update_initramfs=dict(type="bool", default=True),
    )
    argument_spec.update(HOSTFS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, required_one_of=[("devices", "ids")], supports_check_mode=True)
    run_module(module, ensure_vfio_pci)


if __name__ == "__main__":
    main()
