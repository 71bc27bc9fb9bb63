#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: volume
short_description: libvirt storage volumes
version_added: 0.1.0
description:
  - Creates a volume in a libvirt storage pool, empty, as a clone of another volume, as a qcow2 overlay on a
    base image, or filled from a file or URL; grows it; encrypts it with LUKS; wipes and deletes it.
  - The source (O(clone_from), O(backing_store), O(upload_from)) is only used when the volume is created;
    an existing volume is compared by capacity, format, backing store and encryption.
  - Uploads stream through libvirt (C(virStorageVolUpload)) in chunks and are checked against O(checksum)
    while they stream; then the volume is read back (C(virStorageVolDownload)) and hashed again, because
    libvirt does not report a full file system on every pool. On a mismatch, or when any step after
    creating the volume fails, the new volume is deleted again, so nothing half-made is left behind.
  - With O(volumes), several volumes in one task over one libvirt connection (the kvm_guest role makes every
    guest's overlay this way). Every entry is checked before any volume is touched; then they are handled in
    list order, and when one fails the task fails naming it, with RV(results) of the entries before it.
options:
  pool:
    description:
      - Name of the storage pool. It must exist and be active.
      - Required for a single volume; with O(volumes), the pool of every entry that names none.
    type: str
  name:
    description:
      - Name of the volume in the pool (for a directory pool, the file name). It may not contain C(/).
      - Required unless O(volumes) is given; mutually exclusive with it.
    type: str
  volumes:
    description:
      - Several volumes, each entry with the keys of a single volume. An entry's keys that are not set take the
        task's top-level value of that option (its default when the task does not set it).
    type: list
    elements: dict
    suboptions:
      pool:
        description: As O(pool).
        type: str
      name:
        description: As O(name).
        type: str
        required: true
      state:
        description: As O(state).
        type: str
        choices: [present, absent]
      capacity:
        description: As O(capacity).
        type: str
      allow_shrink:
        description: As O(allow_shrink).
        type: bool
      format:
        description: As O(format).
        type: str
        choices: [qcow2, raw]
      clone_from:
        description: As O(clone_from).
        type: str
      backing_store:
        description: As O(backing_store).
        type: str
      upload_from:
        description: As O(upload_from).
        type: str
      checksum:
        description: As O(checksum).
        type: str
      validate_certs:
        description: As O(validate_certs).
        type: bool
      timeout:
        description: As O(timeout).
        type: int
      encryption:
        description: As O(encryption).
        type: str
        choices: [none, luks]
      secret:
        description: As O(secret).
        type: str
      wipe:
        description: As O(wipe).
        type: bool
  state:
    description: Whether the volume exists.
    type: str
    choices: [present, absent]
    default: present
  capacity:
    description:
      - Virtual size, a number of bytes or a number with a unit (V(10GiB), V(512M), V(1G) are binary; V(1GB) is 10^9 bytes).
      - Needed to create an empty volume. For sources, defaults to the source's size and may not be smaller.
      - A larger value than the volume has grows it; a smaller one fails unless O(allow_shrink=true).
      - At least 512 bytes; at most 2 PiB for qcow2 (qemu's limit with 64 KiB clusters) and 8 EiB otherwise.
    type: str
  allow_shrink:
    description: Allow O(capacity) to shrink an existing volume (data past the new end is lost).
    type: bool
    default: false
  format:
    description:
      - Volume format. Defaults to V(qcow2) for new empty volumes and overlays, the source's format for clones,
        and the file's own format (probed from its header) for uploads.
      - An existing volume's format cannot change; a different value fails.
    type: str
    choices: [qcow2, raw]
  clone_from:
    description: Create the volume as a full copy of this volume (a name in O(pool) or the absolute path of a volume in any pool).
    type: str
  backing_store:
    description:
      - Create the volume as a qcow2 overlay on this base image (a volume name in O(pool) or an absolute path).
        The base is not copied; it must not change while overlays use it.
    type: str
  upload_from:
    description:
      - Fill the new volume from a file on the hypervisor (absolute path) or an C(http://), C(https://) or
        C(ftp://) URL, streamed through libvirt.
      - While the upload runs, an empty volume C(<name>.virtops-incomplete) in the same pool marks it unfinished;
        it is deleted after the read-back. A run cut off where the volume cannot be deleted (libvirtd or the
        module killed) leaves both, and the next run deletes the remainder and uploads again.
    type: str
  checksum:
    description:
      - Checksum of O(upload_from) as C(<algorithm>:<hex digest>), e.g. C(sha256:9f86d0...). A bare digest is sha256.
      - The algorithm is one of md5, sha1, sha224, sha256, sha384, sha512, sha3_224, sha3_256, sha3_384, sha3_512,
        blake2b, blake2s. A blank value, an empty digest, an unknown or variable-length algorithm (shake_128) or a
        digest of the wrong length fails before anything changes, also in check mode.
    type: str
  validate_certs:
    description: Verify TLS certificates when O(upload_from) is an https URL.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for the O(upload_from) server to answer.
    type: int
    default: 30
  encryption:
    description:
      - V(luks) creates a LUKS-encrypted volume whose passphrase is the libvirt secret O(secret).
        Only for new empty volumes; an existing volume with other encryption fails.
    type: str
    choices: [none, luks]
  secret:
    description: The passphrase secret for O(encryption=luks), by uuid or by usage id (e.g. the volume path it was created for).
    type: str
  wipe:
    description: With O(state=absent), overwrite the volume's data with zeroes before deleting it.
    type: bool
    default: false
extends_documentation_fragment:
  - virtops.kvm._libvirt
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
    details:
      - In check mode, O(upload_from) is not read, so its size and format are not known.
  diff_mode:
    support: full
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second run reports no change.
    support: full
  platform:
    platforms: posix
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: An empty 20 GiB qcow2 disk
  virtops.kvm.volume:
    pool: guests
    name: web1-data.qcow2
    capacity: 20GiB

- name: A Debian cloud image, downloaded once and checked
  virtops.kvm.volume:
    pool: guests
    name: debian-12.qcow2
    upload_from: https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2
    checksum: "sha512:{{ debian_image_sha512 }}"

- name: A guest disk as an overlay on that image (O(1) copy), grown to 30 GiB
  virtops.kvm.volume:
    pool: guests
    name: web1.qcow2
    backing_store: debian-12.qcow2
    capacity: 30GiB

- name: An encrypted volume
  virtops.kvm.volume:
    pool: guests
    name: vault.img
    format: raw
    capacity: 1GiB
    encryption: luks
    secret: 5f0e9a1a-3c2b-4e57-8a7e-1d1d6f7b2a10

- name: Remove a volume, zeroing it first
  virtops.kvm.volume:
    pool: guests
    name: vault.img
    state: absent
    wipe: true
"""

RETURN = r"""
results:
  description:
    - With O(volumes), one entry per volume handled, in list order, each with C(name) (C(pool/name)),
      C(changed), C(actions), C(volume) and, for uploads, C(checksum). When an entry fails, the failed
      result lists the entries before it.
  returned: with O(volumes)
  type: list
  elements: dict
  sample: [{name: guests/web1.qcow2, changed: true, actions: [create], volume: {name: web1.qcow2, pool: guests}}]
failed:
  description: With O(volumes), the C(pool/name) of the entry that failed.
  returned: on failure with O(volumes)
  type: str
volume:
  description: The volume after the run (before it, in check mode); empty when absent.
  returned: without O(volumes)
  type: dict
  contains:
    name:
      description: Volume name.
      type: str
    pool:
      description: Pool name.
      type: str
    key:
      description: libvirt's key for the volume.
      type: str
    path:
      description: Path of the volume on the hypervisor.
      type: str
    capacity:
      description: Virtual size in bytes.
      type: int
    allocation:
      description: Bytes allocated on the host.
      type: int
    format:
      description: Volume format.
      type: str
    backing_store:
      description: The backing image (C(path), C(format)), or V(null).
      type: dict
    encryption:
      description: V(luks) or V(none).
      type: str
  sample: {name: web1.qcow2, pool: guests, key: /srv/guests/web1.qcow2, path: /srv/guests/web1.qcow2, capacity: 32212254720,
           allocation: 200704, format: qcow2, backing_store: {path: /srv/guests/debian-12.qcow2, format: qcow2}, encryption: none}
actions:
  description: What was done (or would be done in check mode).
  returned: without O(volumes)
  type: list
  elements: str
  sample: [create]
checksum:
  description: The digest of the uploaded data (the O(checksum) algorithm, sha256 by default).
  returned: when an upload happened
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module
from ansible_collections.virtops.kvm.plugins.module_utils._volume import ENCRYPTIONS, FORMATS, ensure_volume
from ansible_collections.virtops.kvm.plugins.module_utils._xml import require_lxml


def main():
    argument_spec = dict(
        pool=dict(type="str"),
        name=dict(type="str"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        capacity=dict(type="str"),
        allow_shrink=dict(type="bool", default=False),
        format=dict(type="str", choices=list(FORMATS)),
        clone_from=dict(type="str"),
        backing_store=dict(type="str"),
        upload_from=dict(type="str"),
        checksum=dict(type="str"),
        validate_certs=dict(type="bool", default=True),
        timeout=dict(type="int", default=30),
        encryption=dict(type="str", choices=list(ENCRYPTIONS)),
        secret=dict(type="str", no_log=False),
        wipe=dict(type="bool", default=False),
    )
    entry_spec = {name: {key: value for key, value in spec.items() if key != "default"} for name, spec in argument_spec.items()}
    entry_spec["name"]["required"] = True
    argument_spec["volumes"] = dict(type="list", elements="dict", options=entry_spec)
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[("clone_from", "backing_store", "upload_from"), ("name", "volumes")],
        required_one_of=[("name", "volumes")],
        required_if=[("encryption", "luks", ("secret",))],
        supports_check_mode=True,
    )
    require_lxml(module)
    run_module(module, ensure_volume)


if __name__ == "__main__":
    main()
