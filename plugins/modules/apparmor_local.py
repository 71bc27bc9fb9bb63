#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: apparmor_local
short_description: Named blocks of rules in AppArmor's local override files for libvirt
version_added: 0.1.0
description:
  - Manages a named block of AppArmor rules in one of the local override files libvirt ships for users,
    C(/etc/apparmor.d/local/abstractions/libvirt-qemu) (applies to every guest) and
    C(/etc/apparmor.d/local/usr.lib.libvirt.virt-aa-helper) (lets virt-aa-helper render uncommon paths),
    or in any other file below C(/etc/apparmor.d/local/).
  - The block sits between C(# BEGIN virtops.kvm <block>) and C(# END virtops.kvm <block>) comments, so
    several plays can own separate blocks of one file. Lines outside blocks are kept byte for byte (line endings,
    form feeds and all). The file is read, checked and written under a lock, so concurrent tasks both land their block.
  - Before writing, every profile that includes the file (directly or through abstractions) is compiled
    with the new content by C(apparmor_parser -Q -K) in a temporary copy of C(/etc/apparmor.d), without
    loading anything into the kernel. Rules the parser rejects fail the module with the parser's message;
    the real file is not touched. This also happens in check mode. The copy is private to the run and holds no
    symlink that leads outside it, so nothing outside it is ever written.
  - After the file is written atomically, if AppArmor is enabled in the running kernel, the profiles that
    use it and are loaded (virt-aa-helper's, the C(libvirt-<uuid>) profiles of running guests) are
    reloaded with C(apparmor_parser -r). If AppArmor is not enabled, the module warns and reloads nothing.
options:
  profile:
    description:
      - Which local file. V(libvirt-qemu) is C(/etc/apparmor.d/local/abstractions/libvirt-qemu),
        V(virt-aa-helper) is C(/etc/apparmor.d/local/usr.lib.libvirt.virt-aa-helper).
      - Anything else is a path below C(/etc/apparmor.d/local/), absolute or relative to it.
    type: str
    required: true
  block:
    description:
      - Name of the block this task owns in the file. Letters, digits, spaces and C(_.+:@-), with no white space
        at either end and no control characters.
    type: str
    default: ansible
  rules:
    description:
      - Rule lines of the block, each ending with a comma (C(/var/guests/** rwk,), C(deny /srv/secret/** rw,)).
        Comments and C(include) lines are allowed too.
      - The braces of the rules must balance (a child profile opened in one rule is closed in a later one); a rule that
        closes a brace it did not open would close the profile that includes the file, and is refused.
      - Required with O(state=present).
    type: list
    elements: str
  state:
    description: V(present) sets the block to O(rules); V(absent) removes the block.
    type: str
    choices: [present, absent]
    default: present
  backup:
    description: Keep a copy of the previous file next to it (timestamped) when it changes.
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
requirements:
  - apparmor_parser (the C(apparmor) package)
notes:
  - When O(root) is not V(/), profiles are compiled against the copy below it and never reloaded (see RV(reload_skipped)).
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Let every guest use images below /var/guests
  virtops.kvm.apparmor_local:
    profile: libvirt-qemu
    block: guest-images
    rules:
      - "/var/guests/** rwk,"
      - "deny /var/guests/secret/** rw,"

- name: Let virt-aa-helper read an uncommon path
  virtops.kvm.apparmor_local:
    profile: virt-aa-helper
    block: guest-images
    rules:
      - "/var/guests/** r,"
    backup: true

- name: Drop a block another play no longer needs
  virtops.kvm.apparmor_local:
    profile: libvirt-qemu
    block: old-nfs
    state: absent
"""

RETURN = r"""
path:
  description: The local file managed.
  returned: always
  type: str
  sample: /etc/apparmor.d/local/abstractions/libvirt-qemu
block:
  description: The block name.
  returned: always
  type: str
  sample: guest-images
compiled:
  description: Profiles compiled with the new content before writing (empty when nothing changed).
  returned: always
  type: list
  elements: str
  sample: [/etc/apparmor.d/libvirt/TEMPLATE.qemu]
reloaded:
  description: Profiles reloaded into the kernel after writing.
  returned: always
  type: list
  elements: str
  sample: [/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper]
reload_skipped:
  description: Reload commands not run because O(root) is not V(/).
  returned: always
  type: list
  elements: list
  sample: []
backup_file:
  description: The copy of the previous file.
  returned: when O(backup=true) and the file changed
  type: str
  sample: /etc/apparmor.d/local/abstractions/libvirt-qemu.12345.2026-01-01@10:00:00~
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._apparmor_local import ensure_apparmor_local
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HOSTFS_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module


def main():
    argument_spec = dict(
        profile=dict(type="str", required=True),
        block=dict(type="str", default="ansible"),
        rules=dict(type="list", elements="str"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        backup=dict(type="bool", default=False),
    )
    argument_spec.update(HOSTFS_COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_if=[("state", "present", ("rules",))],
        supports_check_mode=True,
    )
    run_module(module, ensure_apparmor_local)


if __name__ == "__main__":
    main()
