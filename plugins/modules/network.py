#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: network
short_description: libvirt virtual networks
version_added: 0.1.0
description:
  - Defines a libvirt network from its XML, starts or stops it, sets autostart, and removes it.
  - O(xml) is merged into libvirt's definition three ways (the intent applied last time is kept in the
    network's C(<metadata>)). What O(xml) says is enforced, what it no longer says since the last run is
    removed, and what libvirt generated (uuid, MAC address, defaults) is kept.
  - Changes libvirt can make to a running network (DHCP host entries and ranges, DNS host, TXT and SRV
    records, port groups) are applied live with C(virNetworkUpdate), without restarting the network or
    disturbing its guests. Any other change is stored and applies at the next start
    (RV(pending_restart=true)), or at once with O(apply=restart).
  - Live updates are applied one at a time. When one fails, those already applied are undone, so the running
    network equals its definition again (which is then not changed), and the message says so.
  - Networks forwarding to a host bridge (C(<forward mode='bridge'/><bridge name='br0'/>)) work like any other.
options:
  name:
    description: Name of the network.
    type: str
    required: true
  xml:
    description:
      - The network's XML (C(<network>...</network>)). Needed to create a network; optional for an existing one.
      - Its C(<name>) must be O(name); it is added when missing. O(name) may not contain C(/).
      - Addresses are checked before anything changes (also in check mode) - C(<ip>) address, netmask and prefix,
        DHCP ranges (inside the network, start before end), DHCP and DNS host addresses, routes.
    type: str
  state:
    description:
      - V(present) defined (started or not), V(active) defined and started, V(inactive) defined and stopped,
        V(absent) stopped and undefined.
    type: str
    choices: [present, active, inactive, absent]
    default: present
  autostart:
    description: Whether libvirtd starts the network at boot. Unchanged when not set.
    type: bool
  apply:
    description:
      - What to do when a running network differs from its definition in a way libvirt cannot change live.
      - V(next_boot) stores the definition and returns RV(pending_restart=true); it applies when the network is
        next started. V(restart) stops and starts the network now, which cuts attached guests off until their
        NICs are reattached (see O(reattach)).
    type: str
    choices: [next_boot, restart]
    default: next_boot
  reattach:
    description:
      - After a restart (O(apply=restart)), put the interfaces of running guests on this network back on its bridge.
      - This runs C(ip link set <tap> master <bridge>) on the machine the module runs on, so it is done only when
        O(uri) is this machine's libvirtd (C(qemu:///system), not a remote or C(test:///) URI); otherwise a warning
        says the guests must be reattached on the hypervisor.
    type: bool
    default: true
extends_documentation_fragment:
  - virtops.kvm._libvirt
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - Two diffs, the network XML (without the stored intent) and its state (state, autostart).
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second run reports no change.
    support: full
  platform:
    platforms: posix
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: An isolated network with DHCP, started now and at boot
  virtops.kvm.network:
    name: lab
    state: active
    autostart: true
    xml: |
      <network>
        <bridge name='virbr-lab'/>
        <ip address='192.168.150.1' netmask='255.255.255.0'>
          <dhcp>
            <range start='192.168.150.100' end='192.168.150.200'/>
            <host mac='52:54:00:00:15:01' name='web1' ip='192.168.150.11'/>
          </dhcp>
        </ip>
      </network>

- name: A network on the host bridge br0 (guests appear on the physical LAN)
  virtops.kvm.network:
    name: lan
    state: active
    xml: |
      <network>
        <forward mode='bridge'/>
        <bridge name='br0'/>
      </network>

- name: Change the subnet and restart the network, reattaching running guests
  virtops.kvm.network:
    name: lab
    state: active
    apply: restart
    xml: "{{ lookup('template', 'lab-net.xml.j2') }}"
"""

RETURN = r"""
network:
  description: The network after the run (before it, in check mode); empty when absent.
  returned: always
  type: dict
  sample: {name: lab, uuid: 2d3c1c4e-8a51-4b87-9d0a-6f3f2b8f5f10, state: active, autostart: true, persistent: true,
           bridge: virbr-lab, forward_mode: null}
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [update-live, define]
live_updates:
  description: The entries changed on the running network with C(virNetworkUpdate).
  returned: always
  type: list
  elements: str
  sample: ["add ip-dhcp-host <host mac=\"52:54:00:00:15:02\" name=\"web2\" ip=\"192.168.150.12\"/>"]
pending_restart:
  description: The running network differs from its definition; the difference applies when it is next started.
  returned: always
  type: bool
reattached:
  description: The guest interfaces put back on the bridge after a restart.
  returned: always
  type: list
  elements: dict
  sample: [{domain: web1, interface: vnet3, bridge: virbr-lab}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._network import APPLY, STATES, ensure_network
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module
from ansible_collections.virtops.kvm.plugins.module_utils._xml import require_lxml


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        xml=dict(type="str"),
        state=dict(type="str", default="present", choices=list(STATES)),
        autostart=dict(type="bool"),
        apply=dict(type="str", default="next_boot", choices=list(APPLY)),
        reattach=dict(type="bool", default=True),
    )
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_lxml(module)
    run_module(module, ensure_network)


if __name__ == "__main__":
    main()
