#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_img_info
short_description: Read a disk image's format, size, backing chain, encryption and bitmaps with qemu-img
version_added: 0.1.0
description:
  - Reports what C(qemu-img info --output=json --force-share) says about the image at O(path), and the
    facts M(virtops.kvm.qemu_img) compares (format, virtual size, backing file, compression type,
    encryption, active LUKS keyslots, persistent bitmaps). Never changes anything.
  - C(--force-share) reads an image a running guest holds open; what it reports may then be slightly
    out of date.
  - For volumes inside libvirt storage pools, M(virtops.kvm.volume) reports libvirt's view.
options:
  path:
    description: The image. A missing file is not an error; RV(exists) is V(false) then.
    type: path
    required: true
  backing_chain:
    description: Also read every backing file (C(--backing-chain)) and return them in RV(chain).
    type: bool
    default: false
extends_documentation_fragment:
  - virtops.kvm._attributes.INFO_MODULE
attributes:
  idempotent:
    description: When run twice in a row, the second run reports what the first did and changes nothing.
    support: full
  platform:
    platforms: posix
requirements:
  - qemu-img (Debian/Ubuntu package C(qemu-utils))
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Read an image
  virtops.kvm.qemu_img_info:
    path: /srv/images/guest1.qcow2
  register: guest1_image

- name: Grow it only when it is smaller than 40 GiB
  virtops.kvm.qemu_img:
    path: /srv/images/guest1.qcow2
    action: resize
    size: 40G
  when: guest1_image.summary.virtual_size < 40 * 1024 ** 3

- name: The overlay and everything below it
  virtops.kvm.qemu_img_info:
    path: /srv/images/guest1.qcow2
    backing_chain: true
  register: chain
"""

RETURN = r"""
exists:
  description: Whether there is a file at O(path).
  returned: always
  type: bool
image:
  description: C(qemu-img info --output=json --force-share) of the image; empty when there is none.
  returned: always
  type: dict
  sample: {virtual-size: 21474836480, filename: /srv/images/base.qcow2, format: qcow2, actual-size: 200704,
           format-specific: {type: qcow2, data: {compat: "1.1", compression-type: zstd}}}
summary:
  description: The facts M(virtops.kvm.qemu_img) compares, from RV(image); empty when there is no image.
  returned: always
  type: dict
  sample: {format: qcow2, virtual_size: 21474836480, backing_file: null, backing_format: null, encrypted: false,
           compression_type: zstd, bitmaps: {since-full: {granularity: 65536, enabled: false}}}
chain:
  description: The image and each backing file below it, top first, each with its C(image) and C(summary).
  returned: when O(backing_chain=true)
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._qemu_img_info import ensure_qemu_img_info
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            backing_chain=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    run_module(module, ensure_qemu_img_info, read_only=True)


if __name__ == "__main__":
    main()
