#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: domain
short_description: Define libvirt guests from XML and manage their power state
version_added: 0.1.0
description:
  - Defines a libvirt guest (domain) from its XML with a three-way merge, and drives it to a power state.
  - The XML given in O(xml) is the I(intent). It is merged into libvirt's current inactive XML using
    the intent applied last time, which the module stores in the guest's C(<metadata>) under the
    namespace C(https://virtops.dev/kvm/last-applied/1). What the intent says is enforced; what was
    removed from the intent since the last run is removed (a disk taken out of the XML goes away);
    what libvirt generated and the intent never said (UUID, MAC and PCI addresses, implicit
    controllers) is kept, so re-running the same task changes nothing.
  - Repeated devices are matched by identity, not position. Disk by target C(dev); interface by MAC,
    or by type, source and model when the intent has no MAC; hostdev by source address or USB vendor
    and product; filesystem by target C(dir); controller by type and index; serial and console by
    target port; graphics by type; channel by target name.
  - Values are compared normalised. Sizes in any unit (C(<memory unit='GiB'>4</memory>) equals
    C(4194304 KiB)). Machine-type aliases (C(q35) equals the C(pc-q35-X.Y) it resolves to in
    libvirt's capabilities). Boolean spellings (C(yes)/C(on)). Whitespace.
  - The merged XML is validated against libvirt's schema when it is defined
    (C(VIR_DOMAIN_DEFINE_VALIDATE)). A misspelled element fails with the schema's message and is not
    silently dropped.
  - The first run on a guest that was defined without this module stores the last-applied intent,
    so it reports a change once.
  - Secret values in the intent, the ones libvirt only shows with C(VIR_DOMAIN_XML_SECURE) (a graphics
    C(passwd), the cookies of a network disk), go into libvirt's definition and nowhere else. The
    last-applied intent in C(<metadata>) stores C(********) in their place; RV(xml), RV(results[].xml)
    and the diff show C(********); the task's C(invocation) masks the values. They are still compared
    (the module reads the definition with C(VIR_DOMAIN_XML_SECURE)), so a changed password is a change
    and an unchanged one is not; the diff then has an entry naming the secret that changes, masked.
    A guest whose C(<metadata>) holds a password stored by an earlier version reports a change once,
    when the placeholder replaces it.
  - Several guests in one task with O(domains), over one libvirt connection.
options:
  name:
    description:
      - Name of the guest. Required unless O(domains) is given; mutually exclusive with it.
      - A name with C(/) or a control character is refused before libvirt is asked.
    type: str
  xml:
    description:
      - Full domain XML (the intent). Its C(<name>) must equal O(name). When it has none, O(name) is used.
      - Required to define a guest that does not exist yet. Without it, only the power state and
        O(autostart) of an existing guest are managed.
    type: str
  domains:
    description:
      - Several guests in one task, each entry with the keys of a single guest (O(name), O(xml), O(state),
        O(autostart), O(apply), O(shutdown_timeout), O(force), O(save_path), O(restore_from),
        O(remove_storage)). Mutually exclusive with O(name) and O(xml).
      - An entry's keys that are not set take the task's top-level value of that option (its default when
        the task does not set it), except O(xml), which is per guest only.
      - Every entry's parameters and XML are checked first (names, duplicates, XML well-formed and naming
        its guest); an error there fails the task before any guest is touched.
      - Then the guests are handled in list order, each planned, validated and applied before the next.
        When one fails, the task fails with a message naming the entry and the guest; the guests before it
        keep what was done to them, and RV(results) lists them with their changes (the task is changed when
        one of them changed); the entries after it are not touched.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the guest.
        type: str
        required: true
      xml:
        description: Its domain XML, as O(xml).
        type: str
      state:
        description: As O(state).
        type: str
        choices: [present, running, shutdown, destroyed, paused, saved, restarted, absent]
      autostart:
        description: As O(autostart).
        type: bool
      shutdown_timeout:
        description: As O(shutdown_timeout).
        type: int
      force:
        description: As O(force).
        type: bool
      apply:
        description: As O(apply).
        type: str
        choices: [next_boot, restart]
      save_path:
        description: As O(save_path).
        type: path
      restore_from:
        description: As O(restore_from).
        type: path
      remove_storage:
        description: As O(remove_storage).
        type: bool
  state:
    description:
      - V(present) defines the guest and leaves its power state alone.
      - V(running) starts it (resuming a managed save image, or restoring O(restore_from)) or resumes it when paused.
      - V(shutdown) asks the guest to power off through ACPI and waits O(shutdown_timeout) seconds; then
        destroys it when O(force=true), or fails.
      - V(destroyed) powers the guest off at once.
      - V(paused) suspends it (starting it paused when it is off).
      - V(saved) saves its memory (managed save, resumed on the next start; or to O(save_path)) and stops it.
      - V(restarted) reboots a running guest (starts a stopped one); always reports a change. A reboot keeps
        the configuration the guest runs; O(apply=restart) is what picks up a new definition.
      - V(absent) shuts the guest down (same O(shutdown_timeout)/O(force) rules) and undefines it with its
        managed save image, snapshot and checkpoint metadata, NVRAM and TPM state. Its storage is kept
        unless O(remove_storage=true).
    type: str
    choices: [present, running, shutdown, destroyed, paused, saved, restarted, absent]
    default: present
  autostart:
    description: Whether libvirtd starts the guest when it starts. Left alone when unset.
    type: bool
  shutdown_timeout:
    description: Seconds to wait for a guest to power off after an ACPI shutdown request.
    type: int
    default: 120
  force:
    description: Destroy a guest that did not shut down within O(shutdown_timeout) instead of failing.
    type: bool
    default: false
  apply:
    description:
      - What to do when a running guest's new persistent configuration differs from what it runs
        (RV(domain.pending_restart)).
      - V(next_boot) leaves it running; the change applies at its next start.
      - V(restart) shuts it down gracefully (O(shutdown_timeout)/O(force) rules) and starts it again.
    type: str
    choices: [next_boot, restart]
    default: next_boot
  save_path:
    description:
      - With O(state=saved), save the guest's memory to this file instead of a managed save image.
        The guest is stopped; restore it with O(restore_from).
    type: path
  restore_from:
    description:
      - With O(state=running), restore a guest that is not running from this file written by O(save_path).
        The file must exist.
    type: path
  remove_storage:
    description:
      - With O(state=absent), also delete the storage the guest's disks reference, through libvirt for
        volumes in a storage pool, or as plain files.
      - Only C(device='disk') disks that are neither C(readonly) nor C(shareable) are removed; CD-ROM
        images and shared disks are kept. RV(removed_storage) lists each path removed.
    type: bool
    default: false
extends_documentation_fragment:
  - virtops.kvm._libvirt
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
    details:
      - The same comparison as a real run predicts RV(ignore:changed).
      - Check mode validates the merged XML against libvirt's installed schema (C(domain.rng) in libvirt's
        schemas directory, with lxml's RelaxNG) when libvirt is on this machine, so a schema error fails in
        check mode as it will in the real run. Where no schema is installed (or libvirt is remote), check mode
        still predicts the change and warns that it could not validate.
  diff_mode:
    support: full
    details:
      - Unified diff of the inactive XML before and after, and of the power state and autostart.
  idempotent:
    description: Running it again with the same options changes nothing.
    support: full
    details:
      - Except O(state=restarted), which reboots the guest on every run, as asked.
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
- name: Define a guest and start it
  virtops.kvm.domain:
    name: web1
    xml: "{{ lookup('template', 'web1.xml.j2') }}"
    state: running
    autostart: true

- name: Grow its memory; restart it now so the change takes effect
  virtops.kvm.domain:
    name: web1
    xml: "{{ lookup('template', 'web1.xml.j2') }}"
    state: running
    apply: restart
    shutdown_timeout: 60
    force: true

- name: Save the guest's memory to a file
  virtops.kvm.domain:
    name: web1
    state: saved
    save_path: /var/lib/libvirt/save/web1.state

- name: Restore it
  virtops.kvm.domain:
    name: web1
    state: running
    restore_from: /var/lib/libvirt/save/web1.state

- name: Several guests in one task (one libvirt connection); entries inherit the top-level state
  virtops.kvm.domain:
    state: running
    shutdown_timeout: 60
    domains:
      - name: web1
        xml: "{{ lookup('template', 'web1.xml.j2') }}"
        autostart: true
      - name: web2
        xml: "{{ lookup('template', 'web2.xml.j2') }}"
      - name: old-db
        state: absent
        force: true
  register: guests

- name: What happened to each
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ 'changed' if item.changed else 'ok' }} {{ item.actions }}"
  loop: "{{ guests.results }}"

