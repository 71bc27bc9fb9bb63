#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: microvm
short_description: QEMU microvm guests (virtio-mmio, qboot, direct kernel boot) run as systemd services
version_added: 0.2.0
description:
  - Runs a guest on QEMU's C(microvm) machine type (no PCI, virtio devices over virtio-mmio) with the qboot
    firmware and direct kernel boot, for guests that must boot fast. libvirt 9.0 refuses C(machine='microvm'),
    so the module manages the guest itself, as one systemd unit C(virtops-microvm-<name>.service) in
    C(/etc/systemd/system) (plus one C(virtops-microvm-<name>-fs-<tag>.service) per virtio-fs share, running
    virtiofsd).
  - The unit's C(ExecStart) is the QEMU command line, built as a list of arguments (returned as RV(command)).
    The guest's state directory C(/var/lib/virtops-microvm/<name>) holds the QMP socket C(qmp.sock), the
    serial console log C(console.log) (emptied at each start) and C(boot.json), the record of the last start
    the module made.
  - Unit files are written atomically and compared with what is on disk; the guest is started, powered off
    or removed only when it differs from O(state). A change to a running guest's unit applies at its next
    start unless O(apply=restart).
  - Powering off asks the guest through QMP C(system_powerdown) (the ACPI power button of microvm's generic
    event device, so O(machine.acpi) must stay on), pressed again every 15 seconds (a guest still booting misses
    a press), and waits O(shutdown_timeout) seconds. A guest that does not
    power off is stopped hard (QEMU quits on SIGTERM from systemd) only with O(force=true); otherwise the module
    fails and leaves it running.
  - Needs systemd as PID 1 (C(/run/systemd/system) present); on another host the module fails before writing
    anything. With O(root) other than C(/) the module only writes or removes the unit files in that tree and
    runs no command (for tests and image builds).
  - The machine defaults were chosen by measurement under TCG (see docs/benchmarks.md, P3). Under KVM the
    guest uses kvm-clock and none of the timer tuning matters.
