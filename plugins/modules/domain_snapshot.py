#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: domain_snapshot
short_description: Create, revert to and delete snapshots of a libvirt guest
version_added: 0.2.0
description:
  - Keeps one named snapshot of a libvirt guest present, absent, or current (the guest reverted to it).
  - Idempotent by name. An existing snapshot is never recreated, even when its other options differ.
  - With O(state=current) the guest is reverted only when it is not already at the snapshot. Already at
    means libvirt's current snapshot of the guest is O(name) and the guest's power state is the one the
    revert would leave (O(state_after), or else the state the snapshot recorded). Disk writes made after
    the last revert are not detected, so they are kept until the snapshot is made current from another one.
  - Deleting an external snapshot is done by libvirt, which merges the overlay back (block commit and
    pivot) when the snapshot is the active layer and refuses what it cannot merge; the refusal is the
    module's message and nothing is changed.
  - Returns the guest's snapshot list; the diff shows that list before and after.
options:
  domain:
    description: The guest.
    type: str
    required: true
  name:
    description: The snapshot's name (no control characters, no slash).
    type: str
    required: true
  state:
    description: V(present) creates it, V(absent) deletes it, V(current) reverts the guest to it.
    type: str
    choices: [present, absent, current]
    default: present
  description:
    description: A description stored with a new snapshot.
    type: str
  kind:
    description:
      - V(internal) keeps disk (and for a running guest, memory) state inside the qcow2 disks.
      - V(external) writes new overlay files on top of the disks; disk-only unless O(memory_file) is set.
    type: str
    choices: [internal, external]
    default: internal
  memory_file:
    description: With O(kind=external), save the running guest's memory to this file too.
    type: path
  disks:
    description:
      - Disks to include or exclude, by target (V(vda)). Disks not listed follow libvirt's default.
      - An external overlay without O(disks[].file) goes next to the disk, as libvirt names it (the disk's
        file name with its suffix replaced by the snapshot's name).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The disk's target.
        type: str
        required: true
      snapshot:
        description: V(no) excludes the disk.
        type: str
        choices: [internal, external, "no"]
      file:
        description: The overlay's path for an external disk snapshot.
        type: path
  quiesce:
    description: Freeze the guest's filesystems through the QEMU guest agent while the snapshot is taken; fails clearly when the guest has no agent channel.
    type: bool
    default: false
  state_after:
    description: With O(state=current), leave the guest V(running) or V(paused) instead of as the snapshot recorded.
    type: str
    choices: [running, paused]
  force:
    description:
      - Allow a revert libvirt considers risky (libvirt's revert force flag), and a revert to an external
        snapshot, which discards what was written to its overlays since.
    type: bool
    default: false
  children:
    description: With O(state=absent), delete the snapshot's whole subtree.
    type: bool
    default: false
extends_documentation_fragment:
  - virtops.kvm._libvirt
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
    details:
      - Predicts the snapshot list the real run returns (a new snapshot's creation time is V(null)).
  diff_mode:
    support: full
  platform:
    platforms: posix
requirements:
  - libvirt-python
  - lxml
seealso:
  - module: virtops.kvm.domain_info
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: A save point before the upgrade
  virtops.kvm.domain_snapshot:
    domain: web1
    name: before-upgrade
    description: before the 2.4 upgrade

- name: Back to it, running
  virtops.kvm.domain_snapshot:
    domain: web1
    name: before-upgrade
    state: current
    state_after: running

- name: An external disk-only snapshot of vda, not of vdb
  virtops.kvm.domain_snapshot:
    domain: web1
    name: backup
    kind: external
    disks:
      - name: vda
        file: /var/lib/libvirt/images/web1.backup.qcow2
      - name: vdb
        snapshot: "no"

- name: Delete it and everything below it
  virtops.kvm.domain_snapshot:
    domain: web1
    name: before-upgrade
    state: absent
    children: true
"""

RETURN = r"""
action:
  description: V(created), V(reverted), V(deleted) or V(none).
  returned: always
  type: str
snapshots:
  description: The guest's snapshots after the run (predicted in check mode), oldest first.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name.
      type: str
    parent:
      description: The parent snapshot's name (V(null) for a root).
      type: str
    creation_time:
      description: Seconds since the epoch (V(null) for a snapshot check mode predicts).
      type: int
    state:
      description: The guest state the snapshot recorded (C(running), C(shutoff), C(disk-snapshot)...).
      type: str
    kind:
      description: C(internal) or C(external).
      type: str
    description:
      description: Its description.
      type: str
    current:
      description: Whether it is libvirt's current snapshot of the guest.
      type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._domain_snapshot import ensure_domain_snapshot
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module
from ansible_collections.virtops.kvm.plugins.module_utils._xml import require_lxml

DISK_OPTIONS = dict(
    name=dict(type="str", required=True),
    snapshot=dict(type="str", choices=["internal", "external", "no"]),
    file=dict(type="path"),
)


def main():
    argument_spec = dict(
        domain=dict(type="str", required=True),
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent", "current"]),
        description=dict(type="str"),
        kind=dict(type="str", default="internal", choices=["internal", "external"]),
        memory_file=dict(type="path"),
        disks=dict(type="list", elements="dict", default=[], options=DISK_OPTIONS),
        quiesce=dict(type="bool", default=False),
        state_after=dict(type="str", choices=["running", "paused"]),
        force=dict(type="bool", default=False),
        children=dict(type="bool", default=False),
    )
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_lxml(module)
    run_module(module, ensure_domain_snapshot)


if __name__ == "__main__":
    main()