- name: A VNC password is applied but never stored in metadata or shown (masked as ********)
  virtops.kvm.domain:
    name: web1
    xml: "{{ lookup('template', 'web1-vnc.xml.j2') }}"  # has <graphics type='vnc' passwd='{{ vault_vnc_password }}'/>

- name: Remove a guest and the disks it used
  virtops.kvm.domain:
    name: web1
    state: absent
    force: true
    remove_storage: true
"""

RETURN = r"""
domain:
  description: The guest after the task (predicted in check mode); V(null) when it is absent.
  returned: with O(name)
  type: dict
  contains:
    name:
      description: Name.
      type: str
      sample: web1
    uuid:
      description: UUID (V(null) for a guest check mode would define).
      type: str
      sample: 6b1f1c2e-9d1e-4a55-8a0e-2b7a0c1d2e3f
    state:
      description: Power state, one of C(running), C(blocked), C(paused), C(shutdown), C(shutoff), C(crashed), C(pmsuspended).
      type: str
      sample: running
    state_reason:
      description: libvirt's reason for the state (C(booted), C(user), C(saved), C(destroyed)...).
      type: str
      sample: booted
    persistent:
      description: Whether the guest is defined (not transient).
      type: bool
    autostart:
      description: Whether libvirtd starts it at boot.
      type: bool
    pending_restart:
      description: The guest runs a configuration that lacks what the persistent XML (the intent) asks for; a restart applies it.
      type: bool
