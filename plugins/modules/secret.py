#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: secret
short_description: Manage libvirt secrets (LUKS passphrases, Ceph and iSCSI keys, TLS and vTPM secrets)
version_added: 0.1.0
description:
  - Defines, updates and removes a libvirt secret and sets its value.
  - A secret is found by O(uuid), or else by its usage (O(usage_type) and O(usage_id)).
  - The value is compared without ever being returned. A secret that is not private is compared by
    reading its value back from libvirt. A private secret cannot be read back, so the module keeps a
    salted PBKDF2-SHA256 digest of the value it set at the end of the secret's description, in the form
    C([virtops-value pbkdf2-sha256:...]); the module strips that marker from the description it
    compares and returns. A private secret whose value was changed outside this module is not
    noticed; a private secret without the marker gets its value set once.
  - libvirt cannot change O(private) or O(ephemeral) of an existing secret. When they differ the
    module removes and redefines the secret with the same UUID, and sets O(value) again (for a
    secret that was not private, its current value is carried over when O(value) is not given).
    The value is first tried on a throw-away ephemeral secret, so a value libvirt refuses leaves the
    old secret untouched; should the recreate fail later, the old definition (and its value, when it
    was readable) is put back and the message says so.
  - The digest marker is written only after libvirt accepted the value; when setting the value fails,
    the secret keeps its previous value and marker and the next run reports a change again.
options:
  uuid:
    description:
      - UUID of the secret. When omitted, the secret is found by usage and a new one gets a UUID from libvirt.
    type: str
  usage_type:
    description:
      - What the secret is for. V(volume) for an encrypted volume (O(usage_id) is the volume's path),
        V(ceph) (a name), V(iscsi) (a target), V(tls) (a name), V(vtpm) (a name).
    type: str
    choices: [volume, ceph, iscsi, tls, vtpm]
  usage_id:
    description: The volume path, Ceph name, iSCSI target, TLS or vTPM name the secret is for. No control characters.
    type: str
  description:
    description:
      - Human-readable description. Unset keeps the current one; an empty string removes it.
      - Tabs and newlines are kept; other control characters are refused.
    type: str
  private:
    description: Whether libvirt refuses to reveal the value to clients.
    type: bool
    default: false
  ephemeral:
    description: Whether libvirt keeps the secret only in memory (lost when libvirtd restarts).
    type: bool
    default: false
  value:
    description:
      - The secret's value. Never returned or shown in a diff.
      - Unset leaves the current value as it is.
    type: str
  value_encoding:
    description:
      - How O(value) is given. V(base64) decodes it first (as C(virsh secret-set-value --base64) does;
        a Ceph key is given this way).
    type: str
    choices: [text, base64]
    default: text
  state:
    description: Whether the secret exists.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - virtops.kvm._libvirt
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff lists the secret's properties and whether the value is set; never the value.
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second run reports no change.
    support: full
  platform:
    platforms: posix
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: Passphrase for an encrypted volume
  virtops.kvm.secret:
    usage_type: volume
    usage_id: /var/lib/libvirt/images/data.qcow2
    description: data disk passphrase
    private: true
    value: "{{ vault_data_disk_passphrase }}"

- name: Ceph client key (given base64-encoded, as ceph auth get-key prints it)
  virtops.kvm.secret:
    uuid: 2a5b08e4-3dc8-4a3b-a5a4-6c5f2f2d1c11
    usage_type: ceph
    usage_id: client.libvirt secret
    value: "{{ ceph_libvirt_key }}"
    value_encoding: base64

- name: Remove it
  virtops.kvm.secret:
    usage_type: volume
    usage_id: /var/lib/libvirt/images/data.qcow2
    state: absent
"""

RETURN = r"""
secret:
  description: The secret after the task (empty when absent). Never contains the value.
  returned: always
  type: dict
  contains:
    uuid:
      description: UUID (V(null) in check mode for a secret that would be created without a given UUID).
      type: str
    usage_type:
      description: Usage type.
      type: str
    usage_id:
      description: Usage id (volume path, Ceph name, iSCSI target, TLS or vTPM name).
      type: str
    description:
      description: Description, without the module's value marker.
      type: str
    private:
      description: Whether the value is hidden from clients.
      type: bool
    ephemeral:
      description: Whether the secret lives only in memory.
      type: bool
    has_value:
      description: Whether the secret has a value; V(null) when it is private and the module cannot tell.
      type: bool
  sample: {uuid: 2a5b08e4-3dc8-4a3b-a5a4-6c5f2f2d1c11, usage_type: volume, usage_id: /var/lib/libvirt/images/data.qcow2,
           description: data disk passphrase, private: true, ephemeral: false, has_value: true}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module
from ansible_collections.virtops.kvm.plugins.module_utils._secret import USAGE_TYPES, ensure_secret
from ansible_collections.virtops.kvm.plugins.module_utils._xml import require_lxml


def main():
    argument_spec = dict(
        uuid=dict(type="str"),
        usage_type=dict(type="str", choices=list(USAGE_TYPES)),
        usage_id=dict(type="str"),
        description=dict(type="str"),
        private=dict(type="bool", default=False),
        ephemeral=dict(type="bool", default=False),
        value=dict(type="str", no_log=True),
        value_encoding=dict(type="str", choices=["text", "base64"], default="text"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
    )
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_one_of=[("uuid", "usage_type")],
        required_together=[("usage_type", "usage_id")],
        supports_check_mode=True,
    )
    require_lxml(module)
    run_module(module, ensure_secret)


if __name__ == "__main__":
    main()
