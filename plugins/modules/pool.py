#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pool
short_description: libvirt storage pools
version_added: 0.1.0
description:
  - Defines a libvirt storage pool from its XML, builds it, starts or stops it, sets autostart, and
    removes it.
  - An existing pool is redefined only when O(xml) is not already contained in libvirt's definition
    (libvirt adds the uuid, sizes and target permissions; sizes compare in bytes whatever their unit).
    Redefining an active pool takes effect when it is next started; the module then returns
    RV(pending_restart=true).
  - Removing a pool (O(state=absent)) never deletes its data unless O(delete_on_absent=true).
  - A pool this run defined is undefined again when building or starting it fails, so the next run starts over.
options:
  name:
    description: Name of the pool.
    type: str
    required: true
  xml:
    description:
      - The pool's XML (C(<pool type='dir'>...</pool>)). Needed to create a pool; optional for an existing one.
      - Its C(<name>) must be O(name); it is added when missing. O(name) may not contain C(/).
      - The target path is compared without a trailing C(/); C(<capacity>), C(<allocation>) and C(<available>)
        are what libvirt reports, not configuration, and are ignored with a warning.
    type: str
  state:
    description:
      - V(present) defined (started or not), V(active) defined and started, V(inactive) defined and stopped,
        V(absent) stopped and undefined.
    type: str
    choices: [present, active, inactive, absent]
    default: present
  autostart:
    description: Whether libvirtd starts the pool at boot. Unchanged when not set.
    type: bool
  build:
    description:
      - Build the pool when it is first defined (create the target directory, the volume group or the
        file system). Never overwrites existing data (libvirt's C(--no-overwrite)).
    type: bool
    default: false
  delete_on_absent:
    description:
      - With O(state=absent), delete the pool's volumes and its storage (directory, volume group...) before
        undefining it. By default the data stays where it is.
    type: bool
    default: false
  delete_mounted:
    description:
      - With O(delete_on_absent=true), a directory pool whose target directory is a mount point is refused
        before anything is deleted, unless this is V(true). Then its volumes are deleted and the mount point
        itself is kept.
      - Only checked when the module runs on the hypervisor (a local O(uri)); for a remote one a warning says
        it could not be checked.
    type: bool
    default: false
extends_documentation_fragment:
  - virtops.kvm._libvirt
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - Two diffs, the pool XML and its state (state, autostart).
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second run reports no change.
    support: full
  platform:
    platforms: posix
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: A directory pool, built, started and started at boot
  virtops.kvm.pool:
    name: guests
    xml: |
      <pool type='dir'>
        <target><path>/srv/guests</path></target>
      </pool>
    build: true
    state: active
    autostart: true

- name: An LVM volume group on a disk (formats it only if the disk is empty)
  virtops.kvm.pool:
    name: vg-guests
    xml: |
      <pool type='logical'>
        <source><device path='/dev/sdb'/><name>vg-guests</name><format type='lvm2'/></source>
        <target><path>/dev/vg-guests</path></target>
      </pool>
    build: true

- name: Remove a pool, keeping its files
  virtops.kvm.pool:
    name: guests
    state: absent
"""

RETURN = r"""
pool:
  description: The pool after the run (empty when absent).
  returned: always
  type: dict
  sample: {name: guests, uuid: 0b6f5e1c-3f0c-4f4c-9d4c-0d4c5b0f6a11, type: dir, state: active, autostart: true, persistent: true,
           target_path: /srv/guests, capacity: 107374182400, allocation: 1073741824, available: 106300440576}
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [define, build, start, autostart]
pending_restart:
  description: The pool was redefined while active; the new definition applies when it is next started.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._pool import STATES, ensure_pool
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module
from ansible_collections.virtops.kvm.plugins.module_utils._xml import require_lxml


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        xml=dict(type="str"),
        state=dict(type="str", default="present", choices=list(STATES)),
        autostart=dict(type="bool"),
        build=dict(type="bool", default=False),
        delete_on_absent=dict(type="bool", default=False),
        delete_mounted=dict(type="bool", default=False),
    )
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_lxml(module)
    run_module(module, ensure_pool)


if __name__ == "__main__":
    main()