xml:
  description: The guest's inactive XML after the task (predicted in check mode), secret values masked as C(********).
  returned: with O(name), unless O(state=absent)
  type: str
actions:
  description: The power and autostart actions taken (or that would be taken in check mode), in order.
  returned: with O(name)
  type: list
  elements: str
  sample: [shutdown, start]
removed_storage:
  description: Paths of the volumes and files removed by O(remove_storage) (or that would be).
  returned: with O(name) when O(state=absent)
  type: list
  elements: str
  sample: [/var/lib/libvirt/images/web1.qcow2]
results:
  description:
    - With O(domains), one entry per guest handled, in list order. When an entry fails, the failed result
      holds the entries before it (with RV(failed_guest) naming the one that failed).
  returned: with O(domains)
  type: list
  elements: dict
  contains:
    name:
      description: The guest's name.
      type: str
    changed:
      description: Whether this guest changed (would change in check mode).
      type: bool
    domain:
      description: As RV(domain) for this guest.
      type: dict
    xml:
      description: As RV(xml) for this guest (secrets masked).
      type: str
    actions:
      description: As RV(actions) for this guest.
      type: list
      elements: str
    removed_storage:
      description: As RV(removed_storage) for this guest (empty unless its O(state=absent)).
      type: list
      elements: str
    diff:
      description: This guest's diff entries (inactive XML, masked secrets, power and autostart), when it changed.
      type: list
      elements: dict
failed_guest:
  description: With O(domains), the name of the guest whose entry failed.
  returned: on failure with O(domains)
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._domain import APPLY_CHOICES, STATES, ensure_domain
from ansible_collections.virtops.kvm.plugins.module_utils._domain_state import secret_values_of_text
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import LIBVIRT_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module
from ansible_collections.virtops.kvm.plugins.module_utils._xml import require_lxml


def main():
    guest_options = dict(
        name=dict(type="str", required=True),
        xml=dict(type="str"),
        state=dict(type="str", choices=STATES),
        autostart=dict(type="bool"),
        shutdown_timeout=dict(type="int"),
        force=dict(type="bool"),
        apply=dict(type="str", choices=APPLY_CHOICES),
        save_path=dict(type="path"),
        restore_from=dict(type="path"),
        remove_storage=dict(type="bool"),
    )
    argument_spec = dict(
        name=dict(type="str"),
        xml=dict(type="str"),
        domains=dict(type="list", elements="dict", options=guest_options),
        state=dict(type="str", default="present", choices=STATES),
        autostart=dict(type="bool"),
        shutdown_timeout=dict(type="int", default=120),
        force=dict(type="bool", default=False),
        apply=dict(type="str", default="next_boot", choices=APPLY_CHOICES),
        save_path=dict(type="path"),
        restore_from=dict(type="path"),
        remove_storage=dict(type="bool", default=False),
    )
    argument_spec.update(LIBVIRT_COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[("name", "domains"), ("xml", "domains")],
        required_one_of=[("name", "domains")],
    )
    require_lxml(module)
    # secret values of the intents (a graphics passwd) are masked wherever Ansible shows the task
    texts = [module.params["xml"]] + [entry.get("xml") for entry in module.params["domains"] or []]
    for text in texts:
        module.no_log_values.update(secret_values_of_text(text))
    run_module(module, ensure_domain)


if __name__ == "__main__":
    main()
