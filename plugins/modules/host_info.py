#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: host_info
short_description: Facts about a KVM hypervisor host
version_added: 0.1.0
description:
  - Reports whether a host can run KVM guests and what it offers them, as structured facts.
  - Reads C(/proc), C(/sys), C(/dev/kvm) and C(/etc) and, when libvirtd is reachable, libvirt's
    capabilities.
  - Fields that cannot be read are returned as V(null); the module never fails because of them.
    Only an unreachable O(uri) fails, and only when O(gather) names V(libvirt) explicitly.
options:
  gather:
    description:
      - Which groups of facts to return. V(all) means every group but V(domains); with V(all), an unreachable
        libvirt gives RV(host.libvirt=null) and RV(host.libvirt_error) instead of a failure.
      - V(domains) lists the guests libvirt holds, with their XML, as M(virtops.kvm.domain_info) with
        O(virtops.kvm.domain_info#module:include_xml=true) does, so that a play that needs the host's facts and its
        guests reads both in one task (the kvm_guest role does). It is read only when named, and an unreachable
        libvirt then fails the module.
    type: list
    elements: str
    choices: [all, cpu, kvm, numa, hugepages, iommu, sriov, apparmor, ksm, libvirt, domains]
    default: [all]
  domain_names:
    description:
      - With O(gather=domains), read only the guests of these names (a name libvirt does not know is left out, not
        an error), so that reading the guests a play manages costs the same on a host with thousands of others.
      - Without it, every guest is read.
    type: list
    elements: str
    version_added: 0.2.0
extends_documentation_fragment:
  - virtops.kvm._hostfs
  - virtops.kvm._libvirt
  - virtops.kvm._attributes.INFO_MODULE
attributes:
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second run reports no change.
    support: full
    details:
      - It only reads.
  platform:
    platforms: posix
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Can this machine run KVM guests?
  virtops.kvm.host_info:
    gather: [kvm]
  register: host

- name: Stop early on hosts without hardware virtualization
  ansible.builtin.assert:
    that: host.host.kvm.ok
    fail_msg: "{{ host.host.kvm.reason }}"

- name: Hugepage pools and NUMA layout, plus libvirt's view (fails if libvirtd is down)
  virtops.kvm.host_info:
    gather: [numa, hugepages, libvirt]
  register: layout
"""

RETURN = r"""
host:
  description: The facts, one key per gathered group.
  returned: always
  type: dict
  contains:
    cpu:
      description: CPU vendor and model, the virtualization flag, and address sizes from C(/proc/cpuinfo).
      returned: when gathered
      type: dict
      sample: {vendor: GenuineIntel, model_name: Intel Xeon, virtualization_flag: vmx, address_bits: {physical: 46, virtual: 48}}
    kvm:
      description:
        - The kvm-ok question. C(ok) with C(reason); whether C(/dev/kvm) exists, its owner, group and mode, and
          whether the user QEMU runs as (C(qemu_user), with C(qemu_group)) can open it read-write
          (C(usable_by_qemu_user), V(null) when that user is unknown); the kvm module and its C(nested) parameter.
        - When C(/dev/kvm) exists but QEMU cannot open it, C(slow_libvirt_cause) explains that this is why libvirt
          calls are slow (libvirt 9.0 re-probes QEMU's capabilities on every call, so C(defineXML) took 48 s instead
          of 0.02 s), C(reason) names the fix, and the module warns. Otherwise C(slow_libvirt_cause) is V(null).
        - Tri-states (C(usable_by_qemu_user), C(nested)) are V(true), V(false), or V(null) when the host does not say.
      returned: when gathered
      type: dict
      sample: {ok: true, reason: KVM acceleration can be used, slow_libvirt_cause: null, device_present: true,
               device_owner: root, device_group: kvm, device_mode: "0660", qemu_user: libvirt-qemu, qemu_group: kvm,
               usable_by_qemu_user: true, module: kvm_intel, module_loaded: true, nested: false}
    numa:
      description: NUMA nodes with their CPUs and memory in kB.
      returned: when gathered
      type: dict
      sample: {node_count: 1, nodes: [{id: 0, cpus: "0-1", memory_total_kb: 24000000, memory_free_kb: 23000000}]}
    hugepages:
      description:
        - Default hugepage size, hugetlbfs mounts, and one pool per page size (key like V(2048kB)) with
          total, free, reserved, surplus system-wide and total, free, surplus per NUMA node.
      returned: when gathered
      type: dict
      sample: {default_size_kb: 2048, mounts: [{path: /dev/hugepages, pagesize: 2M}],
               pools: {"2048kB": {size_kb: 2048, total: 0, free: 0, reserved: 0, surplus: 0,
                                  nodes: {"0": {total: 0, free: 0, surplus: 0}}}}}
    iommu:
      description: Whether an IOMMU is on, the IOMMU kernel arguments, and each IOMMU group with its PCI devices.
      returned: when gathered
      type: dict
      sample: {enabled: true, units: [dmar0], kernel_cmdline: [intel_iommu=on], group_count: 1,
               groups: {"0": [{address: "0000:00:00.0", vendor_id: "8086", device_id: "29c0", driver: null, iommu_group: 0, netdevs: []}]}}
    sriov:
      description:
        - SR-IOV capable PCI devices (physical functions) with their netdevs, driver, totalvfs, numvfs and VF addresses.
        - C(up) is whether the first netdev is up (V(null) without one); libvirt hands out VFs as interfaces only then.
      returned: when gathered
      type: dict
      sample: {devices: [{address: "0000:03:00.0", netdevs: [enp3s0f0], up: true, driver: igb, totalvfs: 7, numvfs: 2,
                          vfs: ["0000:03:10.0", "0000:03:10.2"]}]}
    apparmor:
      description: Whether AppArmor is enabled in the running kernel (V(null) when the kernel has no AppArmor to ask).
      returned: when gathered
      type: dict
      sample: {enabled: true, kernel_module: true}
    ksm:
      description:
        - Kernel Same-page Merging settings and counters, or C(available=false) when the kernel has no KSM.
        - The switches C(merge_across_nodes) and C(use_zero_pages) are V(true)/V(false) (V(null) when absent).
      returned: when gathered
      type: dict
      sample: {available: true, run: 0, pages_to_scan: 100, sleep_millisecs: 20, merge_across_nodes: true, pages_shared: 0, pages_sharing: 0}
    libvirt:
      description:
        - libvirt and hypervisor versions, the domain types (V(kvm), V(qemu)) for the host architecture, machine
          types per architecture with their aliases (V(q35) to V(pc-q35-7.2)), C(-hpb) machine types where
          QEMU offers them, and the host CPU C(maxphysaddr).
        - C(networks) lists every libvirt network (C(name), C(active), C(autostart), C(bridge) of an active one) and
          C(pools) every storage pool (C(name), C(active), C(autostart)), so a play can check what guests will use.
        - V(null) when libvirt could not be reached (see RV(host.libvirt_error)).
      returned: when gathered
      type: dict
      sample: {uri: "qemu:///system", libvirt_version: 9.0.0, hypervisor: QEMU, hypervisor_version: 7.2.0, host_arch: x86_64,
               domain_types: [kvm, qemu], host_maxphysaddr: {mode: emulate, bits: 46}, hpb_machine_types: [],
               networks: [{name: default, active: true, autostart: true, bridge: virbr0}],
               pools: [{name: default, active: true, autostart: true}]}
    domains:
      description:
        - The guests libvirt holds (only those of O(domain_names) when given), sorted by name, each as
          RV(virtops.kvm.domain_info#module:domains) describes it, with its XML (passwords masked).
      returned: when gathered (O(gather) names V(domains))
      type: list
      elements: dict
      sample: [{name: web1, uuid: 4dea22b3-1d52-d8f3-2516-782e98ab3fa0, state: running, state_reason: booted, persistent: true,
                autostart: false, vcpus: {current: 1, maximum: 1}, memory: {current_kib: 1048576, maximum_kib: 1048576},
                machine: pc-q35-7.2, arch: x86_64, firmware: bios, disks: [], interfaces: [], xml: "<domain type='kvm'>...</domain>"}]
    libvirt_error:
      description: Why libvirt facts are null.
      returned: when libvirt facts were gathered implicitly and libvirt could not be reached
      type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._host_info import EXTRA_SUBSETS, SUBSETS, ensure_host_info
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HOSTFS_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module


def main():
    argument_spec = dict(
        gather=dict(type="list", elements="str", default=["all"], choices=["all", *SUBSETS, *EXTRA_SUBSETS]),
        domain_names=dict(type="list", elements="str"),
    )
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    argument_spec.update(HOSTFS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, ensure_host_info, read_only=True)


if __name__ == "__main__":
    main()
