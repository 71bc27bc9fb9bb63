# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import time

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _microvm
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS
from ansible_collections.virtops.kvm.plugins.module_utils._runner import Backends

GUEST = pathlib.Path(os.environ.get("VIRTOPS_TEST_CACHE", "/var/cache/virtops-kvm-tests")) / "guest"
UNIT = "/etc/systemd/system/virtops-microvm-g1.service"


class FakeSystemd:
    """systemctl as far as the module uses it: units are active or not, enabled or not."""

    def __init__(self):
        self.calls = []
        self.active = set()
        self.enabled = set()
        self.powers_off = True

    def run(self, args, check=True, what=None, **_kwargs):
        self.calls.append(list(args))
        verb, unit = args[1], args[-1]
        if verb == "show":
            state = "active" if unit in self.active else "inactive"
            pid = 4242 if unit in self.active else 0
            return 0, "ActiveState=%s\nMainPID=%d\nUnitFileState=%s\nLoadState=loaded\n" % (state, pid, "enabled" if unit in self.enabled else "disabled"), ""
        if verb == "start":
            self.active.add(unit)
        elif verb == "stop":
            self.active.discard(unit)
        elif verb == "enable":
            self.enabled.add(unit)
        elif verb == "disable":
            self.enabled.discard(unit)
        return 0, "", ""

    def verbs(self):
        return [c[1] for c in self.calls if c[1] != "show"]


@pytest.fixture
def host(tmp_path, monkeypatch):
    root = tmp_path / "host"
    for directory in ("run/systemd/system", "etc/systemd/system", "usr/bin", "usr/share/qemu", "srv", "var/lib"):
        (root / directory).mkdir(parents=True)
    for path in ("usr/bin/qemu-system-x86_64", "usr/share/qemu/qboot.rom", "srv/vmlinuz", "srv/initrd.img", "srv/disk.qcow2"):
        (root / path).write_text("x", encoding="utf-8")
    systemd = FakeSystemd()
    qmp = []

    def fake_qmp(path, command, arguments=None, timeout=5.0):
        qmp.append(command)
        if command == "system_powerdown" and systemd.powers_off:
            systemd.active.clear()
        if command == "query-status":
            return {"status": "running"}
        return {}

    monkeypatch.setattr(_microvm, "qmp_call", fake_qmp)
    monkeypatch.setattr(_microvm.time, "sleep", lambda _s: None)
    return {"root": root, "fs": HostFS(str(root)), "systemd": systemd, "qmp": qmp}


def ensure(host, params, check_mode=False, confined=False):
    backends = Backends(hostfs=host["fs"], commands=host["systemd"], root=str(host["root"]) if confined else "/")
    return _microvm.ensure_microvm(backends, dict(params), check_mode)


def guest(**extra):
    params = {"name": "g1", "state": "running", "kernel": "/srv/vmlinuz", "initrd": "/srv/initrd.img", "accel": ["tcg"]}
    params.update(extra)
    return params


# -- arguments and rendering ---------------------------------------------------------------------
def test_qemu_args_are_a_list_with_the_measured_defaults(host):
    cfg = _microvm.validate(
        host["fs"], guest(disks=[{"path": "/srv/disk.qcow2", "format": "qcow2"}], interfaces=[{"port_forwards": [{"host_port": 2222, "guest_port": 22}]}])
    )
    args = _microvm.qemu_args(cfg)
    assert args[0] == "/usr/bin/qemu-system-x86_64"
    assert args[args.index("-M") + 1] == "microvm,pit=on,pic=on,rtc=on,isa-serial=on,acpi=on"
    assert args[args.index("-bios") + 1] == "/usr/share/qemu/qboot.rom"
    assert args[args.index("-append") + 1] == "console=ttyS0 reboot=t panic=-1 tsc=reliable no_timer_check"
    assert "id=disk0,file=/srv/disk.qcow2,format=qcow2,if=none,cache=none,aio=threads" in args
    assert "virtio-blk-device,drive=disk0" in args
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22" in args
    assert "virtio-net-device,netdev=net0" in args
    assert "unix:/var/lib/virtops-microvm/g1/qmp.sock,server=on,wait=off" in args


CPUINFO = "processor\t: 0\ncpu MHz\t\t: 2596.142\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n\nprocessor\t: 1\ncpu MHz\t\t: 2596.142\n"


