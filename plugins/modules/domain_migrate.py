#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: domain_migrate
short_description: Migrate a libvirt guest to another host, live or offline
version_added: 0.2.0
description:
  - Moves one guest from the libvirt host at O(uri) to the one at O(dest_uri), peer to peer (the source's
    libvirt daemon connects to O(dest_uri), so that URI must work from the source host too).
  - Idempotent. A guest already running at the destination and absent or only defined at the source is
    left alone (V(ok)); with O(offline=true), a guest defined at the destination is.
  - Before anything changes (and in check mode, which stops there), the destination is checked. It must be
    reachable. The guest's CPU must pass libvirt's CPU comparison against what the destination's hypervisor
    offers (a CPU model or feature the destination's libvirt does not know counts as incompatible). A
    host-passthrough or maximum CPU is what the source's hypervisor offers, so the destination must offer that
    mode, and the source's host-model CPU must pass the same comparison there (libvirt itself would move such a
    guest to a host with fewer CPU features, which the guest would lose while it runs). Each disk must be present
    at the destination (in a storage pool that covers its directory), or O(copy_storage) must be requested with
    such a pool to create the copy in. The destination must have the guest's memory free. Every problem found
    is in the message and nothing is changed.
  - A guest running at both ends, a live migration of a stopped guest and an offline migration of a running
    one are refused with a message.
  - A failed migration leaves the guest at the source (libvirt aborts it); the message says its state there.
