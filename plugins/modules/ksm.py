#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: ksm
short_description: Kernel Same-page Merging (KSM) settings of a hypervisor host
version_added: 0.1.0
description:
  - Sets the KSM knobs in C(/sys/kernel/mm/ksm) at runtime and, with O(persistent=true), in a
    systemd-tmpfiles rule (C(/etc/tmpfiles.d/virtops-ksm.conf)) that applies them at every boot.
  - Only the options that are set are managed; the others keep their current value.
  - The kernel refuses to change C(merge_across_nodes) while pages are shared. The module then
    unmerges every page first (C(run=2)), waits up to O(unmerge_timeout) seconds for
    C(pages_shared) to reach 0, writes the setting and puts C(run) back (or to O(run)).
  - Returns the KSM counters (C(pages_shared), C(pages_sharing), ...) after the change.
options:
  run:
    description:
      - V(0) stops ksmd (merged pages stay merged), V(1) runs it, V(2) stops it and unmerges every page.
    type: int
    choices: [0, 1, 2]
  pages_to_scan:
    description: How many pages ksmd scans before it sleeps.
    type: int
  sleep_millisecs:
    description: How long ksmd sleeps between scans, in milliseconds.
    type: int
  merge_across_nodes:
    description:
      - Whether pages from different NUMA nodes may be merged. Only present on NUMA-capable kernels.
    type: bool
  unmerge:
    description:
      - Allow the module to unmerge every shared page (C(run=2)) when O(merge_across_nodes) must change
        while pages are shared. With V(false) the module fails instead.
    type: bool
    default: true
  unmerge_timeout:
    description: Seconds to wait for C(pages_shared) to drop to 0 after unmerging.
    type: int
    default: 60
  persistent:
    description:
      - Also write the options that are set to C(/etc/tmpfiles.d/virtops-ksm.conf) (C(w) rules for
        systemd-tmpfiles), so they are applied at boot. V(false) leaves that file alone.
      - Settings already in that file that this task does not set (written by another ksm task) are kept;
        the file is read, merged and written under a lock, so concurrent tasks both land their settings.
    type: bool
    default: false
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
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Run KSM on an overcommitted host, and keep it so after reboot
  virtops.kvm.ksm:
    run: 1
    pages_to_scan: 1000
    sleep_millisecs: 50
    persistent: true

- name: Never merge pages across NUMA nodes (unmerges first if needed)
  virtops.kvm.ksm:
    merge_across_nodes: false
    run: 1
"""

RETURN = r"""
ksm:
  description:
    - KSM settings and counters as read from sysfs after the change (predicted in check mode).
    - The switches C(merge_across_nodes) and C(use_zero_pages) are V(true)/V(false), V(null) when the kernel lacks them.
  returned: always
  type: dict
  sample: {run: 1, pages_to_scan: 1000, sleep_millisecs: 50, merge_across_nodes: false, pages_shared: 1200, pages_sharing: 5400,
           pages_unshared: 300, pages_volatile: 10, full_scans: 42, max_page_sharing: 256, use_zero_pages: false}
before:
  description: The managed settings (run, pages_to_scan, sleep_millisecs, merge_across_nodes) before the change.
  returned: always
  type: dict
  sample: {run: 0, pages_to_scan: 100, sleep_millisecs: 20, merge_across_nodes: true}
after:
  description: The managed settings after the change.
  returned: always
  type: dict
  sample: {run: 1, pages_to_scan: 1000, sleep_millisecs: 50, merge_across_nodes: false}
tmpfiles:
  description: The tmpfiles rule the settings were made persistent in.
  returned: when O(persistent=true)
  type: str
  sample: /etc/tmpfiles.d/virtops-ksm.conf
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HOSTFS_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._ksm import ensure_ksm
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module


def main():
    argument_spec = dict(
        run=dict(type="int", choices=[0, 1, 2]),
        pages_to_scan=dict(type="int"),
        sleep_millisecs=dict(type="int"),
        merge_across_nodes=dict(type="bool"),
        unmerge=dict(type="bool", default=True),
        unmerge_timeout=dict(type="int", default=60),
        persistent=dict(type="bool", default=False),
    )
    argument_spec.update(HOSTFS_COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_one_of=[("run", "pages_to_scan", "sleep_millisecs", "merge_across_nodes")],
        supports_check_mode=True,
    )
    run_module(module, ensure_ksm)


if __name__ == "__main__":
    main()