def test_tcg_guest_gets_the_hosts_tsc_rate_so_its_kernel_skips_pit_calibration(host):
    (host["root"] / "proc").mkdir()
    (host["root"] / "proc/cpuinfo").write_text(CPUINFO, encoding="utf-8")
    args = _microvm.qemu_args(_microvm.validate(host["fs"], guest()))
    assert args[args.index("-append") + 1] == "console=ttyS0 reboot=t panic=-1 tsc=reliable no_timer_check tsc_early_khz=2596142"
    # the user's own value wins; tcg_cmdline=false and KVM add nothing
    own = _microvm.validate(host["fs"], guest(cmdline="console=ttyS0 tsc_early_khz=1000000"))
    assert _microvm.effective_cmdline(own) == "console=ttyS0 tsc_early_khz=1000000 tsc=reliable no_timer_check"
    assert _microvm.effective_cmdline(_microvm.validate(host["fs"], guest(tcg_cmdline=False))) == "console=ttyS0 reboot=t panic=-1"
    assert _microvm.effective_cmdline(_microvm.validate(host["fs"], guest(accel=["kvm", "tcg"]))) == "console=ttyS0 reboot=t panic=-1"


def test_tsc_rate_only_where_cpuinfo_gives_the_tscs(host):
    (host["root"] / "proc").mkdir()
    (host["root"] / "proc/cpuinfo").write_text(CPUINFO.replace(" constant_tsc", ""), encoding="utf-8")
    assert _microvm.validate(host["fs"], guest())["tsc_khz"] is None
    # a virtual machine's TSC runs at its hypervisor's rate: a TCG VM (-cpu max) has the hypervisor flag and no constant_tsc
    (host["root"] / "proc/cpuinfo").write_text(CPUINFO.replace(" constant_tsc nonstop_tsc", " hypervisor"), encoding="utf-8")
    assert _microvm.validate(host["fs"], guest())["tsc_khz"] == 2596142
    (host["root"] / "proc/cpuinfo").write_text(CPUINFO, encoding="utf-8")
    # a cpufreq driver (in a VM as on metal): "cpu MHz" is the current clock, not the TSC's (and would change the unit every run)
    (host["root"] / "sys/devices/system/cpu/cpu0/cpufreq").mkdir(parents=True)
    assert _microvm.validate(host["fs"], guest())["tsc_khz"] is None


def test_microvm_binary_and_kvm_first_leave_the_cmdline_alone(host):
    (host["root"] / "usr/bin/qemu-system-x86_64-microvm").write_text("x", encoding="utf-8")
    # that build has no TCG: it is the default only when KVM alone is asked for
    assert _microvm.qemu_args(_microvm.validate(host["fs"], guest(accel=["kvm", "tcg"])))[0] == "/usr/bin/qemu-system-x86_64"
    cfg = _microvm.validate(host["fs"], guest(accel=["kvm"], machine={"pit": False, "acpi": None}, cmdline="console=ttyS0 quiet"))
    args = _microvm.qemu_args(cfg)
    assert args[0] == "/usr/bin/qemu-system-x86_64-microvm"
    assert args[args.index("-append") + 1] == "console=ttyS0 quiet"
    assert "pit=off" in args[args.index("-M") + 1] and "acpi=on" in args[args.index("-M") + 1]
    assert args.count("-accel") == 1


def test_bridge_nic_gets_its_tap_in_the_unit_and_shares_their_virtiofsd(host):
    (host["root"] / "usr/libexec").mkdir()
    (host["root"] / "usr/libexec/virtiofsd").write_text("x", encoding="utf-8")
    (host["root"] / "srv/share").mkdir()
    cfg = _microvm.validate(
        host["fs"], guest(interfaces=[{"bridge": "br0", "mac": "52:54:00:AA:00:01"}], filesystems=[{"source": "/srv/share", "tag": "data"}], vsock_cid=7)
    )
    units = _microvm.render_units(cfg)
    main = units[UNIT]
    assert "ExecStartPre=/sbin/ip link set vmg10 master br0 up" in main
    assert "ExecStopPost=-/sbin/ip link del vmg10" in main
    assert "Requires=virtops-microvm-g1-fs-data.service" in main
    assert "memory-backend=mem" in main and "vhost-user-fs-device,chardev=fs0,tag=data" in main
    assert "mac=52:54:00:aa:00:01" in main and "vhost-vsock-device,guest-cid=7" in main
    fs_unit = units["/etc/systemd/system/virtops-microvm-g1-fs-data.service"]
    assert "--socket-path=/var/lib/virtops-microvm/g1/fs-data.sock --shared-dir=/srv/share" in fs_unit


