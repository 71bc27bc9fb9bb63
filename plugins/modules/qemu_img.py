#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_img
short_description: Disk images outside storage pools with qemu-img (create, convert, resize, LUKS keyslots, bitmaps)
version_added: 0.1.0
description:
  - Runs one O(action) on the image at O(path). Every action compares the image as
    C(qemu-img info --output=json --force-share) reports it with the request and only runs qemu-img
    for the difference, so running a task twice changes nothing the second time. Check mode makes the
    same comparison and stops before qemu-img changes anything.
  - For volumes inside libvirt storage pools use M(virtops.kvm.volume) instead.
  - To read an image without changing it, use M(virtops.kvm.qemu_img_info).
  - Passphrases reach qemu-img only through C(--object secret,file=/proc/<pid>/fd/<n>) of an anonymous
    in-memory file (memfd) the module holds; never on disk, never on a command line, and gone with the
    process however it ends (C(kill -9) included).
  - The whole request is validated before anything changes, in check mode too (sizes, formats, and the
    options a format takes). Input only qemu-img can judge (a size too large for the format, an extent
    size hint it refuses) is tried by letting qemu-img create a throwaway image with the same settings,
    without preallocation, in a private temporary directory beside O(path) that is removed at once.
options:
  path:
    description:
      - The image, an absolute path. For O(action=convert), the destination.
      - For O(action=create) and O(action=convert), O(path) must not be a symbolic link (the module does not
        write through links) and its directory must exist.
    type: path
    required: true
  action:
    description:
      - V(create) creates the image unless one with the same format, size, backing file, compression
        type and encryption is already there. An existing image that differs is an error unless
        O(force=true), which recreates it (its data is lost). O(preallocation), O(extent_size_hint)
        and O(cluster_size) only apply when the image is created.
      - V(convert) writes O(source) converted to O(format) at O(path), unless O(path) already has that
        format, the same virtual size and the same content per C(qemu-img compare). A destination that
        differs is replaced; qemu-img writes into a private directory (mode 0700, made with C(mkdtemp))
        beside O(path), and the result is renamed into place, keeping the replaced file's mode and owner.
      - V(resize) sets the virtual size to O(size); shrinking needs O(allow_shrink=true).
      - V(amend) adds (O(keyslot_state=active)) or removes (O(keyslot_state=inactive)) a LUKS keyslot
        of a C(luks) image or an encrypted qcow2 image.
      - V(bitmap) adds, removes, enables, disables a persistent dirty bitmap of a qcow2 image, and
        merges other bitmaps into it (O(merge_from)).
      - The former V(info) is the module M(virtops.kvm.qemu_img_info).
    type: str
    choices: [create, convert, resize, amend, bitmap]
    required: true
  format:
    description:
      - Image format to create (O(action=create)) or convert to (O(action=convert)). Defaults to V(qcow2).
    type: str
    choices: [qcow2, raw, luks, vmdk, vdi, vhdx, vpc, qed]
  size:
    description:
      - Virtual size for O(action=create) and O(action=resize), in bytes or as a whole number with a unit.
        V(K), V(M), V(G), V(T), V(P), V(E) and V(KiB), V(MiB)... are powers of 1024 (V(10G) = V(10GiB) = 10 x 1024^3);
        V(KB), V(MB), V(GB)... are powers of 1000 (V(10GB) = 10 x 1000^3), as libvirt reads them.
      - qemu-img rounds a size up to whole 512-byte sectors.
      - With O(backing_file) and no O(size), the new image takes the backing file's size.
    type: str
  backing_file:
    description:
      - Backing file of a new qcow2 overlay (O(action=create)). A relative path is relative to O(path)'s
        directory and is stored as given in the overlay.
    type: path
  backing_format:
    description: Format of O(backing_file); read from the backing file when omitted.
    type: str
  compression_type:
    description: qcow2 compression type for compressed clusters (O(action=create), O(action=convert)).
    type: str
    choices: [zlib, zstd]
  preallocation:
    description:
      - Preallocation mode for O(action=create), O(action=convert) and growing with O(action=resize).
      - V(metadata) is for qcow2 and luks images only.
    type: str
    choices: ["off", metadata, falloc, full]
  extent_size_hint:
    description: Extent size hint for the image file on creation (for example V(1M)); not visible in C(qemu-img info) afterwards.
      Same units as O(size).
    type: str
  cluster_size:
    description: qcow2 or qed cluster size on creation (for example V(64K)), a power of two from 512 bytes to 2 MiB.
    type: str
  encrypt:
    description:
      - Create a qcow2 image with LUKS encryption (O(action=create)), with O(secret) as its first passphrase.
      - A O(format=luks) image is always encrypted.
    type: bool
    default: false
  secret:
    description:
      - A passphrase that opens the encrypted image. The first passphrase for O(action=create); the
        authenticating passphrase for O(action=amend) and for resizing an encrypted image.
    type: str
  new_secret:
    description: The passphrase to add to a keyslot (O(action=amend), O(keyslot_state=active)).
    type: str
  old_secret:
    description:
      - The passphrase to remove (O(action=amend), O(keyslot_state=inactive)); every keyslot it opens is
        erased. When O(secret) is not given, O(old_secret) also authenticates.
    type: str
  keyslot:
    description:
      - LUKS keyslot (0 to 7). With O(keyslot_state=active), where O(new_secret) goes (by default the first
        free one); with O(keyslot_state=inactive), the keyslot to erase (instead of O(old_secret)).
    type: int
  keyslot_state:
    description:
      - For O(action=amend). V(active) makes sure O(new_secret) opens the image, adding it to a keyslot when
        it does not. qemu-img cannot tell which keyslot a passphrase opens, so a passphrase that already opens
        the image counts as present whatever O(keyslot) says.
      - V(inactive) makes sure O(old_secret) no longer opens the image, or that O(keyslot) is empty.
        Removing the last active keyslot is refused unless O(force=true).
    type: str
    choices: [active, inactive]
    default: active
  iter_time:
    description: Milliseconds of PBKDF iterations for a new LUKS keyslot (O(action=create), O(action=amend)), 1 to 3600000; qemu's default is 2000.
    type: int
  source:
    description: Image to convert from (O(action=convert)).
    type: path
  source_format:
    description: Format of O(source); read from the file when omitted (and checked when given).
    type: str
  compress:
    description: Write compressed clusters (C(qemu-img convert -c)); only formats that support it (qcow2, vmdk).
    type: bool
    default: false
  allow_shrink:
    description: Allow O(action=resize) to make the image smaller, discarding data past the new end.
    type: bool
    default: false
  force:
    description:
      - With O(action=create), recreate an existing image that differs (its data is lost).
      - With O(action=amend), allow removing the last active keyslot (the data becomes unreadable).
    type: bool
    default: false
  bitmap:
    description: Name of the persistent bitmap (O(action=bitmap)).
    type: str
  bitmap_state:
    description:
      - V(present) makes sure the bitmap exists (a new one is enabled); V(enabled) and V(disabled) also set
        whether it records writes; V(absent) removes it.
    type: str
    choices: [present, absent, enabled, disabled]
    default: present
  granularity:
    description: Granularity of a new bitmap (for example V(64K)), a power of two from 512 bytes to 2 GiB; an existing bitmap with another
      granularity is an error.
    type: str
  merge_from:
    description:
      - Bitmaps of the same image to merge into O(bitmap) (its dirty bits become the union).
      - Idempotent by content. The module reads the bitmaps' dirty ranges through a read-only C(qemu-nbd)
        export and merges only a source whose dirty ranges O(bitmap) does not already cover.
    type: list
    elements: str
