#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: bridge
short_description: Linux bridges for guests to join
version_added: 0.1.0
description:
  - Creates, changes or removes a Linux bridge with its ports, STP settings, MTU, addresses and routes.
  - The V(iproute2) backend sets the runtime state over netlink (pyroute2), idempotently; it does not
    survive a reboot. The V(netplan) backend writes C(/etc/netplan/<netplan_prefix>-<name>.yaml) (mode 0600),
    validates it with C(netplan generate) in a temporary copy of C(/etc/netplan), then runs C(netplan apply).
  - "No lockout: with the iproute2 backend, addresses and default routes of a new port move to the bridge.
    When a gateway is known (O(gateway4), or the default route that moved), it must answer a ping within
    O(rollback_timeout) seconds after applying; otherwise the previous configuration is restored and the
    module fails. The netplan backend restores the previous file and applies it again in the same case."
options:
  name:
    description: Bridge interface name (at most 15 characters).
    type: str
    required: true
  state:
    description: V(present) creates or changes the bridge; V(absent) deletes it (its ports are released).
    type: str
    choices: [present, absent]
    default: present
  backend:
    description:
      - V(auto) picks V(iproute2) when O(netns) is set, V(netplan) when the netplan command exists and
        C(/etc/netplan) holds configuration, and V(iproute2) otherwise.
    type: str
    choices: [auto, netplan, iproute2]
    default: auto
  ports:
    description: Interfaces enslaved to the bridge. Ports not listed are released; leave unset to keep the ports as they are.
    type: list
    elements: str
  stp:
    description: Spanning tree protocol on the bridge.
    type: bool
  forward_delay:
    description: STP forward delay in seconds (0 to 30).
    type: int
  vlan_filtering:
    description: VLAN filtering on the bridge (iproute2 backend, and only on kernels built with it).
    type: bool
  mtu:
    description: MTU of the bridge.
    type: int
  addresses:
    description: Addresses of the bridge in CIDR form (V(192.0.2.10/24)). Unset keeps the current ones.
    type: list
    elements: str
  dhcp4:
    description: Get an IPv4 address by DHCP (netplan backend only).
    type: bool
  gateway4:
    description: IPv4 default gateway through the bridge. Also the address checked after applying.
    type: str
  routes:
    description: Extra routes through the bridge.
    type: list
    elements: dict
    suboptions:
      to:
        description: Destination network in CIDR form, or V(default).
        type: str
        required: true
      via:
        description: Gateway address.
        type: str
        required: true
      metric:
        description: Route metric.
        type: int
  nameservers:
    description: DNS servers for the bridge (netplan backend only).
    type: list
    elements: str
  rollback_timeout:
    description:
      - Seconds the gateway has to answer after applying before the previous configuration is restored.
      - With O(stp=true), ports only forward after twice O(forward_delay); make this longer than that.
    type: int
    default: 30
  netns:
    description:
      - Network namespace (a name under C(/run/netns)) the bridge lives in; iproute2 backend only.
      - For tests and for operators who manage namespaced bridges.
    type: str
  netplan_prefix:
    description:
      - File name prefix of the netplan file. Letters, digits and C(_.+-) only (no C(/), so the file stays in C(/etc/netplan)).
    type: str
    default: 60-virtops
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
requirements:
  - pyroute2 (iproute2 backend)
  - netplan (netplan backend)
notes:
  - When O(root) is not V(/), C(netplan apply) is not run but returned in RV(commands_skipped), and the V(iproute2)
    backend is refused (it would read and change this machine's links, not that tree's); use V(netplan) there.
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: A bridge on the uplink, keeping the host reachable
  virtops.kvm.bridge:
    name: br0
    ports: [eno1]
    stp: false
    addresses: [192.0.2.10/24]
    gateway4: 192.0.2.1
    nameservers: [192.0.2.53]
    backend: netplan

- name: An isolated bridge for guests, runtime only
  virtops.kvm.bridge:
    name: virbr-lab
    backend: iproute2
    addresses: [10.10.0.1/24]
    mtu: 9000

- name: Remove it
  virtops.kvm.bridge:
    name: virbr-lab
    backend: iproute2
    state: absent
"""

RETURN = r"""
backend:
  description: The backend used.
  returned: always
  type: str
  sample: iproute2
before:
  description:
    - iproute2 backend, the bridge before the change (ports, addresses, routes, stp, forward_delay, vlan_filtering, mtu, up),
      V(null) if absent. netplan backend, the previous file content.
  returned: always
  type: raw
  sample: {name: br0, ports: [], addresses: [], routes: [], stp: false, forward_delay: 15, vlan_filtering: false, mtu: 1500, up: true}
after:
  description: The same after the change (read back from the kernel; predicted in check mode).
  returned: always
  type: raw
  sample: {name: br0, ports: [eno1], addresses: [192.0.2.10/24], routes: [{to: default, via: 192.0.2.1, metric: null}],
           stp: false, forward_delay: 15, vlan_filtering: false, mtu: 1500, up: true}
gateway_checked:
  description: The gateway that answered after applying, or V(null) when none was checked.
  returned: always
  type: str
  sample: 192.0.2.1
path:
  description: The netplan file.
  returned: with the netplan backend
  type: str
  sample: /etc/netplan/60-virtops-br0.yaml
generated:
  description: Files C(netplan generate) produced from the configuration during validation.
  returned: with the netplan backend, when the file changed
  type: list
  elements: str
  sample: [/run/systemd/network/10-netplan-br0.netdev]
commands_skipped:
  description: Commands not run because O(root) is not V(/).
  returned: with the netplan backend
  type: list
  elements: list
  sample: [[netplan, apply]]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.virtops.kvm.plugins.module_utils._bridge import ensure_bridge
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HOSTFS_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._netlink import PYROUTE2_IMPORT_ERROR
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        backend=dict(type="str", choices=["auto", "netplan", "iproute2"], default="auto"),
        ports=dict(type="list", elements="str"),
        stp=dict(type="bool"),
        forward_delay=dict(type="int"),
        vlan_filtering=dict(type="bool"),
        mtu=dict(type="int"),
        addresses=dict(type="list", elements="str"),
        dhcp4=dict(type="bool"),
        gateway4=dict(type="str"),
        routes=dict(
            type="list",
            elements="dict",
            options=dict(
                to=dict(type="str", required=True),
                via=dict(type="str", required=True),
                metric=dict(type="int"),
            ),
        ),
        nameservers=dict(type="list", elements="str"),
        rollback_timeout=dict(type="int", default=30),
        netns=dict(type="str"),
        netplan_prefix=dict(type="str", default="60-virtops"),
    )
    argument_spec.update(HOSTFS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if PYROUTE2_IMPORT_ERROR and module.params["backend"] != "netplan":
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    run_module(module, ensure_bridge)


if __name__ == "__main__":
    main()