def test_exec_line_quotes_what_systemd_would_split_or_expand(host):
    cfg = _microvm.validate(host["fs"], guest(cmdline='console=ttyS0 msg="a b" 100% $HOME'))
    line = next(x for x in _microvm.render_units(cfg)[UNIT].splitlines() if x.startswith("ExecStart="))
    # systemd's own splitting is close to the shell's for double quotes; specifiers are doubled
    words = shlex.split(line[len("ExecStart=") :].replace("%%", "%").replace("$$", "$"), posix=True)
    assert words == _microvm.qemu_args(cfg)
    assert "100%%" in line and "$$HOME" in line


# -- state decisions ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "state, units_changed, running, options, expected",
    [
        ("running", True, False, {"apply": "next_boot", "force": False}, (["write_units", "start"], False)),
        ("running", False, True, {"apply": "next_boot", "force": False}, ([], False)),
        ("running", True, True, {"apply": "next_boot", "force": False}, (["write_units"], True)),
        ("running", True, True, {"apply": "restart", "force": False}, (["write_units", "powerdown", "stop", "start"], False)),
        ("stopped", False, True, {"apply": "next_boot", "force": False}, (["powerdown"], False)),
        ("stopped", False, True, {"apply": "next_boot", "force": True}, (["powerdown", "stop"], False)),
        ("stopped", False, False, {"apply": "next_boot", "force": False}, ([], False)),
        ("absent", False, True, {"apply": "next_boot", "force": False}, (["powerdown", "stop", "remove_units"], False)),
    ],
)
def test_plan_actions(state, units_changed, running, options, expected):
    assert _microvm.plan_actions(state, units_changed, running, **options) == expected


def test_absent_with_nothing_left_plans_nothing():
    assert _microvm.plan_actions("absent", False, False, present=False) == ([], False)


def test_running_then_idempotent_and_check_mode_predicts(host):
    checked = ensure(host, guest(), check_mode=True)
    assert checked["changed"] is True and checked["actions"] == ["write_units", "start"]
    assert not (host["root"] / UNIT.lstrip("/")).exists() and host["systemd"].verbs() == []
    real = ensure(host, guest())
    assert real["actions"] == checked["actions"] and real["diff"] == checked["diff"]
    assert host["systemd"].verbs() == ["daemon-reload", "start"]
    assert (host["root"] / UNIT.lstrip("/")).read_text(encoding="utf-8") == real["diff"]["after"].split("\n", 1)[1]
    assert real["microvm"]["state"] == "running" and real["microvm"]["pid"] == 4242
    again = ensure(host, guest())
    assert again["changed"] is False and again["actions"] == []


def test_changed_unit_of_a_running_guest_waits_for_next_boot_or_restarts(host):
    ensure(host, guest())
    pending = ensure(host, guest(memory_mib=512))
    assert pending["actions"] == ["write_units"] and pending["restart_required"] is True and pending["warnings"]
    restarted = ensure(host, guest(memory_mib=768, apply="restart"))
    assert restarted["actions"] == ["write_units", "powerdown", "stop", "start"]
    assert "system_powerdown" in host["qmp"]


def test_stopped_powers_off_gracefully(host):
    ensure(host, guest())
    stopped = ensure(host, guest(state="stopped"))
    assert stopped["actions"] == ["powerdown"] and stopped["powered_off"] is True
    assert "stop" not in host["systemd"].verbs()
    assert ensure(host, guest(state="stopped"))["changed"] is False


def test_fault_guest_ignoring_powerdown_fails_without_force_and_is_stopped_with_it(host):
    ensure(host, guest())
    host["systemd"].powers_off = False
    with pytest.raises(HostError, match="force=true"):
        ensure(host, guest(state="stopped", shutdown_timeout=0))
    assert host["systemd"].active, "without force the guest keeps running"
    forced = ensure(host, guest(state="stopped", shutdown_timeout=0, force=True))
    assert forced["actions"] == ["powerdown", "stop"] and forced["powered_off"] is False
    assert not host["systemd"].active


def test_absent_removes_units_and_state_then_idempotent(host):
    ensure(host, guest())
    state_dir = host["root"] / "var/lib/virtops-microvm/g1"
    assert (state_dir / "boot.json").exists()
    gone = ensure(host, {"name": "g1", "state": "absent"})
    assert gone["actions"] == ["powerdown", "stop", "remove_units"]
    assert not (host["root"] / UNIT.lstrip("/")).exists() and not state_dir.exists()
    assert ensure(host, {"name": "g1", "state": "absent"})["changed"] is False