extends_documentation_fragment:
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
      - The diff shows the image's format, size, backing file, compression type, encryption, active keyslots and bitmaps as JSON.
  platform:
    platforms: posix
requirements:
  - qemu-img and, for O(merge_from), qemu-nbd (Debian/Ubuntu package C(qemu-utils))
  - Linux for passing passphrases in memory (memfd); elsewhere they go to 0600 files in a private 0700 temporary directory
seealso:
  - module: virtops.kvm.qemu_img_info
  - module: virtops.kvm.volume
notes:
  - Actions that write (create over an existing image, resize, amend, bitmap) need the image not to be
    in use by a running guest; qemu-img's own lock error is returned when it is.
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: A 20 GiB qcow2 image with zstd compression
  virtops.kvm.qemu_img:
    path: /srv/images/base.qcow2
    action: create
    size: 20G
    compression_type: zstd

- name: An overlay on it (copy-on-write, O(1) to create)
  virtops.kvm.qemu_img:
    path: /srv/images/guest1.qcow2
    action: create
    backing_file: /srv/images/base.qcow2

- name: Convert a raw image to compressed qcow2 (skipped when the destination is already identical)
  virtops.kvm.qemu_img:
    source: /srv/images/disk.raw
    path: /srv/images/disk.qcow2
    action: convert
    format: qcow2
    compress: true

