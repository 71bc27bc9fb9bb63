# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to the virtops.kvm collection: not a public API, may change without notice.
"""microvm: QEMU microvm guests (no PCI, no ACPI tables beyond the GED, virtio-mmio) run as systemd services.

libvirt 9.0 refuses ``machine='microvm'``, so the collection runs these guests itself: one systemd
unit per guest (``virtops-microvm-<name>.service``) whose ``ExecStart`` is the QEMU command line
built here as a list, plus one unit per virtio-fs share for its virtiofsd. Each guest has a state
directory (``/var/lib/virtops-microvm/<name>``) holding the QMP socket, the serial console log and
the boot record of the last start the module made.

The plan is computed before any side effect: the units' wanted content (compared with what is on
disk), the unit's activity (``systemctl show``), and from those one list of actions. Check mode
runs the same plan and returns it without acting.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time

from ansible_collections.virtops.kvm.plugins.module_utils._errors import CommandError, HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._host_facts import cpuinfo_first, read_raw
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import validate_path

UNIT_DIR = "/etc/systemd/system"
STATE_DIR = "/var/lib/virtops-microvm"
UNIT_PREFIX = "virtops-microvm-"
HEADER = "# Managed by virtops.kvm.microvm: changes here are overwritten."
NAME_RE = r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}"
TAG_RE = r"[A-Za-z0-9][A-Za-z0-9_-]{0,35}"
IFNAME_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}"
MAC_RE = r"([0-9a-f]{2}:){5}[0-9a-f]{2}"
FIRMWARE = {
    "qboot": ("/usr/share/qemu/qboot.rom", "/usr/share/qemu/bios-microvm.bin"),
    "seabios": ("/usr/share/seabios/bios-microvm.bin",),
}
BINARIES = ("/usr/bin/qemu-system-x86_64-microvm", "/usr/bin/qemu-system-x86_64")
VIRTIOFSD = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd", "/usr/bin/virtiofsd")
# Chosen by measurement under TCG (docs/benchmarks.md, P3): the PIT is what the kernel calibrates
# the TSC against when there is no HPET or ACPI PM timer (microvm has neither); without it the
# kernel logs "tsc: Unable to calibrate against PIT" and boots slower. The PIC and the RTC cost
# nothing measurable and old kernels expect them; the ISA serial port is the console ttyS0; ACPI
# (the generic event device) is what lets system_powerdown reach the guest.
MACHINE_DEFAULTS = {"pit": True, "pic": True, "rtc": True, "isa_serial": True, "acpi": True}
DEFAULT_CMDLINE = "console=ttyS0 reboot=t panic=-1"
# What the kernel command line gains when the guest runs under TCG and does not say otherwise:
# the timer check and the clocksource watchdog are what make a TCG guest slow when the host is
# loaded (docs/benchmarks.md, P3).
TCG_CMDLINE = ("tsc=reliable", "no_timer_check")
# Under TCG the guest's TSC runs at the host's TSC rate, but a loaded host makes the guest kernel's PIT
# calibration fail ("tsc: Unable to calibrate against PIT", "No reference (HPET/PMTIMER) available"): microvm
# has neither HPET nor an ACPI PM timer to fall back on, and the boot hangs (6 of 10 boots on a loaded 2-CPU
# host, docs/benchmarks.md P3). tsc_early_khz= skips the calibration. The host's rate is read from
# /proc/cpuinfo only where it is the TSC's: no cpufreq driver (then "cpu MHz" is cpu_khz, fixed at boot, so the
# unit file stays the same from run to run) and either constant_tsc or the hypervisor flag. A virtual machine's
# TSC runs at the rate its hypervisor gives it whatever its CPUID says: QEMU's TCG offers no invariant-TSC bit,
# so a TCG VM (the lab VM, -cpu max) has no constant_tsc, and a microvm nested in it hung in the calibration.
CPUFREQ_DIR = "/sys/devices/system/cpu/cpu0/cpufreq"
POWERDOWN_REPEAT = 15


# -- validation ------------------------------------------------------------------------------
def _name(value, what, pattern=NAME_RE):
    text = "" if value is None else str(value)
    if not re.fullmatch(pattern, text):
        raise ValidationError("%s %r is not valid: it goes into unit names and file paths, so it must match %s" % (what, value, pattern))
    return text


def _existing_file(fs, value, what):
    path = validate_path(value, what)
    if not fs.exists(path) or fs.isdir(path):
        raise ValidationError("%s %s does not exist (or is a directory): give the absolute path of an existing file" % (what, path))
    return path


def _no_control(value, what):
    text = str(value)
    if re.search(r"[\x00-\x1f\x7f]", text):
        raise ValidationError("%s %r contains control characters (newline, tab, NUL...): give it on one line" % (what, value))
    return text


def _qemu_value(value, what):
    """A value that goes inside a QEMU ``-drive``/``-netdev`` option string: no commas (QEMU's separator)."""
    text = _no_control(value, what)
    if "," in text:
        raise ValidationError("%s %r contains a comma, which QEMU reads as an option separator: rename it" % (what, value))
    return text


def find_binary(fs, binary, accel):
    """The QEMU binary: the one asked for, else Debian's microvm build (KVM only: it has no TCG) when only KVM is asked for."""
    if binary:
        path = validate_path(binary, "binary")
        if not fs.exists(path):
            raise ValidationError("binary %s does not exist: install QEMU (qemu-system-x86) or give the path of qemu-system-x86_64" % path)
        return path
    for path in BINARIES if "tcg" not in accel else BINARIES[1:]:
        if fs.exists(path):
            return path
    raise ValidationError("no QEMU binary found (looked for %s): install qemu-system-x86" % ", ".join(BINARIES))


def find_firmware(fs, firmware, path=None):
    if path:
        return _existing_file(fs, path, "firmware_path")
    for candidate in FIRMWARE[firmware]:
        if fs.exists(candidate):
            return candidate
    raise ValidationError("firmware %s not found (looked for %s): install qemu-system-data (qboot) or seabios" % (firmware, ", ".join(FIRMWARE[firmware])))


def find_virtiofsd(fs, path=None):
    if path:
        return _existing_file(fs, path, "virtiofsd")
    for candidate in VIRTIOFSD:
        if fs.exists(candidate):
            return candidate
    raise ValidationError("filesystems need virtiofsd and none was found (looked for %s): install virtiofsd" % ", ".join(VIRTIOFSD))


def validate(fs, params):
    """The guest's configuration, every path and name checked: a dict the renderers take."""
    name = _name(params["name"], "name")
    cfg = {"name": name, "state_dir": "%s/%s" % (STATE_DIR, name)}
    cfg["firmware"] = find_firmware(fs, params.get("firmware") or "qboot", params.get("firmware_path"))
    cfg["kernel"] = _qemu_value(_existing_file(fs, params.get("kernel"), "kernel"), "kernel")
    cfg["initrd"] = _qemu_value(_existing_file(fs, params["initrd"], "initrd"), "initrd") if params.get("initrd") else None
    cmdline = params.get("cmdline")
    cfg["cmdline"] = _no_control(DEFAULT_CMDLINE if cmdline is None else cmdline, "cmdline")
    memory = params.get("memory_mib") or 256
    vcpus = params.get("vcpus") or 1
    if memory < 16 or vcpus < 1:
        raise ValidationError("memory_mib must be 16 or more and vcpus 1 or more, got memory_mib=%s vcpus=%s" % (memory, vcpus))
    cfg.update(memory_mib=memory, vcpus=vcpus)
    machine = dict(MACHINE_DEFAULTS)
    machine.update({k: v for k, v in (params.get("machine") or {}).items() if v is not None})
    cfg["machine"] = machine
    accel = params.get("accel") or ["kvm", "tcg"]
    cfg["accel"] = [_name(a, "accel", r"kvm|tcg") for a in accel]
    cfg["binary"] = find_binary(fs, params.get("binary"), cfg["accel"])
    cfg["cpu"] = _qemu_value(params["cpu"], "cpu") if params.get("cpu") else None
    cfg["tcg_cmdline"] = bool(params.get("tcg_cmdline", True))
    cfg["tsc_khz"] = host_tsc_khz(fs) if cfg["tcg_cmdline"] and cfg["accel"][0] == "tcg" else None
    cfg["disks"] = _disks(fs, params.get("disks") or [])
    cfg["interfaces"] = _interfaces(name, params.get("interfaces") or [])
    cfg["filesystems"] = _filesystems(fs, params.get("filesystems") or [])
    cfg["virtiofsd"] = find_virtiofsd(fs, params.get("virtiofsd")) if cfg["filesystems"] else None
    vsock = params.get("vsock_cid")
    if vsock is not None and not 3 <= vsock <= 0xFFFFFFFE:
        raise ValidationError("vsock_cid %s is out of range: guest CIDs are 3 to 4294967294 (0-2 are reserved)" % vsock)
    cfg["vsock_cid"] = vsock
    cfg["extra_args"] = [_no_control(a, "extra_args") for a in params.get("extra_args") or []]
    return cfg


def _disks(fs, disks):
    out = []
    for index, disk in enumerate(disks):
        path = _qemu_value(_existing_file(fs, disk.get("path"), "disks[%d].path" % index), "disks[%d].path" % index)
        fmt = disk.get("format") or "raw"
        if fmt not in ("raw", "qcow2"):
            raise ValidationError("disks[%d].format %r is not supported: raw or qcow2" % (index, fmt))
        out.append({"path": path, "format": fmt, "readonly": bool(disk.get("readonly")), "cache": disk.get("cache") or "none"})
    return out


def _interfaces(name, interfaces):
    out = []
    for index, nic in enumerate(interfaces):
        kind = nic.get("type") or ("bridge" if nic.get("bridge") else "user")
        entry = {"type": kind, "mac": None}
        if nic.get("mac"):
            mac = str(nic["mac"]).lower()
            if not re.fullmatch(MAC_RE, mac):
                raise ValidationError("interfaces[%d].mac %r is not a MAC address (like 52:54:00:12:34:56)" % (index, nic["mac"]))
            entry["mac"] = mac
        if kind == "bridge":
            entry["bridge"] = _name(nic.get("bridge"), "interfaces[%d].bridge" % index, IFNAME_RE)
            entry["tap"] = _name(nic.get("tap") or ("vm%s%d" % (name[:10], index)), "interfaces[%d].tap" % index, IFNAME_RE)
        elif kind == "user":
            forwards = []
            for fwd in nic.get("port_forwards") or []:
                host, guest = int(fwd.get("host_port") or 0), int(fwd.get("guest_port") or 0)
                if not (0 < host < 65536 and 0 < guest < 65536):
                    raise ValidationError("interfaces[%d].port_forwards: ports must be 1-65535, got %r" % (index, fwd))
                proto = fwd.get("protocol") or "tcp"
                if proto not in ("tcp", "udp"):
                    raise ValidationError("interfaces[%d].port_forwards: protocol %r is not tcp or udp" % (index, proto))
                forwards.append((proto, host, guest))
            entry["port_forwards"] = forwards
        else:
            raise ValidationError("interfaces[%d].type %r is not supported: bridge (a tap on a bridge) or user" % (index, kind))
        out.append(entry)
    return out


def _filesystems(fs, filesystems):
    out = []
    for index, share in enumerate(filesystems):
        source = validate_path(share.get("source"), "filesystems[%d].source" % index)
        if not fs.isdir(source):
            raise ValidationError("filesystems[%d].source %s is not an existing directory" % (index, source))
        tag = _name(share.get("tag"), "filesystems[%d].tag" % index, TAG_RE)
        out.append({"source": _no_control(source, "source"), "tag": tag})
    return out


# -- rendering -------------------------------------------------------------------------------
def unit_name(name):
    return "%s%s.service" % (UNIT_PREFIX, name)


def fs_unit_name(name, tag):
    return "%s%s-fs-%s.service" % (UNIT_PREFIX, name, tag)


def _onoff(value):
    return "on" if value else "off"


def machine_option(cfg):
    m = cfg["machine"]
    parts = ["microvm"]
    parts += ["%s=%s" % (key.replace("_", "-"), _onoff(m[key])) for key in ("pit", "pic", "rtc", "isa_serial", "acpi")]
    if cfg["filesystems"]:
        parts.append("memory-backend=mem")
    return ",".join(parts)


def host_tsc_khz(fs):
    """The host's TSC rate in kHz when /proc/cpuinfo gives it reliably (see CPUFREQ_DIR above), else ``None``."""
    if fs.isdir(CPUFREQ_DIR):
        return None
    info = cpuinfo_first(fs)
    flags = info.get("flags", "").split()
    if "constant_tsc" not in flags and "hypervisor" not in flags:
        return None
    try:
        khz = round(float(info.get("cpu MHz", "")) * 1000)
    except ValueError:
        return None
    return khz if khz > 0 else None


def effective_cmdline(cfg):
    words = cfg["cmdline"].split()
    if cfg["tcg_cmdline"] and cfg["accel"][0] == "tcg":
        words += [w for w in TCG_CMDLINE if w not in words]
        if cfg.get("tsc_khz") and not any(w.startswith("tsc_early_khz=") for w in words):
            words.append("tsc_early_khz=%d" % cfg["tsc_khz"])
    return " ".join(words)


def qemu_args(cfg):
    """The QEMU command line as a list (never a shell string)."""
    state = cfg["state_dir"]
    args = [cfg["binary"], "-name", "%s,debug-threads=on" % cfg["name"], "-M", machine_option(cfg)]
    for accel in cfg["accel"]:
        args += ["-accel", accel]
    if cfg["cpu"]:
        args += ["-cpu", cfg["cpu"]]
    args += ["-m", "%dM" % cfg["memory_mib"], "-smp", str(cfg["vcpus"])]
    args += ["-bios", cfg["firmware"], "-nodefaults", "-no-user-config", "-display", "none"]
    args += ["-chardev", "file,id=console,path=%s/console.log" % state, "-serial", "chardev:console"]
    args += ["-qmp", "unix:%s/qmp.sock,server=on,wait=off" % state]
    args += ["-kernel", cfg["kernel"]]
    if cfg["initrd"]:
        args += ["-initrd", cfg["initrd"]]
    args += ["-append", effective_cmdline(cfg)]
    if cfg["filesystems"]:
        args += ["-object", "memory-backend-memfd,id=mem,size=%dM,share=on" % cfg["memory_mib"]]
    for index, disk in enumerate(cfg["disks"]):
        drive = "id=disk%d,file=%s,format=%s,if=none,cache=%s,aio=threads" % (index, disk["path"], disk["format"], disk["cache"])
        if disk["readonly"]:
            drive += ",readonly=on"
        args += ["-drive", drive, "-device", "virtio-blk-device,drive=disk%d" % index]
    for index, nic in enumerate(cfg["interfaces"]):
        if nic["type"] == "bridge":
            netdev = "tap,id=net%d,ifname=%s,script=no,downscript=no" % (index, nic["tap"])
        else:
            netdev = "user,id=net%d" % index + "".join(",hostfwd=%s:127.0.0.1:%d-:%d" % fwd for fwd in nic["port_forwards"])
        device = "virtio-net-device,netdev=net%d" % index + (",mac=%s" % nic["mac"] if nic["mac"] else "")
        args += ["-netdev", netdev, "-device", device]
    for index, share in enumerate(cfg["filesystems"]):
        args += ["-chardev", "socket,id=fs%d,path=%s/fs-%s.sock" % (index, state, share["tag"])]
        args += ["-device", "vhost-user-fs-device,chardev=fs%d,tag=%s" % (index, share["tag"])]
    if cfg["vsock_cid"] is not None:
        args += ["-device", "vhost-vsock-device,guest-cid=%d" % cfg["vsock_cid"]]
    return args + list(cfg["extra_args"])


def virtiofsd_args(cfg, share):
    return [cfg["virtiofsd"], "--socket-path=%s/fs-%s.sock" % (cfg["state_dir"], share["tag"]), "--shared-dir=%s" % share["source"], "--cache=auto"]


def systemd_quote(arg):
    """One word of an ExecStart= line: double-quoted when needed, with systemd's specifiers escaped."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", text):
        return text
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def exec_line(args):
    return " ".join(systemd_quote(a) for a in args)


def render_units(cfg):
    """``{unit file path: content}`` of the guest's units (QEMU, then one virtiofsd per share)."""
    name, state = cfg["name"], cfg["state_dir"]
    fs_units = [fs_unit_name(name, share["tag"]) for share in cfg["filesystems"]]
    lines = [HEADER, "[Unit]", "Description=virtops.kvm microvm guest %s" % name, "After=network.target"]
    for unit in fs_units:
        lines += ["Requires=%s" % unit, "After=%s" % unit]
    lines += ["", "[Service]", "Type=simple", "ExecStartPre=/bin/mkdir -p -m 0700 %s" % state, "ExecStartPre=/bin/rm -f %s/console.log" % state]
    for nic in cfg["interfaces"]:
        if nic["type"] == "bridge":
            lines += [
                "ExecStartPre=-/sbin/ip link del %s" % nic["tap"],
                "ExecStartPre=/sbin/ip tuntap add dev %s mode tap" % nic["tap"],
                "ExecStartPre=/sbin/ip link set %s master %s up" % (nic["tap"], nic["bridge"]),
                "ExecStopPost=-/sbin/ip link del %s" % nic["tap"],
            ]
    lines += [
        "ExecStart=%s" % exec_line(qemu_args(cfg)),
        # SIGTERM makes QEMU quit at once (a hard stop): the module powers the guest off through QMP first
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "Restart=no",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    units = {"%s/%s" % (UNIT_DIR, unit_name(name)): "\n".join(lines)}
    for share, unit in zip(cfg["filesystems"], fs_units):
        units["%s/%s" % (UNIT_DIR, unit)] = "\n".join(
            [
                HEADER,
                "[Unit]",
                "Description=virtops.kvm microvm guest %s: virtiofsd for %s" % (name, share["tag"]),
                "PartOf=%s" % unit_name(name),
                "",
                "[Service]",
                "Type=simple",
                "ExecStartPre=/bin/mkdir -p -m 0700 %s" % state,
                "ExecStart=%s" % exec_line(virtiofsd_args(cfg, share)),
                "",
            ]
        )
    return units


# -- the host: systemd and QMP ---------------------------------------------------------------
def has_systemd(fs):
    """What sd_booted() checks: systemd is PID 1 when /run/systemd/system is a directory."""
    return fs.isdir("/run/systemd/system")


def unit_status(commands, unit):
    """``{"active": ActiveState, "pid": MainPID or None, "started_usec": ..., "enabled": UnitFileState}``."""
    _rc, out, _err = commands.run(
        ["systemctl", "show", "--property=ActiveState,MainPID,ExecMainStartTimestampMonotonic,UnitFileState,LoadState", unit], what="systemctl show"
    )
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    pid = int(props.get("MainPID") or 0)
    return {
        "active": props.get("ActiveState") or "inactive",
        "pid": pid or None,
        "started_usec": int(props.get("ExecMainStartTimestampMonotonic") or 0),
        "enabled": props.get("UnitFileState") or "",
        "loaded": props.get("LoadState") or "",
    }


NO_STATUS = {"active": "inactive", "pid": None, "started_usec": 0, "enabled": "", "loaded": ""}


def is_running(status):
    return status["active"] in ("active", "activating", "reloading", "deactivating")


def qmp_call(path, command, arguments=None, timeout=5.0):
    """One QMP command over the guest's socket; returns its ``return`` value or raises HostError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        reader = sock.makefile("rb")

        def receive():
            while True:
                line = reader.readline()
                if not line:
                    raise HostError("QMP socket %s closed before %s answered" % (path, command))
                message = json.loads(line)
                if "return" in message or "error" in message or "QMP" in message:
                    return message

        receive()  # the greeting
        sock.sendall(json.dumps({"execute": "qmp_capabilities"}).encode() + b"\n")
        receive()
        request = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        sock.sendall(json.dumps(request).encode() + b"\n")
        answer = receive()
    except (OSError, ValueError) as exc:
        raise HostError("QMP %s on %s failed: %s" % (command, path, exc)) from exc
    finally:
        sock.close()
    if "error" in answer:
        raise HostError("QMP %s failed: %s" % (command, answer["error"].get("desc")))
    return answer.get("return")


def qmp_status(fs, cfg_name):
    try:
        return (qmp_call(fs.path("%s/%s/qmp.sock" % (STATE_DIR, cfg_name)), "query-status") or {}).get("status")
    except HostError:
        return None


def read_boot_record(fs, name):
    text = fs.read("%s/%s/boot.json" % (STATE_DIR, name))
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


# -- the plan --------------------------------------------------------------------------------
def plan_actions(state, units_changed, running, *, apply="next_boot", force=False, present=True):
    """The ordered actions that take the guest from what it is to ``state``.

    ``units_changed``: the unit files differ from what is wanted; ``running``: the unit is active;
    ``present``: something of the guest (unit files, state directory) is on the host.
    Returns ``(actions, restart_pending)``.
    """
    actions = []
    if state == "absent":
        if running:
            actions += ["powerdown", "stop"]
        return actions + (["remove_units"] if present else []), False
    if units_changed:
        actions.append("write_units")
    if state == "stopped":
        if running:
            actions += ["powerdown"] + (["stop"] if force else [])
        return actions, False
    if running and units_changed:
        if apply == "restart":
            return [*actions, "powerdown", "stop", "start"], False
        return actions, True
    if not running:
        actions.append("start")
    return actions, False


def ensure_microvm(backends, params, check_mode):
    fs = backends.hostfs
    state = params.get("state") or "running"
    name = _name(params["name"], "name")
    unit = unit_name(name)
    unit_path = "%s/%s" % (UNIT_DIR, unit)
    if state == "absent":
        cfg = None
        wanted = {}
    else:
        cfg = validate(fs, params)
        wanted = render_units(cfg)
    if not backends.confined and not has_systemd(fs):
        raise HostError(
            "microvm guests run as systemd services and this host's PID 1 is not systemd (/run/systemd/system is missing): "
            "nothing was written; run the guest on a systemd host"
        )
    present = {p: read_raw(fs, p) for p in _unit_files(fs, name)}
    changed_files = {p: c for p, c in wanted.items() if present.get(p) != c}
    stale = [p for p in present if p not in wanted]
    units_changed = bool(changed_files or stale)
    status = (
        unit_status(backends.commands, unit) if not backends.confined else {"active": "inactive", "pid": None, "started_usec": 0, "enabled": "", "loaded": ""}
    )
    running = is_running(status)
    leftovers = bool(present) or fs.exists("%s/%s" % (STATE_DIR, name))
    actions, restart_pending = plan_actions(
        state, units_changed, running, apply=params.get("apply") or "next_boot", force=bool(params.get("force")), present=leftovers
    )
    enabled = params.get("enabled")
    if state != "absent" and enabled is not None and not backends.confined and (status["enabled"] == "enabled") != enabled:
        actions.append("enable" if enabled else "disable")
    if backends.confined:
        actions = [a for a in actions if a in ("write_units", "remove_units")]
    diff = {
        "before": "".join("# %s\n%s" % (p, present[p]) for p in sorted(present)),
        "after": "".join("# %s\n%s" % (p, wanted[p]) for p in sorted(wanted)),
    }
    result = {
        "changed": bool(actions),
        "actions": actions,
        "unit": unit,
        "unit_path": unit_path,
        "restart_required": restart_pending,
        "diff": diff,
        "warnings": [],
    }
    if cfg is not None:
        result["command"] = qemu_args(cfg)
    if restart_pending:
        result["warnings"].append("the unit of %s changed while the guest runs: the change applies at its next start (apply=restart restarts it now)" % name)
    if check_mode or not actions:
        result["microvm"] = _facts(backends, name, status)
        return result
    apply_actions(backends, params, actions, changes=(changed_files, stale), result=result)
    result["microvm"] = _facts(backends, name, unit_status(backends.commands, unit) if not backends.confined else status)
    return result


def _unit_files(fs, name):
    found = []
    for entry in fs.listdir(UNIT_DIR) or []:
        if entry == unit_name(name) or (entry.startswith("%s%s-fs-" % (UNIT_PREFIX, name)) and entry.endswith(".service")):
            found.append("%s/%s" % (UNIT_DIR, entry))
    return found


def _systemctl(backends, *args):
    backends.commands.run(["systemctl", *args], what="systemctl %s" % args[0])


def apply_actions(backends, params, actions, *, changes, result):
    changed_files, stale = changes
    name = params["name"]
    fs = backends.hostfs
    unit = unit_name(name)
    timeout = params.get("shutdown_timeout") if params.get("shutdown_timeout") is not None else 120
    for action in actions:
        if action == "write_units":
            for path, content in sorted(changed_files.items()):
                fs.write_atomic(path, content)
            for path in stale:
                fs.remove(path)
            if not backends.confined:
                _systemctl(backends, "daemon-reload")
        elif action == "powerdown":
            result["powered_off"] = _powerdown(backends, name, unit, timeout)
            if not result["powered_off"] and "stop" not in actions:
                raise HostError(
                    "asked %s to power off (QMP system_powerdown) and it still runs after %d s: the unit is unchanged and running; "
                    "give force=true to stop it hard, or a longer shutdown_timeout" % (name, timeout),
                    actions_done=actions[: actions.index(action)],
                )
        elif action == "stop":
            _systemctl(backends, "stop", unit)
        elif action == "start":
            _start(backends, params, name, unit, result)
        elif action in ("enable", "disable"):
            _systemctl(backends, action, unit)
        elif action == "remove_units":
            if not backends.confined:
                backends.commands.run(["systemctl", "disable", unit], check=False)
            for path in _unit_files(fs, name):
                fs.remove(path)
            for leftover in ("console.log", "boot.json"):
                fs.remove("%s/%s/%s" % (STATE_DIR, name, leftover))
            if not backends.confined:
                _systemctl(backends, "daemon-reload")
                backends.commands.run(["systemctl", "reset-failed", unit], check=False)
            try:
                os.rmdir(fs.path("%s/%s" % (STATE_DIR, name)))
            except OSError:
                pass


def _powerdown(backends, name, unit, timeout):
    """system_powerdown through QMP, then wait up to ``timeout`` s for the unit to go inactive.

    The button is pressed again every POWERDOWN_REPEAT seconds: a guest still booting (its acpid not
    yet running) misses a press, and a second press of the ACPI power button does nothing more.
    """
    sock = backends.hostfs.path("%s/%s/qmp.sock" % (STATE_DIR, name))
    deadline = time.monotonic() + timeout
    pressed = None
    while True:
        if pressed is None or time.monotonic() - pressed >= POWERDOWN_REPEAT:
            pressed = time.monotonic()
            try:
                qmp_call(sock, "system_powerdown")
            except HostError:
                pass  # no answer on QMP (QEMU quitting, or not up yet): the unit's state decides
        if not is_running(unit_status(backends.commands, unit)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def _start(backends, params, name, unit, result):
    fs = backends.hostfs
    started = time.time()
    try:
        _systemctl(backends, "start", unit)
    except CommandError as exc:
        raise HostError("systemctl start %s failed: %s; see journalctl -u %s" % (unit, exc, unit)) from exc
    ready = params.get("ready_regex")
    record = {"started": started, "ready_seconds": None}
    if ready:
        pattern = re.compile(ready)
        deadline = time.monotonic() + (params.get("ready_timeout") or 300)
        log = "%s/%s/console.log" % (STATE_DIR, name)
        while True:
            if pattern.search(fs.read(log) or ""):
                record["ready_seconds"] = round(time.time() - started, 3)
                break
            if not is_running(unit_status(backends.commands, unit)):
                raise HostError("%s stopped before its console printed %r; see journalctl -u %s and %s" % (name, ready, unit, log))
            if time.monotonic() >= deadline:
                raise HostError("%s runs but its console did not print %r within %s s; see %s" % (name, ready, params.get("ready_timeout") or 300, log))
            time.sleep(0.25)
    fs.write_atomic("%s/%s/boot.json" % (STATE_DIR, name), json.dumps(record, sort_keys=True) + "\n", mode=0o600)
    result["boot"] = record


def _facts(backends, name, status):
    fs = backends.hostfs
    running = is_running(status)
    return {
        "name": name,
        "state": "running" if running else ("stopped" if fs.exists("%s/%s" % (UNIT_DIR, unit_name(name))) else "absent"),
        "pid": status["pid"] if running else None,
        "qmp_status": qmp_status(fs, name) if running and not backends.confined else None,
        "last_boot": read_boot_record(fs, name),
        "console_log": "%s/%s/console.log" % (STATE_DIR, name),
        "qmp_socket": "%s/%s/qmp.sock" % (STATE_DIR, name),
    }