options:
  name:
    description:
      - Name of the guest. It is part of unit names and paths, so it must match C([A-Za-z0-9][A-Za-z0-9_-]{0,47}).
    type: str
    required: true
  state:
    description:
      - V(running) writes the units and starts the guest; V(stopped) writes the units and powers the guest off;
        V(absent) powers it off, stops it, and removes its units and state directory.
    type: str
    choices: [running, stopped, absent]
    default: running
  kernel:
    description: Absolute path of the kernel image (direct kernel boot). Required unless O(state=absent).
    type: path
  initrd:
    description: Absolute path of the initramfs.
    type: path
  cmdline:
    description:
      - Kernel command line. The default sends the console to the ISA serial port and makes the guest's reboot
        and panic quit QEMU.
      - Under TCG (O(accel) starting with V(tcg)) C(tsc=reliable no_timer_check) are appended unless
        O(tcg_cmdline=false), and C(tsc_early_khz=) with the host's TSC rate where C(/proc/cpuinfo) gives it
        (no cpufreq driver, and C(constant_tsc) or, in a virtual machine, the C(hypervisor) flag) and the command line
        sets none.
    type: str
    default: console=ttyS0 reboot=t panic=-1
  tcg_cmdline:
    description:
      - Append C(tsc=reliable no_timer_check) to the command line when the first accelerator is V(tcg).
      - Also append C(tsc_early_khz=) with the host's TSC rate when C(/proc/cpuinfo) gives it reliably. Without it a
        TCG guest on a loaded host, or nested in a virtual machine, may fail to calibrate its TSC against the PIT, and a
        microvm has no other timer to fall back on, so its boot hangs.
    type: bool
    default: true
  memory_mib:
    description: Guest memory in MiB.
    type: int
    default: 256
  vcpus:
    description: Number of vCPUs.
    type: int
    default: 1
  accel:
    description: Accelerators in order of preference (QEMU falls back to the next one when one is not available).
    type: list
    elements: str
    default: [kvm, tcg]
  cpu:
    description: QEMU C(-cpu) model (QEMU's default when not set).
    type: str
  binary:
    description:
      - QEMU binary. Default C(/usr/bin/qemu-system-x86_64-microvm) (Debian's build with only what microvm needs)
        when the host has it and O(accel) does not name V(tcg) (that build has no TCG, QEMU answers C(invalid accelerator tcg)),
        else C(/usr/bin/qemu-system-x86_64).
    type: path
  firmware:
    description:
      - V(qboot) (C(/usr/share/qemu/qboot.rom), the firmware that jumps straight to the kernel) or V(seabios)
        (C(/usr/share/seabios/bios-microvm.bin)).
    type: str
    choices: [qboot, seabios]
    default: qboot
  firmware_path:
    description: Path of a firmware image to use instead of the one O(firmware) names.
    type: path
  machine:
    description:
      - The microvm machine options that matter for boot time, each V(true) or V(false). Defaults chosen by measurement
        (docs/benchmarks.md, P3).
    type: dict
    default: {}
    suboptions:
      pit:
        description: The i8254 PIT. The kernel calibrates the TSC against it (microvm has no HPET or ACPI PM timer);
          without it a TCG guest boots much slower or not at all.
        type: bool
        default: true
      pic:
        description: The i8259 PIC.
        type: bool
        default: true
      rtc:
        description: The MC146818 RTC (the guest's wall clock at boot).
        type: bool
        default: true
      isa_serial:
        description: The ISA serial port (the console C(ttyS0) whose output goes to C(console.log)).
        type: bool
        default: true
      acpi:
        description: ACPI (microvm's generic event device). O(state=stopped) needs it for C(system_powerdown).
        type: bool
        default: true
  disks:
    description: Disks as virtio-blk over virtio-mmio, in order (C(/dev/vda), C(/dev/vdb), ...).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path of an existing image.
        type: path
        required: true
      format:
        description: Image format.
        type: str
        choices: [raw, qcow2]
        default: raw
      readonly:
        description: Attach read-only.
        type: bool
        default: false
      cache:
        description: QEMU cache mode.
        type: str
        choices: [none, writeback, writethrough, unsafe, directsync]
        default: none
  interfaces:
    description: NICs as virtio-net over virtio-mmio.
    type: list
    elements: dict
    default: []
    suboptions:
      type:
        description:
          - V(bridge) creates a tap device when the unit starts, puts it on O(interfaces[].bridge) and removes it when
            the unit stops; V(user) is QEMU's user networking with port forwards bound to 127.0.0.1.
          - Default V(bridge) when O(interfaces[].bridge) is set, else V(user).
        type: str
        choices: [bridge, user]
      bridge:
        description: The existing bridge the tap joins.
        type: str
      tap:
        description: Name of the tap device (default C(vm<name, first 10 characters><index>)).
        type: str
      mac:
        description: MAC address (QEMU picks one when not set).
        type: str
      port_forwards:
        description: Ports of 127.0.0.1 forwarded to the guest (user networking only).
        type: list
        elements: dict
        default: []
        suboptions:
          host_port:
            description: Port on 127.0.0.1.
            type: int
            required: true
          guest_port:
            description: Port in the guest.
            type: int
            required: true
          protocol:
            description: Protocol.
            type: str
            choices: [tcp, udp]
            default: tcp
  filesystems:
    description:
      - Host directories shared with virtio-fs; each runs virtiofsd in a unit of its own that the guest's unit requires.
        Guest memory is then a shared memfd backend.
    type: list
    elements: dict
    default: []
    suboptions:
      source:
        description: Existing host directory.
        type: path
        required: true
      tag:
        description: Mount tag in the guest (C(mount -t virtiofs <tag> /mnt)).
        type: str
        required: true
  virtiofsd:
    description: Path of virtiofsd (default the first of C(/usr/libexec/virtiofsd), C(/usr/lib/qemu/virtiofsd), C(/usr/bin/virtiofsd)).
    type: path
  vsock_cid:
    description: Guest CID of a vhost-vsock device (3 to 4294967294; needs the host's vhost_vsock module).
    type: int
  extra_args:
    description: More QEMU arguments, appended as they are (each list element is one argument).
    type: list
    elements: str
    default: []
  enabled:
    description: Start the guest at host boot (systemctl enable). V(null) leaves it as it is.
    type: bool
  apply:
    description:
      - What a change to a running guest's unit does. V(next_boot) writes the unit and reports RV(restart_required);
        V(restart) powers the guest off (hard stop after O(shutdown_timeout)) and starts it again.
    type: str
    choices: [next_boot, restart]
    default: next_boot
  force:
    description: With O(state=stopped), stop the unit (a hard stop) when the guest has not powered off after O(shutdown_timeout).
    type: bool
    default: false
  shutdown_timeout:
    description: Seconds to wait for the guest to power off after C(system_powerdown).
    type: int
    default: 120
  ready_regex:
    description:
      - After starting the guest, wait until its console log matches this regular expression, and record the time from
        the start to that line (RV(boot), and RV(microvm.last_boot) later).
    type: str
  ready_timeout:
    description: Seconds to wait for O(ready_regex).
    type: int
    default: 300
extends_documentation_fragment:
  - virtops.kvm._hostfs
  - virtops.kvm._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff is the text of the guest's unit files, before and after.
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second run reports no change.
    support: full
  platform:
    platforms: posix
    details: Linux with systemd as PID 1 and QEMU (qemu-system-x86).
notes:
  - "Under TCG (no usable KVM) the kernel calibrates its TSC against the PIT; on a loaded host that calibration can fail
    (C(tsc: Unable to calibrate against PIT)) and the boot gets slower. Giving the kernel the TSC frequency
    (C(tsc_early_khz=<host TSC kHz>)) or the delay-loop value (C(lpj=<value a previous boot printed>)) in O(cmdline) skips
    the calibration; see docs/benchmarks.md (P3) for the measurements."
author:
  - virtops.kvm maintainers (@virtops)
"""

EXAMPLES = r"""
- name: A fast-booting guest from a kernel and initramfs, with ssh forwarded to 127.0.0.1:2222
  virtops.kvm.microvm:
    name: edge01
    kernel: /srv/microvm/vmlinuz
    initrd: /srv/microvm/initrd.img
    cmdline: console=ttyS0 root=/dev/vda rw reboot=t panic=-1
    memory_mib: 512
    vcpus: 2
    disks:
      - path: /srv/microvm/edge01.qcow2
        format: qcow2
    interfaces:
      - type: user
        port_forwards:
          - {host_port: 2222, guest_port: 22}
    enabled: true
    ready_regex: "login:"

- name: Power it off (hard stop after 60 s if it ignores the power button)
  virtops.kvm.microvm:
    name: edge01
    state: stopped
    shutdown_timeout: 60
    force: true

- name: Remove it
  virtops.kvm.microvm:
    name: edge01
    state: absent
"""

RETURN = r"""
actions:
  description: What the module did (or would do in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [write_units, start]
unit:
  description: The guest's systemd unit.
  returned: always
  type: str
  sample: virtops-microvm-edge01.service
unit_path:
  description: Its unit file.
  returned: always
  type: str
  sample: /etc/systemd/system/virtops-microvm-edge01.service
command:
  description: The QEMU command line of the unit's ExecStart, one argument per element.
  returned: unless O(state=absent)
  type: list
  elements: str
  sample: [/usr/bin/qemu-system-x86_64-microvm, -name, "edge01,debug-threads=on", -M, "microvm,pit=on,pic=on,rtc=on,isa-serial=on,acpi=on"]
restart_required:
  description: The unit changed while the guest runs and O(apply=next_boot); the change applies at the next start.
  returned: always
  type: bool
powered_off:
  description: Whether the guest powered off by itself after C(system_powerdown) within O(shutdown_timeout).
  returned: when the guest was powered off
  type: bool
boot:
  description: The start this run made; C(ready_seconds) is the time from the start to the line O(ready_regex) matched.
  returned: when the guest was started
  type: dict
  sample: {started: 1764830000.12, ready_seconds: 3.41}
microvm:
  description: The guest after the run (as it is now in check mode).
  returned: always
  type: dict
  contains:
    name:
      description: The guest's name.
      type: str
    state:
      description: V(running), V(stopped) (unit present, not running) or V(absent).
      type: str
    pid:
      description: PID of QEMU (the unit's main PID) when running.
      type: int
    qmp_status:
      description: The QMP C(query-status) status (V(running), V(paused), ...) when running.
      type: str
    last_boot:
      description: The record of the last start the module made (C(started), C(ready_seconds)).
      type: dict
    console_log:
      description: The serial console log.
      type: str
    qmp_socket:
      description: The QMP socket.
      type: str
  sample: {name: edge01, state: running, pid: 4242, qmp_status: running, last_boot: {started: 1764830000.12, ready_seconds: 3.41},
           console_log: /var/lib/virtops-microvm/edge01/console.log, qmp_socket: /var/lib/virtops-microvm/edge01/qmp.sock}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HOSTFS_COMMON_ARGS
from ansible_collections.virtops.kvm.plugins.module_utils._microvm import ensure_microvm
from ansible_collections.virtops.kvm.plugins.module_utils._runner import run_module


def main():
    port_forward = dict(
        host_port=dict(type="int", required=True),
        guest_port=dict(type="int", required=True),
        protocol=dict(type="str", choices=["tcp", "udp"], default="tcp"),
    )
    argument_spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["running", "stopped", "absent"], default="running"),
        kernel=dict(type="path"),
        initrd=dict(type="path"),
        cmdline=dict(type="str", default="console=ttyS0 reboot=t panic=-1"),
        tcg_cmdline=dict(type="bool", default=True),
        memory_mib=dict(type="int", default=256),
        vcpus=dict(type="int", default=1),
        accel=dict(type="list", elements="str", default=["kvm", "tcg"]),
        cpu=dict(type="str"),
        binary=dict(type="path"),
        firmware=dict(type="str", choices=["qboot", "seabios"], default="qboot"),
        firmware_path=dict(type="path"),
        machine=dict(
            type="dict",
            default={},
            options=dict(
                pit=dict(type="bool", default=True),
                pic=dict(type="bool", default=True),
                rtc=dict(type="bool", default=True),
                isa_serial=dict(type="bool", default=True),
                acpi=dict(type="bool", default=True),
            ),
        ),
        disks=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                path=dict(type="path", required=True),
                format=dict(type="str", choices=["raw", "qcow2"], default="raw"),
                readonly=dict(type="bool", default=False),
                cache=dict(type="str", choices=["none", "writeback", "writethrough", "unsafe", "directsync"], default="none"),
            ),
        ),
        interfaces=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                type=dict(type="str", choices=["bridge", "user"]),
                bridge=dict(type="str"),
                tap=dict(type="str"),
                mac=dict(type="str"),
                port_forwards=dict(type="list", elements="dict", default=[], options=port_forward),
            ),
        ),
        filesystems=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(source=dict(type="path", required=True), tag=dict(type="str", required=True)),
        ),
        virtiofsd=dict(type="path"),
        vsock_cid=dict(type="int"),
        extra_args=dict(type="list", elements="str", default=[]),
        enabled=dict(type="bool"),
        apply=dict(type="str", choices=["next_boot", "restart"], default="next_boot"),
        force=dict(type="bool", default=False),
        shutdown_timeout=dict(type="int", default=120),
        ready_regex=dict(type="str"),
        ready_timeout=dict(type="int", default=300),
    )
    argument_spec.update(HOSTFS_COMMON_ARGS)
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_if=[("state", "running", ("kernel",)), ("state", "stopped", ("kernel",))],
        supports_check_mode=True,
    )
    run_module(module, ensure_microvm)


if __name__ == "__main__":
    main()