def test_enabled_is_a_tristate(host):
    ensure(host, guest(enabled=True))
    assert "enable" in host["systemd"].verbs()
    assert ensure(host, guest(enabled=True))["changed"] is False
    assert ensure(host, guest())["changed"] is False
    assert ensure(host, guest(enabled=False))["actions"] == ["disable"]


def test_ready_regex_waits_for_the_console_and_records_the_boot(host):
    log = host["root"] / "var/lib/virtops-microvm/g1/console.log"
    log.parent.mkdir(parents=True)
    log.write_text("booting\nVIRTOPS-GUEST-READY boot=1\n", encoding="utf-8")
    result = ensure(host, guest(ready_regex="VIRTOPS-GUEST-READY"))
    assert result["boot"]["ready_seconds"] is not None
    assert ensure(host, guest(ready_regex="VIRTOPS-GUEST-READY"))["microvm"]["last_boot"] == result["boot"]


def test_confined_root_writes_the_unit_and_runs_no_command(host):
    (host["root"] / "run/systemd/system").rmdir()
    result = ensure(host, guest(), confined=True)
    assert result["actions"] == ["write_units"] and host["systemd"].calls == []
    assert (host["root"] / UNIT.lstrip("/")).exists()


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, message",
    [
        ({"kernel": "/srv/missing"}, "kernel /srv/missing does not exist"),
        ({"kernel": "srv/vmlinuz"}, "not absolute"),
        ({"initrd": "/srv/nope.img"}, "initrd /srv/nope.img does not exist"),
        ({"disks": [{"path": "/srv/nodisk.raw"}]}, r"disks\[0\].path /srv/nodisk.raw does not exist"),
        ({"binary": "/usr/bin/qemu-nope"}, "binary /usr/bin/qemu-nope does not exist"),
        ({"name": "../etc"}, "goes into unit names"),
        ({"name": "a b"}, "goes into unit names"),
        ({"cmdline": "console=ttyS0\nExecStartPre=/bin/evil"}, "control characters"),
        ({"interfaces": [{"bridge": "br0;x"}]}, "bridge"),
        ({"interfaces": [{"port_forwards": [{"host_port": 0, "guest_port": 22}]}]}, "ports must be 1-65535"),
        ({"vsock_cid": 2}, "reserved"),
        ({"filesystems": [{"source": "/srv/nodir", "tag": "d"}]}, "not an existing directory"),
        ({"accel": ["hvf"]}, "accel"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(host, extra, message):
    for check_mode in (True, False):
        with pytest.raises(ValidationError, match=message):
            ensure(host, guest(**extra), check_mode=check_mode)
    assert list((host["root"] / "etc/systemd/system").iterdir()) == []
    assert host["systemd"].calls == []


def test_bad_input_host_without_systemd_gets_a_clear_message(host):
    (host["root"] / "run/systemd/system").rmdir()
    with pytest.raises(HostError, match="PID 1 is not systemd"):
        ensure(host, guest())
    assert list((host["root"] / "etc/systemd/system").iterdir()) == []


# -- the real QEMU: the module's command line boots the fixture to its ready line -----------------
@pytest.mark.skipif(not (GUEST / "vmlinuz").exists() or shutil.which("qemu-system-x86_64") is None, reason="needs the guest fixture and QEMU")
def test_real_qemu_boots_the_fixture_and_powers_off_through_qmp(tmp_path):
    fs = HostFS("/")
    cfg = _microvm.validate(fs, {"name": "virtops-test-unit", "kernel": str(GUEST / "vmlinuz"), "initrd": str(GUEST / "initrd.img"), "accel": ["tcg"]})
    cfg["state_dir"] = str(tmp_path)
    args = _microvm.qemu_args(cfg)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        log = tmp_path / "console.log"
        while not (log.exists() and "VIRTOPS-GUEST-ACPI handled" in log.read_text(errors="replace")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no ready line within 300 s"
            time.sleep(0.2)
        assert re.search(r"VIRTOPS-GUEST-READY boot=\S+", log.read_text(errors="replace"))
        assert _microvm.qmp_call(str(tmp_path / "qmp.sock"), "query-status")["status"] == "running"
        # acpid starts in the background after the ready line: press the button until it is heard
        for _attempt in range(12):
            _microvm.qmp_call(str(tmp_path / "qmp.sock"), "system_powerdown")
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        assert proc.poll() == 0
        assert "VIRTOPS-GUEST-POWEROFF" in log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
