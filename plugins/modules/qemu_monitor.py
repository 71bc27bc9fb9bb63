#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_monitor
short_description: Run one QEMU monitor command (QMP or HMP) on a running libvirt guest
version_added: 0.2.0
description:
  - Sends one command to the QEMU monitor of a running guest through libvirt (C(virDomainQemuMonitorCommand),
    as C(virsh qemu-monitor-command) does) and returns the parsed reply.
  - Read-only commands, QMP C(query-*) and HMP C(info ...), report C(changed=false) and run in check mode too.
    Any other command reports C(changed=true) and is skipped in check mode; the module cannot know what it changes.
  - A QMP error fails the task with QEMU's error class and description.
  - Libvirt marks the guest tainted (C(custom-monitor)) once a monitor command has been sent, and warns about it
    in the guest's log; libvirt does not track what the command changed, so its view of the guest can differ
    from QEMU's afterwards.
options:
  name:
    description: The running guest.
    type: str
    required: true
  command:
    description:
      - A QMP command as a dict (C(execute) and optional C(arguments)) or as JSON text.
      - With O(hmp=true), the HMP text (for example C(info registers)).
    type: raw
    required: true
  hmp:
    description: O(command) is HMP text.
    type: bool
    default: false
extends_documentation_fragment:
  - virtops.kvm._libvirt
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: partial
    details:
      - Read-only commands run; any other command is skipped and reported as a change.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - Read-only commands are; any other command is sent on every run.
  platform:
    platforms: posix
requirements:
  - libvirt-python
seealso:
  - module: virtops.kvm.domain_info
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Is the guest running, according to QEMU
  virtops.kvm.qemu_monitor:
    name: web1
    command:
      execute: query-status
  register: status

- name: The vCPU registers through HMP
  virtops.kvm.qemu_monitor:
    name: web1
    command: info registers
    hmp: true

- name: Pull the virtual cable of net0
  virtops.kvm.qemu_monitor:
    name: web1
    command: '{"execute": "set_link", "arguments": {"name": "net0", "up": false}}'
"""

RETURN = r"""
reply:
  description: QMP's C(return) value, or the HMP text; V(null) when skipped in check mode.
  returned: always
  type: raw
  sample: {running: true, status: running}
read_only:
  description: Whether the command was recognised as read-only.
  returned: always
  type: bool
skipped_in_check_mode:
  description: Whether the command was not sent because of check mode.
  returned: always
  type: bool
command:
  description: The command text sent (QMP as canonical JSON).
  returned: always
  type: str
error_class:
  description: QEMU's error class, when QMP refused the command (in the failed result).
  returned: failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._qemu_monitor import ensure_qemu_monitor
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        command=dict(type="raw", required=True),
        hmp=dict(type="bool", default=False),
    )
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, ensure_qemu_monitor)


if __name__ == "__main__":
    main()
