#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: libvirt_config
short_description: Settings in libvirt's configuration files (libvirtd.conf, qemu.conf, virtlogd.conf...)
version_added: 0.2.0
description:
  - Sets keys in one of libvirt's configuration files under C(/etc/libvirt), or restores their
    defaults, keeping the rest of the file (the package's comments and commented defaults) as it is.
  - Parses libvirt's own grammar (strings, integers, lists of strings that may span lines, comments)
    and checks every value's type before writing, from a table of common keys, and for other keys from
    the commented default the package ships in the file. A wrong type fails and leaves the file untouched.
  - A new assignment goes next to the package's commented default (or replaces it when it is the same
    value), at the end of the file otherwise. The file is written atomically, keeping its mode.
  - Does not restart any daemon; it returns RV(restart_required) and RV(daemon) so a handler can.
    Restarting libvirtd or virtqemud does not stop running guests.
options:
  file:
    description:
      - The file, by name, looked up in C(/etc/libvirt). libvirt's own files are known (V(libvirtd.conf),
        V(virtqemud.conf), V(virtnetworkd.conf), V(virtstoraged.conf), V(qemu.conf), V(virtlogd.conf),
        V(virtlockd.conf), V(libvirt.conf), ...); another name must already exist there.
      - V(daemon) is the file of the daemon that runs the QEMU driver, V(virtqemud.conf) where the host
        runs libvirt's modular daemons and V(libvirtd.conf) otherwise.
    type: str
    required: true
  settings:
    description:
      - Keys and their values. Strings, integers (booleans are written as 0 or 1) and lists of strings,
        as libvirt wants them for that key.
      - A value of V(null) restores that key's default (the assignment is commented out).
      - Values may end up in a file readable by the daemon's group only; do not put secrets here that
        the file's mode does not protect.
    type: dict
    required: true
  state:
    description:
      - V(present) sets the keys to their values; V(absent) restores the default of every key given
        (comments its assignment out; the values are ignored).
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - virtops.kvm._hostfs
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - One diff per changed key.
  idempotent:
    description: When run twice with the same arguments, the second run changes nothing.
    support: full
  platform:
    platforms: posix
notes:
  - With O(root) set, the file is looked up below that directory; the module never runs a command.
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Log libvirtd's QEMU driver at debug level to a file
  virtops.kvm.libvirt_config:
    file: daemon
    settings:
      log_filters: "1:qemu 3:remote 4:event"
      log_outputs: "1:file:/var/log/libvirt/libvirtd.log"
      max_clients: 100
  register: libvirtd_conf

- name: Let QEMU reach the hugepages mount and VFIO devices
  virtops.kvm.libvirt_config:
    file: qemu.conf
    settings:
      hugetlbfs_mount: /dev/hugepages
      cgroup_device_acl: [/dev/null, /dev/full, /dev/zero, /dev/random, /dev/urandom, /dev/ptmx, /dev/kvm, /dev/vfio/vfio]

- name: Back to the package's default for max_clients
  virtops.kvm.libvirt_config:
    file: libvirtd.conf
    settings:
      max_clients:
    state: absent
"""

RETURN = r"""
path:
  description: The file, as the host sees it.
  returned: always
  type: str
  sample: /etc/libvirt/libvirtd.conf
daemon:
  description: The daemon that reads the file (null for client files such as libvirt.conf).
  returned: always
  type: str
  sample: libvirtd
restart_required:
  description: Whether the file changed and RV(daemon) must be restarted to read it.
  returned: always
  type: bool
changed_keys:
  description: The keys whose value changed (or would change in check mode).
  returned: always
  type: list
  elements: str
  sample: [max_clients]
settings:
  description: The active value of every key given after the change (null when the key is at its default).
  returned: always
  type: dict
  sample: {max_clients: 100}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HOSTFS_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt_config import ensure_libvirt_config
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module


def main():
    argument_spec = dict(
        file=dict(type="str", required=True),
        settings=dict(type="dict", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
    )
    argument_spec.update(HOSTFS_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, ensure_libvirt_config)


if __name__ == "__main__":
    main()
