#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: domain_info
short_description: Facts about libvirt guests
version_added: 0.1.0
description:
  - Lists libvirt guests (domains), all of them or one, with their state, resources, disks and interfaces.
  - Reads the live XML of running guests and the persistent XML of stopped ones. Never changes anything.
  - Opens a read-only libvirt connection, unless O(ip_sources) asks the guest agent (V(agent)), which libvirt
    answers only on a read-write connection.
  - Secret values (graphics passwords, network disk cookies) are never returned; in RV(domains[].xml) they read
    C(********), also inside the last-applied intent M(virtops.kvm.domain) keeps in C(<metadata>).
options:
  name:
    description: Only this guest. A name that does not exist fails.
    type: str
  state:
    description: Only guests in one of these power states.
    type: list
    elements: str
    choices: [blocked, crashed, nostate, paused, pmsuspended, running, shutdown, shutoff]
  ip_sources:
    description:
      - Where to read the IP addresses of the interfaces of running guests. V(lease) asks libvirt's DHCP
        server (libvirt networks only), V(agent) the QEMU guest agent, V(arp) the host's ARP table.
      - A source that cannot answer does not fail the module; its error is in RV(domains[].ip_errors).
    type: list
    elements: str
    choices: [lease, agent, arp]
    default: []
  include_xml:
    description: Also return each guest's XML (secret values masked).
    type: bool
    default: false
  include_snapshots:
    description: Also return each guest's snapshots in RV(domains[].snapshots), as M(virtops.kvm.domain_snapshot) returns them.
    type: bool
    default: false
extends_documentation_fragment:
  - virtops.kvm._libvirt
  - virtops.kvm._attributes.INFO_MODULE
attributes:
  idempotent:
    description: Running it again with the same options changes nothing.
    support: full
    details:
      - It only reads.
  platform:
    platforms: posix
requirements:
  - libvirt-python
  - lxml
seealso:
  - module: virtops.kvm.domain
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Every running guest
  virtops.kvm.domain_info:
    state: [running]
  register: running

- name: One guest with the addresses its DHCP leases and ARP entries show
  virtops.kvm.domain_info:
    name: web1
    ip_sources: [lease, arp]
  register: web1

- name: Print the first address
  ansible.builtin.debug:
    msg: "{{ web1.domains[0].interfaces[0].addresses[0].address | default('no address yet') }}"
"""

RETURN = r"""
domains:
  description: The guests, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name.
      type: str
    uuid:
      description: UUID.
      type: str
    state:
      description: Power state (C(running), C(paused), C(shutoff)...).
      type: str
    state_reason:
      description: libvirt's reason for the state (C(booted), C(user), C(saved), C(destroyed)...).
      type: str
    persistent:
      description: Whether the guest is defined (not transient).
      type: bool
    autostart:
      description: Whether libvirtd starts it at boot.
      type: bool
    vcpus:
      description: Current and maximum number of virtual CPUs.
      type: dict
      sample: {current: 1, maximum: 2}
    memory:
      description: Current (balloon) and maximum memory in KiB.
      type: dict
      sample: {current_kib: 196608, maximum_kib: 196608}
    machine:
      description: Machine type as libvirt expanded it.
      type: str
      sample: pc-q35-7.2
    arch:
      description: Guest architecture.
      type: str
      sample: x86_64
    firmware:
      description: C(efi) or C(bios).
      type: str
    cpu:
      description: CPU mode and model (V(null) when the XML has none).
      type: dict
      sample: {mode: host-passthrough, model: null}
    disks:
      description: Disks with their target, bus, source (path, device, or pool/volume), format, type, device and read-only flag.
      type: list
      elements: dict
      sample: [{target: vda, bus: virtio, source: /var/lib/libvirt/images/web1.qcow2, format: qcow2, type: file, device: disk, readonly: false}]
    interfaces:
      description:
        - Interfaces with MAC, type, source (network, bridge or device), model and host-side target device.
        - With O(ip_sources), C(addresses) lists C(address), C(prefix), C(family), C(source) and the guest's C(interface) name.
      type: list
      elements: dict
      sample: [{mac: "52:54:00:12:34:56", type: network, source: default, model: virtio, target: vnet0, addresses: []}]
    ip_errors:
      description: Errors of the O(ip_sources) that could not answer, by source.
      returned: when O(ip_sources) is set
      type: dict
      sample: {agent: "Guest agent is not responding"}
    xml:
      description: The guest's XML (live when running).
      returned: when O(include_xml=true)
      type: str
    snapshots:
      description: The guest's snapshots, oldest first, with C(name), C(parent), C(creation_time), C(state), C(kind), C(description) and C(current).
      returned: when O(include_snapshots=true)
      type: list
      elements: dict
      sample: [{name: before-upgrade, parent: null, creation_time: 1796307244, state: running, kind: internal, description: null, current: true}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._domain_info import ensure_domain_info, needs_read_write
from ansible_collections.virtops.kvm.plugins.module_utils._domain_state import STATE_CHOICES
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module
from ansible_collections.virtops.kvm.plugins.module_utils._xml import require_lxml


def main():
    argument_spec = dict(
        name=dict(type="str"),
        state=dict(type="list", elements="str", choices=STATE_CHOICES),
        ip_sources=dict(type="list", elements="str", choices=["lease", "agent", "arp"], default=[]),
        include_xml=dict(type="bool", default=False),
        include_snapshots=dict(type="bool", default=False),
    )
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_lxml(module)
    run_module(module, ensure_domain_info, read_only=not needs_read_write(module.params))


if __name__ == "__main__":
    main()
