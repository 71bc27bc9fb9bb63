#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: sriov
short_description: SR-IOV virtual functions of a physical NIC, their settings and driver
version_added: 0.1.0
description:
  - Sets the number of VFs of an SR-IOV physical function (PF) through C(sriov_numvfs) and waits until
    they appear with their driver.
  - The kernel only changes a non-zero VF count by going through 0, which destroys the existing VFs. The
    module refuses to do that while a VF is attached to a running libvirt guest or is up with an address on
    the host, and says which guest or interface holds it, unless O(force=true).
  - Applies per-VF settings (MAC, VLAN, trust, ...) through netlink on the PF, comparing with what the
    kernel reports so a re-run changes nothing.
  - Optionally binds the VFs to C(vfio-pci) (the same code as M(virtops.kvm.vfio_pci)) and writes a udev
    rule that recreates the VFs and their settings at boot.
options:
  device:
    description: The PF, by PCI address (C(0000:03:00.0)) or network interface name (C(enp3s0f0)).
    type: str
    required: true
  num_vfs:
    description: Number of VFs wanted (0 removes them). Omit to keep the current count.
    type: int
  vfs:
    description: Per-VF settings, by VF index. Settings not given are left as they are.
    type: list
    elements: dict
    default: []
    suboptions:
      index:
        description: VF index (0 to O(num_vfs) - 1).
        type: int
        required: true
      mac:
        description: Unicast MAC address of the VF (six colon-separated hex octets, such as V(02:00:00:00:01:00)).
        type: str
      vlan:
        description: VLAN ID, 0 to 4095 (0 removes the VLAN).
        type: int
      qos:
        description: 802.1p priority (0 to 7) for the VLAN; needs O(vfs[].vlan).
        type: int
      spoofchk:
        description: MAC spoof checking.
        type: bool
      trust:
        description: Trusted VF (may change its MAC, enable promiscuous mode).
        type: bool
      link_state:
        description: Link state the VF sees.
        type: str
        choices: [auto, enable, disable]
      max_tx_rate:
        description: Maximum transmit rate in Mbit/s (0 means unlimited).
        type: int
  vf_driver:
    description:
      - V(vfio-pci) binds every VF to vfio-pci for passthrough; V(default) returns VFs on vfio-pci to the
        kernel's default VF driver. Omit to leave the drivers alone.
    type: str
    choices: [default, vfio-pci]
  pf_up:
    description:
      - V(true) brings the PF's network interface up (administratively, with no address) when it is down. libvirt
        gives a VF to a guest as an C(<interface type='hostdev'>) only when its PF is up ("the PF is not online"),
        and a VF's link follows its PF's. With O(persistent=true) the boot-time rule brings it up too.
      - V(false) leaves the PF's link as it is.
    type: bool
    default: false
  persistent:
    description:
      - V(true) writes C(/etc/udev/rules.d/81-virtops-sriov-<PF address>.rules), which sets the VF count when
        the PF's interface appears at boot and reapplies the per-VF settings with C(ip link) (and, with
        O(vf_driver=vfio-pci), binds the VFs to vfio-pci). It comes after C(80-net-setup-link.rules), so the
        per-VF settings name the interface by its final name; the C(70-virtops-sriov-<PF address>.rules) of
        earlier releases is removed.
      - V(false) removes that rule if the module wrote one before.
    type: bool
    default: false
  force:
    description: Recreate the VFs even when a guest or the host is using them.
    type: bool
    default: false
  timeout:
    description: Seconds to wait for new VFs to appear with their driver.
    type: int
    default: 60
extends_documentation_fragment:
  - virtops.kvm._hostfs
  - virtops.kvm._libvirt
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
  - O(uri) is the libvirt connection used to find running guests that hold VFs. When libvirt is not
    reachable the module warns and only checks the host's own use.
  - Per-VF settings need pyroute2 on the managed host. Drivers support different subsets of them
    (for example igb has no O(vfs[].link_state)); the kernel's error is reported.
  - When O(root) is not V(/), the run is confined to that tree - netlink is not read (O(vfs) is refused, since its
    settings live in the running kernel), running guests are not looked up, and C(udevadm settle) is not run.
requirements:
  - pyroute2 (for O(vfs) and the in-use checks)
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Four VFs on enp3s0f0, the first two with fixed MACs and VLAN 100
  virtops.kvm.sriov:
    device: enp3s0f0
    num_vfs: 4
    vfs:
      - {index: 0, mac: "02:00:00:00:01:00", vlan: 100, trust: true}
      - {index: 1, mac: "02:00:00:00:01:01", vlan: 100, spoofchk: true}
    persistent: true

- name: VFs for passthrough
  virtops.kvm.sriov:
    device: "0000:03:00.0"
    num_vfs: 2
    vf_driver: vfio-pci
"""

RETURN = r"""
pf:
  description: The physical function; C(up) is whether its network interface is up (V(null) without one).
  returned: always
  type: dict
  sample: {address: "0000:03:00.0", netdev: enp3s0f0, driver: igb, totalvfs: 7, numvfs: 4, up: true}
vfs:
  description: Each VF as the kernel reports it (predicted addresses in check mode when the count changes).
  returned: always
  type: list
  elements: dict
  sample: [{index: 0, address: "0000:03:10.0", netdev: enp3s0f0v0, driver: igbvf, mac: "02:00:00:00:01:00",
            vlan: 100, qos: 0, trust: true, spoofchk: true, link_state: auto, max_tx_rate: 0}]
changes:
  description: What changed (C(num_vfs), C(vfs[N]), C(vf_driver ADDRESS), the rule path).
  returned: always
  type: list
  elements: str
rule:
  description: Path of the udev rule when O(persistent=true).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HOSTFS_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module
from ansible_collections.virtops.kvm.plugins.module_utils._sriov import ensure_sriov


def main():
    argument_spec = dict(
        device=dict(type="str", required=True),
        num_vfs=dict(type="int"),
        vfs=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                index=dict(type="int", required=True),
                mac=dict(type="str"),
                vlan=dict(type="int"),
                qos=dict(type="int"),
                spoofchk=dict(type="bool"),
                trust=dict(type="bool"),
                link_state=dict(type="str", choices=["auto", "enable", "disable"]),
                max_tx_rate=dict(type="int"),
            ),
        ),
        vf_driver=dict(type="str", choices=["default", "vfio-pci"]),
        pf_up=dict(type="bool", default=False),
        persistent=dict(type="bool", default=False),
        force=dict(type="bool", default=False),
        timeout=dict(type="int", default=60),
    )
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    argument_spec.update(HOSTFS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, ensure_sriov, read_only=True)


if __name__ == "__main__":
    main()
