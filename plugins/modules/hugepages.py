#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: hugepages
short_description: Hugepage pools of a hypervisor host, at runtime and at boot
version_added: 0.1.0
description:
  - Allocates hugepages of one size system-wide (O(count)) or per NUMA node (O(nodes)) through sysfs,
    then re-reads what the kernel really allocated; the kernel gives fewer pages when free memory is
    fragmented.
  - When the kernel allocates fewer pages than asked, the module optionally compacts memory and retries
    once (O(compact=true)); if still short it restores the previous count and fails with how many pages
    were asked and allocated, unless O(allow_partial=true).
  - Lowering a pool below the pages in use is not an error; the kernel keeps those pages as surplus
    until they are freed, and the module warns about it.
  - With O(persistent=true) the pool is also set at boot. The default page size system-wide goes to
    C(/etc/sysctl.d/80-virtops-hugepages.conf) (C(vm.nr_hugepages)); per-node counts and other sizes go
    to a systemd-tmpfiles rule C(/etc/tmpfiles.d/virtops-hugepages-<size>kB.conf); 1 GiB pages, which
    most hosts can only allocate at boot, go to the kernel command line through
    C(/etc/default/grub.d/virtops-hugepages-1048576kB.cfg), followed by C(update-grub)
    (or C(grub2-mkconfig)), and RV(reboot_required=true).
  - O(mount) adds a hugetlbfs mount of this page size to C(/etc/fstab) and mounts it.
options:
  size:
    description:
      - Page size, like V(2M), V(1G) or V(2048kB). Defaults to the kernel's default hugepage size.
      - It must be a size the kernel offers (a directory in C(/sys/kernel/mm/hugepages)).
    type: str
  count:
    description: Number of pages system-wide. Mutually exclusive with O(nodes).
    type: int
  nodes:
    description:
      - "Number of pages per NUMA node, keys are node numbers (V({0: 512, 1: 512}))."
      - Nodes not listed are left alone. Mutually exclusive with O(count).
    type: dict
  mode:
    description:
      - V(exact) sets the pool to the count; V(at_least) only raises it.
    type: str
    choices: [exact, at_least]
    default: exact
  state:
    description:
      - V(present) sets the pool; V(absent) sets it to 0 pages (system-wide, or on the listed O(nodes)),
        and removes its boot-time configuration (with O(persistent=true)) and its O(mount).
    type: str
    choices: [present, absent]
    default: present
  compact:
    description: When the kernel allocates fewer pages than asked, drop caches, compact memory and retry once.
    type: bool
    default: false
  allow_partial:
    description: Keep a short allocation (with a warning) instead of restoring the previous count and failing.
    type: bool
    default: false
  persistent:
    description: Also configure the pool for boot (see the description for where).
    type: bool
    default: false
  mount:
    description:
      - A hugetlbfs mount point for this page size (for example V(/dev/hugepages1G)), kept in C(/etc/fstab)
        with C(pagesize=) and mounted now.
    type: path
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
  - When O(root) is not V(/), commands (bootloader update, mount) are not run but returned in RV(commands_skipped).
  - Writing the kernel command line only takes effect after a reboot; the module never reboots.
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: 512 default-size (2 MiB) pages, also after reboot
  virtops.kvm.hugepages:
    count: 512
    persistent: true

- name: 1 GiB pages split over two NUMA nodes, at boot, with a mount point
  virtops.kvm.hugepages:
    size: 1G
    nodes: {0: 8, 1: 8}
    persistent: true
    allow_partial: true
    mount: /dev/hugepages1G
  register: gig

- name: Reboot when the kernel command line changed
  ansible.builtin.reboot:
  when: gig.reboot_required

- name: At least 1024 pages of 2 MiB, compacting memory if needed
  virtops.kvm.hugepages:
    size: 2M
    count: 1024
    mode: at_least
    compact: true
"""

RETURN = r"""
size_kb:
  description: The page size managed, in kB.
  returned: always
  type: int
  sample: 2048
before:
  description: The pool before the change, system-wide (total, free, reserved, surplus) and per node (total, free, surplus).
  returned: always
  type: dict
  sample: {size_kb: 2048, total: 0, free: 0, reserved: 0, surplus: 0, nodes: {"0": {total: 0, free: 0, surplus: 0}}}
after:
  description: The pool after the change, as re-read from sysfs (predicted in check mode).
  returned: always
  type: dict
  sample: {size_kb: 2048, total: 512, free: 512, reserved: 0, surplus: 0, nodes: {"0": {total: 512, free: 512, surplus: 0}}}
reboot_required:
  description: Whether the kernel command line changed, so the pool only has its boot-time size after a reboot.
  returned: always
  type: bool
  sample: false
files:
  description: Configuration files written or removed.
  returned: always
  type: list
  elements: str
  sample: [/etc/sysctl.d/80-virtops-hugepages.conf]
commands:
  description: Commands the change needs (bootloader update, mount).
  returned: always
  type: list
  elements: list
  sample: [[update-grub]]
commands_skipped:
  description: Commands from RV(commands) that were not run, because O(root) is not V(/) or in check mode on a test root.
  returned: always
  type: list
  elements: list
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HOSTFS_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._hugepages import ensure_hugepages
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module


def main():
    argument_spec = dict(
        size=dict(type="str"),
        count=dict(type="int"),
        nodes=dict(type="dict"),
        mode=dict(type="str", choices=["exact", "at_least"], default="exact"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        compact=dict(type="bool", default=False),
        allow_partial=dict(type="bool", default=False),
        persistent=dict(type="bool", default=False),
        mount=dict(type="path"),
    )
    argument_spec.update(HOSTFS_COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[("count", "nodes")],
        required_if=[("state", "present", ("count", "nodes"), True)],
        supports_check_mode=True,
    )
    run_module(module, ensure_hugepages)


if __name__ == "__main__":
    main()
