#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kernel_cmdline
short_description: Arguments on the kernel command line of the next boot (GRUB, grubby, kernel-install)
version_added: 0.2.0
description:
  - Makes kernel arguments present or absent on the command line the host boots with next, and says
    whether the running kernel already has them (RV(active), from C(/proc/cmdline)) or a reboot is needed.
  - "Detects the boot layout: V(grubby) (EL 9: grubby and BLS entries in C(/boot/loader/entries)), V(kernel-install)
    (systemd-boot: C(/etc/kernel/cmdline), then C(kernel-install add) for every installed kernel), V(grub)
    (C(/etc/default/grub): the module's own drop-in C(/etc/default/grub.d/99-virtops-kvm.cfg), then
    C(update-grub) or C(grub2-mkconfig))."
  - An argument V(key=value) replaces every argument with that key. A key given several times in one
    call is kept as that ordered group (V(hugepagesz=1G hugepages=4 hugepagesz=2M hugepages=512)).
options:
  arguments:
    description:
      - The kernel arguments, V(key) or V(key=value), without spaces or quotes.
      - With O(state=absent), V(key) removes the key with any value and V(key=value) only that exact argument.
    type: list
    elements: str
    required: true
  state:
    description: Whether the arguments are on the command line (V(present)) or not (V(absent)).
    type: str
    choices: [present, absent]
    default: present
  bootloader:
    description: The boot layout; V(auto) detects it.
    type: str
    choices: [auto, grub, grubby, kernel-install]
    default: auto
extends_documentation_fragment:
  - virtops.kvm._hostfs
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The configured command line before and after.
  idempotent:
    description: When run twice with the same arguments, the second run changes nothing.
    support: full
  platform:
    platforms: posix
notes:
  - With O(root) other than V(/) no command runs (C(update-grub), C(grub2-mkconfig), C(grubby), C(kernel-install) would
    act on this machine's boot configuration); the files in the tree are changed as the tool would change them and the
    command is returned in RV(skipped_commands) with a warning.
  - The module never reboots. The kvm_host role reboots when asked to and then checks C(/proc/cmdline).
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: IOMMU in passthrough mode and 2 MiB hugepages reserved at boot
  virtops.kvm.kernel_cmdline:
    arguments: [intel_iommu=on, iommu=pt, default_hugepagesz=2M, hugepagesz=2M, hugepages=64]
  register: cmdline

- name: Reboot when the running kernel does not have them yet
  ansible.builtin.reboot:
  when: cmdline.reboot_required

- name: No more nomodeset
  virtops.kvm.kernel_cmdline:
    arguments: [nomodeset]
    state: absent
"""

RETURN = r"""
bootloader:
  description: The boot layout that was used.
  returned: always
  type: str
  sample: grub
cmdline:
  description: The configured command line after the change (GRUB's GRUB_CMDLINE_LINUX and GRUB_CMDLINE_LINUX_DEFAULT, the BLS options,
    or /etc/kernel/cmdline).
  returned: always
  type: str
  sample: console=ttyS0 intel_iommu=on iommu=pt quiet
active:
  description: Whether the running kernel's command line (/proc/cmdline) already satisfies the request.
  returned: always
  type: bool
reboot_required:
  description: Whether a reboot is needed for the running kernel to have the request (the opposite of RV(active)).
  returned: always
  type: bool
commands:
  description: The commands that ran (argument lists).
  returned: always
  type: list
  elements: list
  sample: [[update-grub]]
skipped_commands:
  description: The commands that would have run but did not, because O(root) is not V(/) (or check mode).
  returned: always
  type: list
  elements: list
  sample: [[update-grub]]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HOSTFS_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._kernel_cmdline import ensure_kernel_cmdline
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module


def main():
    argument_spec = dict(
        arguments=dict(type="list", elements="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        bootloader=dict(type="str", choices=["auto", "grub", "grubby", "kernel-install"], default="auto"),
    )
    argument_spec.update(HOSTFS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, ensure_kernel_cmdline)


if __name__ == "__main__":
    main()
