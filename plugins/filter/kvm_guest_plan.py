# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``virtops.kvm.kvm_guest_plan`` filter: the kvm_guest role's plan of a guest list."""

from __future__ import annotations

DOCUMENTATION = r"""
name: kvm_guest_plan
short_description: The kvm_guest role's plan of a guest list, and everything wrong with it
version_added: 0.2.0
description:
  - Fills in every default of every entry of a C(kvm_guest_list) (see the C(virtops.kvm.kvm_guest) role) and derives
    every name the role uses (the base volume named by the image's checksum, the overlay, the extra disks and their
    targets, the cloud-init seed, the interfaces with the SR-IOV VF a guest already holds or a free one, the cloud-init
    user-data and the inventory record), and checks the whole list against the host, before anything changes.
  - The role calls it once per run, with what one M(virtops.kvm.host_info) call read; it reads nothing itself, so it is
    also a preview of what the role would do with a list.
positional: _input
options:
  _input:
    description: The guest list, as C(kvm_guest_list) takes it.
    type: list
    elements: dict
    required: true
  host:
    description:
      - The C(host) that M(virtops.kvm.host_info) returns, gathered with at least C(libvirt), C(hugepages), C(sriov) and
        C(domains). The guests may be limited to the list's own (O(virtops.kvm.host_info#module:domain_names)) unless
        the list has C(sriov_pf) interfaces, because a VF is free only when no guest of the host holds it.
    type: dict
    required: true
  settings:
    description:
      - The role's settings, by the name of its variable without C(kvm_guest_), for those the list's entries take as
        defaults or are checked against.
    type: dict
    default: {}
    suboptions:
      default_machine:
        description: C(kvm_guest_default_machine).
        type: str
        default: q35
      default_memory_mib:
        description: C(kvm_guest_default_memory_mib).
        type: int
        default: 1024
      default_vcpus:
        description: C(kvm_guest_default_vcpus).
        type: int
        default: 1
      default_user:
        description: C(kvm_guest_default_user).
        type: str
        default: debian
      apply:
        description: C(kvm_guest_apply).
        type: str
        default: next_boot
      pool:
        description: C(kvm_guest_pool).
        type: str
        default: default
      inventory_group:
        description: C(kvm_guest_inventory_group).
        type: str
        default: kvm_guests
      domain_type:
        description: C(kvm_guest_domain_type).
        type: str
        default: kvm
      wait_timeout:
        description: C(kvm_guest_wait_timeout).
        type: int
        default: 300
      user_backend:
        description: C(kvm_guest_user_backend); V(auto) is C(passt) from libvirt 10.0 on, else C(slirp).
        type: str
        default: auto
  image_stats:
    description:
      - The C(results) of an C(ansible.builtin.stat) loop over the local image, kernel and initramfs paths of the list
        (and C(/run/systemd/system) where it has microvm guests). A path missing from them counts as missing on the host.
    type: list
    elements: dict
    default: []
  check_mode:
    description:
      - Whether the run is in check mode (C(ansible_check_mode)); a guest is then C(reachable) only when it runs already.
    type: bool
    default: false
author:
  - virtops.kvm contributors
"""

EXAMPLES = r"""
- name: Read the hypervisor and its guests
  virtops.kvm.host_info:
    gather: [libvirt, hugepages, sriov, domains]
  register: hypervisor

- name: What the role would do with this list
  ansible.builtin.debug:
    msg: "{{ plan.errors or (plan.guests | map(attribute='root_volume') | list) }}"
  vars:
    plan: >-
      {{ [{'name': 'web1', 'image': {'src': 'https://images.example.org/debian-12.qcow2', 'checksum': 'sha256:' ~ digest},
           'interfaces': [{'network': 'default'}]}]
         | virtops.kvm.kvm_guest_plan(host=hypervisor.host, settings={'domain_type': 'qemu'}) }}
    digest: 3f7a6ec8e3ea40a3fdc0a6bf2c09d16f4f5a5d3e6a56a0b3d5b0c9e4a1f2d3c4
"""

RETURN = r"""
_value:
  description: The plan.
  type: dict
  contains:
    guests:
      description:
        - One per entry, in the list's order, every default filled in (C(name), C(state), C(present), C(running),
          C(exists), C(was_running), C(reachable), C(memory_mib), C(vcpus), C(machine), C(firmware), C(cpu), C(image),
          C(root_volume), C(disks), C(seed_volume), C(user_data), C(interfaces), C(forwards), C(ssh_port),
          C(hugepages_pages), C(wait_for), C(groups), C(vars), C(console_log), C(microvm), ...).
      type: list
      elements: dict
    errors:
      description: Everything wrong with the list on this host, one message each; empty when the role may go on.
      type: list
      elements: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.module_utils._kvm_guest_plan import plan_fleet


def kvm_guest_plan(entries, host=None, settings=None, image_stats=None, check_mode=False):
    if not isinstance(entries, list):
        raise AnsibleFilterError("kvm_guest_plan: the input must be a list of guests (kvm_guest_list), got %s" % type(entries).__name__)
    if not isinstance(host, dict):
        raise AnsibleFilterError("kvm_guest_plan: host must be the host that virtops.kvm.host_info returns")
    return plan_fleet(entries, settings=settings, host=host, image_stats=image_stats, check_mode=bool(check_mode))


class FilterModule:
    def filters(self):
        return {"kvm_guest_plan": kvm_guest_plan}