options:
  name:
    description: The guest.
    type: str
    required: true
  dest_uri:
    description: The destination's libvirt URI (V(qemu+ssh://HOST/system), V(qemu+tls://HOST/system) or V(qemu+tcp://HOST/system)).
    type: str
    required: true
  live:
    description: Keep the guest running while its memory is copied. V(false) pauses it for the copy.
    type: bool
    default: true
  offline:
    description: Move only the definition of a stopped guest (needs O(persistent=true)).
    type: bool
    default: false
  postcopy:
    description:
      - Start in pre-copy, then switch to post-copy (the guest runs at the destination while the rest of its
        memory follows on demand) after O(postcopy_after) seconds or, without it, when the first pass over memory is
        over and pre-copy has not converged.
      - A failure of the network during post-copy loses the guest; use it where that risk is accepted.
    type: bool
    default: false
  postcopy_after:
    description: Seconds of pre-copy before the switch to post-copy (V(0) switches at once).
    type: int
  auto_converge:
    description: Let QEMU slow the guest's vCPUs down when pre-copy does not converge.
    type: bool
    default: false
  bandwidth_mib:
    description: The migration's bandwidth limit in MiB/s (V(0) or unset leaves libvirt's default).
    type: int
  copy_storage:
    description:
      - V(none) expects the disks at the same paths at the destination (shared storage).
      - V(all) copies every disk; V(incremental) copies only what the disks' top layers hold, for disks whose backing
        files exist at the destination. libvirt creates the copies inside a storage pool that covers their directory.
    type: str
    choices: [none, all, incremental]
    default: none
  persistent:
    description: Define the guest at the destination (else it runs there without a definition).
    type: bool
    default: true
  undefine_source:
    description: Remove the guest's definition from the source after the migration.
    type: bool
    default: false
  tunnelled:
    description: Carry the migration stream inside the libvirt connection instead of a direct QEMU connection.
    type: bool
    default: false
  compressed:
    description: Compress the memory pages sent again (QEMU's xbzrle).
    type: bool
    default: false
  timeout:
    description: Seconds after which O(timeout_action) is taken if the migration still runs (unset or V(0) waits for it).
    type: int
  timeout_action:
    description:
      - V(abort) cancels the migration (the guest keeps running at the source, the module fails).
      - V(suspend) pauses the guest so the migration completes; it runs again at the destination.
      - V(postcopy) switches to post-copy.
    type: str
    choices: [abort, suspend, postcopy]
    default: abort
extends_documentation_fragment:
  - virtops.kvm._libvirt
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
    details:
      - Runs every check against both hosts and returns what the migration would do (RV(flags), RV(checks)) and the
        states it would leave; RV(stats) is V(null).
  diff_mode:
    support: full
    details:
      - The guest's state at the source and at the destination, before and after.
  platform:
    platforms: posix
notes:
  - The libvirt connection to O(dest_uri) is opened from where the module runs (for the checks and the result)
    and by the source's libvirt daemon (for the migration).
requirements:
  - libvirt-python
  - lxml
seealso:
  - module: virtops.kvm.domain
  - module: virtops.kvm.domain_info
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Move web1 to hv2 while it runs
  virtops.kvm.domain_migrate:
    name: web1
    dest_uri: qemu+ssh://hv2.example.com/system
    undefine_source: true

- name: Move db1 without shared storage, switching to post-copy after 30 s
  virtops.kvm.domain_migrate:
    name: db1
    dest_uri: qemu+tls://hv3.example.com/system
    copy_storage: all
    postcopy: true
    postcopy_after: 30
    bandwidth_mib: 500

- name: Give up after ten minutes rather than keep a busy guest migrating
  virtops.kvm.domain_migrate:
    name: build1
    dest_uri: qemu+ssh://hv2.example.com/system
    auto_converge: true
    timeout: 600
    timeout_action: abort

- name: Move the definition of a stopped guest
  virtops.kvm.domain_migrate:
    name: spare1
    dest_uri: qemu+ssh://hv2.example.com/system
    offline: true
    undefine_source: true
"""

RETURN = r"""
action:
  description: V(migrated) (also in check mode, for what it would do) or V(none).
  returned: always
  type: str
flags:
  description: The names of the libvirt migration flags used (or that would be used).
  returned: always
  type: list
  elements: str
  sample: [live, peer2peer, persist_dest, abort_on_error]
checks:
  description: What was checked at the destination and found (empty when nothing had to move).
  returned: always
  type: list
  elements: str
source_state:
  description: The guest's state at the source after the run (predicted in check mode), V(null) when it is not defined there.
  returned: always
  type: str
destination_state:
  description: The guest's state at the destination after the run (predicted in check mode).
  returned: always
  type: str
stats:
  description: Figures of the completed migration job from libvirt (V(null) when nothing moved and in check mode).
  returned: always
  type: dict
  contains:
    downtime_ms:
      description: How long the guest was paused for the switch-over.
      type: int
    total_time_ms:
      description: The migration's duration.
      type: int
    data_transferred_bytes:
      description: Everything sent (memory and disks).
      type: int
    memory_transferred_bytes:
      description: Memory sent.
      type: int
    disk_transferred_bytes:
      description: Disk data sent (with O(copy_storage)).
      type: int
    memory_iterations:
      description: Passes over memory.
      type: int
    postcopy_requests:
      description: Pages the destination requested during post-copy, when libvirt reports it.
      type: int
    postcopy_used:
      description: Whether the migration switched to post-copy.
      type: bool
    timeout_action:
      description: The O(timeout_action) taken, or V(null).
      type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._domain_migrate import ensure_domain_migrate
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module
from ansible_collections.virtops.kvm.plugins.module_utils._xml import require_lxml


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        dest_uri=dict(type="str", required=True),
        live=dict(type="bool", default=True),
        offline=dict(type="bool", default=False),
        postcopy=dict(type="bool", default=False),
        postcopy_after=dict(type="int"),
        auto_converge=dict(type="bool", default=False),
        bandwidth_mib=dict(type="int"),
        copy_storage=dict(type="str", default="none", choices=["none", "all", "incremental"]),
        persistent=dict(type="bool", default=True),
        undefine_source=dict(type="bool", default=False),
        tunnelled=dict(type="bool", default=False),
        compressed=dict(type="bool", default=False),
        timeout=dict(type="int"),
        timeout_action=dict(type="str", default="abort", choices=["abort", "suspend", "postcopy"]),
    )
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_lxml(module)
    run_module(module, ensure_domain_migrate)


if __name__ == "__main__":
    main()
