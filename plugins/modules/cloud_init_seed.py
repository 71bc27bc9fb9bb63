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
  - Rebuilds only when the content changes. A SHA-256 digest of the files is stored in the ISO's
    application identifier and read back from the file or the volume on the next run; ISO bytes
    themselves differ on every build because of timestamps.
options:
  path:
    description: Where to write the ISO. Mutually exclusive with O(pool) and O(volume).
    type: path
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
    description: Whether the seed exists. V(absent) removes the file or deletes the volume.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - ansible.builtin.files
  - virtops.kvm._libvirt
  - virtops.kvm._attributes
attributes:
  check_mode:
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
  - The file attributes (O(mode), O(owner), ...) apply to O(path) only. A new file's mode follows the umask when O(mode) is not set;
    user-data often carries credentials, so set O(mode=0600) (libvirt's dynamic ownership lets QEMU read it).
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
digest:
  description: SHA-256 of the seed's files (what is compared between runs).
  returned: when O(state=present)
  type: str
  sample: 3f9c2b7d0e0f4c7f9d8b0a1e2c3d4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e
files:
  description: The files in the seed.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [user-data, meta-data, network-config]
path:
  description: Path of the ISO file, or of the volume (V(null) in check mode before the volume exists).
  returned: always
  type: str
pool:
  description: The pool.
  returned: with O(pool)
  type: str
volume:
  description: The volume's name.
  returned: with O(pool)
  type: str
exists:
  description: Whether the seed exists after the task.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._cloud_init import run_cloud_init_seed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import run_module
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS


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
    )
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_one_of=[("path", "pool")],
        mutually_exclusive=[("path", "pool"), ("path", "volume")],
        required_together=[("pool", "volume")],
        add_file_common_args=True,
        supports_check_mode=True,
    )
    run_module(module, run_cloud_init_seed)


if __name__ == "__main__":
    main()