- name: Grow an image
  virtops.kvm.qemu_img:
    path: /srv/images/guest1.qcow2
    action: resize
    size: 40G

- name: Add a second passphrase to an encrypted qcow2
  virtops.kvm.qemu_img:
    path: /srv/images/secret.qcow2
    action: amend
    secret: "{{ vault_old_passphrase }}"
    new_secret: "{{ vault_new_passphrase }}"

- name: Then remove the old one
  virtops.kvm.qemu_img:
    path: /srv/images/secret.qcow2
    action: amend
    keyslot_state: inactive
    secret: "{{ vault_new_passphrase }}"
    old_secret: "{{ vault_old_passphrase }}"

- name: A disabled bitmap holding what changed since the last two backups
  virtops.kvm.qemu_img:
    path: /srv/images/guest1.qcow2
    action: bitmap
    bitmap: since-full
    bitmap_state: disabled
    merge_from: [backup-1, backup-2]
"""

RETURN = r"""
exists:
  description: Whether the image exists after the task.
  returned: always
  type: bool
image:
  description: C(qemu-img info --output=json --force-share) of the image after the task (before it, in check mode); empty when there is none.
  returned: always
  type: dict
  sample: {virtual-size: 21474836480, filename: /srv/images/base.qcow2, format: qcow2, actual-size: 200704,
           format-specific: {type: qcow2, data: {compat: "1.1", compression-type: zstd}}}
summary:
  description: The facts the module compares, from RV(image).
  returned: always
  type: dict
  sample: {format: qcow2, virtual_size: 21474836480, backing_file: null, backing_format: null, encrypted: false,
           compression_type: zstd, bitmaps: {since-full: {granularity: 65536, enabled: false}}}
reasons:
  description: Why O(action=convert) converted (empty when the destination was already identical).
  returned: when O(action=convert)
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._image import FORMATS
from ansible_collections.virtops.kvm.plugins.module_utils._qemu_img import ACTIONS, PREALLOCATIONS, ensure_qemu_img
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module


def main():
    argument_spec = dict(
        path=dict(type="path", required=True),
        action=dict(type="str", choices=list(ACTIONS), required=True),
        format=dict(type="str", choices=list(FORMATS)),
        size=dict(type="str"),
        backing_file=dict(type="path"),
        backing_format=dict(type="str"),
        compression_type=dict(type="str", choices=["zlib", "zstd"]),
        preallocation=dict(type="str", choices=list(PREALLOCATIONS)),
        extent_size_hint=dict(type="str"),
        cluster_size=dict(type="str"),
        encrypt=dict(type="bool", default=False),
        secret=dict(type="str", no_log=True),
        new_secret=dict(type="str", no_log=True),
        old_secret=dict(type="str", no_log=True),
        keyslot=dict(type="int", no_log=False),
        keyslot_state=dict(type="str", choices=["active", "inactive"], default="active", no_log=False),
        iter_time=dict(type="int"),
        source=dict(type="path"),
        source_format=dict(type="str"),
        compress=dict(type="bool", default=False),
        allow_shrink=dict(type="bool", default=False),
        force=dict(type="bool", default=False),
        bitmap=dict(type="str"),
        bitmap_state=dict(type="str", choices=["present", "absent", "enabled", "disabled"], default="present"),
        granularity=dict(type="str"),
        merge_from=dict(type="list", elements="str"),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_if=[
            ("action", "convert", ("source",)),
            ("action", "resize", ("size",)),
            ("action", "bitmap", ("bitmap",)),
        ],
        supports_check_mode=True,
    )
    run_module(module, ensure_qemu_img)


if __name__ == "__main__":
    main()
