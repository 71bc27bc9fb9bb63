#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cloud_init_seed
short_description: Build a cloud-init NoCloud seed ISO, to a file or into a storage pool volume
version_added: 0.1.0
description:
  - Builds a NoCloud seed ISO (ISO 9660 with Joliet and Rock Ridge, volume label C(cidata)) holding
    C(user-data), C(meta-data) and, when given, C(network-config) and C(vendor-data). Built with the
    pycdlib Python library; no genisoimage or xorriso is needed.
  - Writes the ISO to O(path), or uploads it into the raw volume O(volume) of the existing storage
    pool O(pool) through libvirt's stream API (created, or grown, as needed).
  - Replaces or removes only a seed. An existing file or volume at O(path) or O(volume) that is not an
    ISO 9660 image with volume id C(cidata) (a data disk, say) is refused unless O(force=true).
  - An upload into a volume is read back and compared; a pool too full for the seed fails before anything
    is written, and a short write found by the read-back fails clearly (a volume the task created is removed).
  - Rebuilds only when the content changes. A SHA-256 digest of the files is stored in the ISO's
    application identifier and read back from the file or the volume on the next run; ISO bytes
    themselves differ on every build because of timestamps.
  - With O(seeds), several seeds in one task over one libvirt connection (the kvm_guest role builds every
    guest's seed this way). Every entry is checked before any seed is touched; then they are handled in list
    order, and when one fails the task fails naming it, with RV(results) of the entries before it.
options:
  seeds:
    description:
      - Several seeds, each entry with the keys of a single seed (O(path), or O(pool) and O(volume), and the
        content). An entry's keys that are not set take the task's top-level value of that option.
      - Mutually exclusive with O(path) and O(volume) at the top level; a top-level O(pool) is the pool of every
        entry that names none.
    type: list
    elements: dict
    suboptions:
      path:
        description: As O(path).
        type: path
      pool:
        description: As O(pool).
        type: str
      volume:
        description: As O(volume).
        type: str
      user_data:
        description: As O(user_data).
        type: raw
      meta_data:
        description: As O(meta_data).
        type: raw
      network_config:
        description: As O(network_config).
        type: raw
      vendor_data:
        description: As O(vendor_data).
        type: raw
      state:
        description: As O(state).
        type: str
        choices: [present, absent]
      mode:
        description: As O(mode).
        type: raw
      owner:
        description: As O(owner).
        type: str
      group:
        description: As O(group).
        type: str
      force:
        description: As O(force).
        type: bool
  path:
    description:
      - Where to write the ISO, an absolute path to a file (not a directory or a symbolic link) in an existing directory.
        Mutually exclusive with O(pool) and O(volume).
    type: path
  mode:
    description:
      - Octal mode of the file at O(path), for example V('0600'). Without it a new file gets C(0666) minus the umask
        and a replaced one keeps its mode. user-data often carries credentials; V('0600') keeps it private
        (libvirt's dynamic ownership lets QEMU read it).
    type: raw
  owner:
    description: Owner (name or uid) of the file at O(path).
    type: str
  group:
    description: Group (name or gid) of the file at O(path).
    type: str
  force:
    description:
      - Overwrite (O(state=present)) or delete (O(state=absent)) a file or volume that is not a cloud-init seed.
        A volume that is not a raw seed is deleted and created again as a raw one.
    type: bool
    default: false
  pool:
    description: Storage pool (must exist and be active) holding O(volume).
    type: str
  volume:
    description: Name of the raw volume in O(pool) that holds the ISO.
    type: str
  user_data:
    description:
      - The C(user-data) file. A dict is written as YAML with the C(#cloud-config) header; a string is
        written as it is (a shell script, a MIME multipart, or cloud-config text with its own header).
      - When omitted, an empty cloud-config is written.
    type: raw
  meta_data:
    description:
      - The C(meta-data) file, a dict (written as YAML) or a string.
      - When omitted, it holds only C(instance-id) V(iid-<16 hex digits>) derived from the other files,
        so changing them makes cloud-init treat the guest as a new instance and apply them again.
    type: raw
  network_config:
    description: The C(network-config) file (network config version 1 or 2), a dict (written as YAML) or a string. Left out when omitted.
    type: raw
  vendor_data:
    description: The C(vendor-data) file, a dict (cloud-config, written with its header) or a string. Left out when omitted.
    type: raw
  state:
    description: Whether the seed exists. V(absent) removes the file or deletes the volume, when it is a seed (or with O(force=true)).
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - virtops.kvm._libvirt
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
  idempotent:
    description: When run twice in a row with the same arguments, the second run reports no change.
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows the seed's files as text (user-data may hold secrets; use C(no_log) or leave diff mode off for those).
  platform:
    platforms: posix
requirements:
  - pycdlib
  - PyYAML to write dicts as YAML (without it they are written as JSON, which cloud-init reads as YAML too)
  - libvirt-python for O(pool) and O(volume)
notes:
  - O(mode), O(owner) and O(group) apply to O(path) only.
  - O(uri) is used only with O(pool) and O(volume).
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Seed ISO next to the guest's disk
  virtops.kvm.cloud_init_seed:
    path: /var/lib/libvirt/images/web1-seed.iso
    mode: "0600"
    user_data:
      hostname: web1
      users:
        - name: ops
          ssh_authorized_keys: ["{{ ops_ssh_key }}"]
          sudo: ALL=(ALL) NOPASSWD:ALL
    meta_data:
      instance-id: web1-v1
      local-hostname: web1
    network_config:
      version: 2
      ethernets:
        eth0: {dhcp4: true}

- name: The same seed uploaded into a volume of the default pool
  virtops.kvm.cloud_init_seed:
    pool: default
    volume: web1-seed.iso
    user_data: "{{ lookup('file', 'web1-user-data') }}"
"""

RETURN = r"""
results:
  description:
    - With O(seeds), one entry per seed handled, in list order, each with C(name) (the path, or C(pool/volume)),
      C(changed) and the keys a single seed returns. When an entry fails, the failed result lists the entries before it.
  returned: with O(seeds)
  type: list
  elements: dict
  sample: [{name: guests/web1-seed.iso, changed: true, digest: 3f9c2b7d0e0f4c7f, exists: true}]
failed:
  description: With O(seeds), the name of the entry that failed.
  returned: on failure with O(seeds)
  type: str
digest:
  description: SHA-256 of the seed's files (what is compared between runs).
  returned: when O(state=present), without O(seeds)
  type: str
  sample: 3f9c2b7d0e0f4c7f9d8b0a1e2c3d4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e
files:
  description: The files in the seed.
  returned: when O(state=present), without O(seeds)
  type: list
  elements: str
  sample: [user-data, meta-data, network-config]
path:
  description: Path of the ISO file, or of the volume (V(null) in check mode before the volume exists).
  returned: without O(seeds)
  type: str
pool:
  description: The pool.
  returned: with O(pool), without O(seeds)
  type: str
volume:
  description: The volume's name.
  returned: with O(pool), without O(seeds)
  type: str
exists:
  description: Whether the seed exists after the task.
  returned: without O(seeds)
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._cloud_init_seed import ensure_cloud_init_seed
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module


def main():
    argument_spec = dict(
        path=dict(type="path"),
        pool=dict(type="str"),
        volume=dict(type="str"),
        user_data=dict(type="raw"),
        meta_data=dict(type="raw"),
        network_config=dict(type="raw"),
        vendor_data=dict(type="raw"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        mode=dict(type="raw"),
        owner=dict(type="str"),
        group=dict(type="str"),
        force=dict(type="bool", default=False),
    )
    entry_spec = {name: {key: value for key, value in spec.items() if key != "default"} for name, spec in argument_spec.items()}
    argument_spec["seeds"] = dict(type="list", elements="dict", options=entry_spec)
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_one_of=[("path", "pool", "seeds")],
        mutually_exclusive=[("path", "pool"), ("path", "volume"), ("seeds", "path"), ("seeds", "volume")],
        supports_check_mode=True,
    )
    run_module(module, ensure_cloud_init_seed)


if __name__ == "__main__":
    main()
