# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""make bench: run the benchmarks side by side and write docs/benchmarks.md.

P1 (issue 13/17): a no-op converge of N defined guests (default 30) on this machine's libvirtd,
    - virtops.kvm's domain module with every guest in one task (the ``domains`` batch),
    - virtops.kvm's domain module once per guest (a loop),
    - community.libvirt's ``virt command=define`` loop (from the ``ansible`` package, installed in a
      virtualenv of its own under $VIRTOPS_TEST_CACHE/bench),
    - the per-task floor: ``ansible.builtin.ping`` over as many items,
    - the kvm_guest role over the define loop's own guests (no disk, no seed: the same job), and
    - the kvm_guest role over as many guests, each with a qcow2 overlay on one base image and a
      cloud-init seed (defined, not started), in a pool of the benchmark's own,
  each timed R times (min / median / max of the wall time of ansible-playbook), with the number of
  changed results each reports on a run that should change nothing, and the libvirt RPC calls one
  no-op converge makes (counted from libvirt's client log).

P2 (issue 17): provisioning guests from one base image, for base images holding 1 and 4 GiB of data:
    the kvm_guest role takes the fleet from 0 to 1, then 4, then 8 running guests (each step adds
    guests to the same list), then converges once more changing nothing; each step's wall time, the
    time per added guest above that no-op run, and the disk the pool uses after each step. The base
    is imported once (in the first step); each guest costs a qcow2 overlay and a seed, so the time
    and disk per added guest do not grow with the image.

P3 (issue 15): boot-to-ready time of the test fixture's kernel and initramfs under TCG, q35 + SeaBIOS
    against microvm (naive, and the microvm module's profile), median of R runs each (p3_boot.py).

``--only p1`` / ``--only p2`` / ``--only p3`` runs one part and keeps the other parts of docs/benchmarks.md as they
are. Nothing here asserts anything about time; the numbers are written down, not judged. The guests are
named virtops-bench-* and undefined at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
TOP = HERE.parent
sys.path.insert(0, str(HERE))
import p3_boot  # noqa: E402  (the benchmarks directory is not a package)

URI = "qemu:///system"
PREFIX = "virtops-bench-"
POOL = "virtops-bench-pool"
GUEST = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <interface type='user'><model type='virtio'/></interface>
    <console type='pty'/>
  </devices>
</domain>
"""


def run(cmd, env=None, check=True):
    return subprocess.run(cmd, env=env, check=check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def community_venv(cache):
    venv = cache / "community-venv"
    marker = venv / ".virtops-bench"
    if not marker.exists():
        run([sys.executable, "-m", "venv", "--clear", str(venv)])
        run([str(venv / "bin" / "pip"), "install", "-q", "ansible>=11,<12", "libvirt-python", "lxml"])
        marker.write_text("ansible>=11,<12\n", encoding="utf-8")
    return venv


def version_of(python, package):
    out = run([python, "-c", "import importlib.metadata as m; print(m.version(%r))" % package], check=False)
    return out.stdout.strip() if out.returncode == 0 else "?"


def playbook(bin_dir, name, varsfile, env, log=None):
    env = dict(env)
    if log:
        env.update(LIBVIRT_LOG_FILTERS="1:rpc.netclient", LIBVIRT_LOG_OUTPUTS="1:file:%s" % log)
    cmd = [
        str(bin_dir / "ansible-playbook"),
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        "ansible_python_interpreter=%s" % (bin_dir / "python"),
        "-e",
        "@%s" % varsfile,
        str(HERE / "playbooks" / name),
    ]
    start = time.monotonic()
    out = run(cmd, env=env, check=False)
    seconds = time.monotonic() - start
    if out.returncode != 0:
        raise SystemExit("bench: %s failed:\n%s" % (name, out.stdout[-3000:]))
    changed = len(re.findall(r"^changed: \[localhost\]", out.stdout, re.M))
    return seconds, changed


def rpc_calls(log):
    try:
        return sum(1 for line in pathlib.Path(log).read_text(encoding="utf-8", errors="replace").splitlines() if "RPC_CLIENT_MSG_TX_QUEUE" in line)
    except FileNotFoundError:
        return None


def cleanup(count):
    for number in range(count):
        for name in ("%s%02d" % (PREFIX, number), "%sv-%02d" % (PREFIX, number), "%srole-%02d" % (PREFIX, number), "%ssame-%02d" % (PREFIX, number)):
            run(["virsh", "-c", URI, "undefine", name], check=False)
    pool = run(["virsh", "-c", URI, "vol-list", POOL], check=False)
    for line in pool.stdout.splitlines()[2:]:
        if line.split():
            run(["virsh", "-c", URI, "vol-delete", "--pool", POOL, line.split()[0]], check=False)
    run(["virsh", "-c", URI, "pool-destroy", POOL], check=False)
    run(["virsh", "-c", URI, "pool-undefine", POOL], check=False)


def make_pool(cache):
    """The role's pool and a small base image (a 64 MiB empty qcow2 stands for the cloud image)."""
    pool_dir = cache / "pool"
    pool_dir.mkdir(exist_ok=True)
    image = cache / "base.qcow2"
    if not image.exists():
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"])
    xml = "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (POOL, pool_dir)
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as handle:
        handle.write(xml)
    run(["virsh", "-c", URI, "pool-create", handle.name])
    os.unlink(handle.name)
    return image


P2_PREFIX = PREFIX + "p2-"
P2_POOL = "virtops-bench-p2-pool"
P2_SIZES_GIB = (1, 4)
P2_STEPS = (1, 4, 8)


def p2_image(cache, gib):
    """A qcow2 base holding ``gib`` GiB of data (a pattern, so every cluster is allocated), cached."""
    image = cache / ("p2-base-%dg.qcow2" % gib)
    if not image.exists():
        part = image.with_suffix(".part")
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(part), "%dG" % gib])
        # qemu-io writes at most 2 GiB per request: one request per GiB
        writes = [arg for n in range(gib) for arg in ("-c", "write -P 0x5a %dG 1G" % n)]
        run(["qemu-io", "-f", "qcow2", *writes, str(part)])
        part.rename(image)
    return image


def p2_cleanup():
    listed = run(["virsh", "-c", URI, "list", "--all", "--name"], check=False).stdout.split()
    for name in listed:
        if name.startswith(P2_PREFIX):
            run(["virsh", "-c", URI, "destroy", name], check=False)
            run(["virsh", "-c", URI, "undefine", name], check=False)
    pool = run(["virsh", "-c", URI, "vol-list", P2_POOL], check=False)
    for line in pool.stdout.splitlines()[2:]:
        if line.split():
            run(["virsh", "-c", URI, "vol-delete", "--pool", P2_POOL, line.split()[0]], check=False)
    run(["virsh", "-c", URI, "pool-destroy", P2_POOL], check=False)


def disk_used(directory):
    """Bytes the files under ``directory`` occupy on disk (allocated blocks, not apparent sizes)."""
    return sum(entry.stat().st_blocks * 512 for entry in pathlib.Path(directory).iterdir() if entry.is_file())


def bench_p2(args, cache, ours, env_ours, tmp):
    """{gib: {step: [(seconds, changed, disk bytes), ...]}} over args.p2_runs repetitions."""
    pool_dir = cache / "p2-pool"
    results = {}
    for gib in P2_SIZES_GIB:
        image = p2_image(cache, gib)
        results[gib] = {}
        for _repetition in range(args.p2_runs):
            p2_cleanup()
            if pool_dir.exists():
                for entry in pool_dir.iterdir():
                    entry.unlink()
            pool_dir.mkdir(exist_ok=True)
            xml = pathlib.Path(tmp) / "p2-pool.xml"
            xml.write_text("<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (P2_POOL, pool_dir), encoding="utf-8")
            run(["virsh", "-c", URI, "pool-create", str(xml)])
            try:
                for step in (*P2_STEPS, "no-op"):
                    count = P2_STEPS[-1] if step == "no-op" else step
                    guests = [
                        {"name": "%s%02d" % (P2_PREFIX, n), "memory_mib": 128, "image": {"src": str(image)}, "cloud_init": {"user": "bench"}}
                        for n in range(count)
                    ]
                    varsfile = pathlib.Path(tmp) / "p2.json"
                    varsfile.write_text(json.dumps({"bench_pool": P2_POOL, "bench_role_guests": guests}), encoding="utf-8")
                    seconds, changed = playbook(ours, "kvm_guest_role.yml", varsfile, env_ours)
                    results[gib].setdefault(step, []).append((seconds, changed, disk_used(pool_dir)))
                    print("bench: P2 %d GiB image, %s: %.2f s, %d changed, pool uses %d MiB" % (gib, step, seconds, changed, disk_used(pool_dir) >> 20))
            finally:
                p2_cleanup()
    return results


def p2_section(args, results):
    lines = [
        "## P2: provisioning guests from one base image",
        "",
        "The kvm_guest role takes a fleet from 0 to 1, then 4, then 8 running guests (each step adds guests to",
        "the same list; the guests have 128 MiB, no interface, an overlay on the base and a cloud-init seed; they",
        "start under TCG and are not waited for), then runs once more changing nothing. The base images are",
        "qcow2 files with every cluster written (1 and 4 GiB of data); the first step imports the base into the",
        "pool. %d repetitions of the whole sequence per image; times are min / median / max of ansible-playbook's" % args.p2_runs,
        'wall time; "per added guest" is (median - median of the no-op run) / guests added; disk is what the',
        "pool's files occupy after the step (median), and per added guest beyond the base.",
        "",
        "| image | step | min s | median s | max s | changed (median) | per added guest s | pool disk MiB | disk per added guest MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for gib, steps in results.items():
        noop = statistics.median(seconds for seconds, _changed, _disk in steps["no-op"])
        before_count, before_disk = 0, None
        for step, samples in steps.items():
            times = [seconds for seconds, _changed, _disk in samples]
            mid = statistics.median(times)
            disk = statistics.median(d for _seconds, _changed, d in samples)
            changed = statistics.median(c for _seconds, c, _disk in samples)
            if step == "no-op":
                per_guest = per_disk = "-"
                label = "no-op at %d" % P2_STEPS[-1]
            else:
                added = step - before_count
                per_guest = "%.2f" % ((mid - noop) / added)
                # the first step's disk includes the imported base: per guest is counted from the second step on
                per_disk = "%.1f" % ((disk - before_disk) / added / 2**20) if before_disk is not None else "-"
                label = "%d -> %d guests" % (before_count, step)
                before_count, before_disk = step, disk
            cells = (gib, label, min(times), mid, max(times), changed, per_guest, disk / 2**20, per_disk)
            lines.append("| %d GiB | %s | %.2f | %.2f | %.2f | %g | %s | %.0f | %s |" % cells)
    # the last step adds guests to a fleet whose base is in place already: its cost per guest, by image size
    last = {}
    for gib, steps in results.items():
        noop = statistics.median(seconds for seconds, _changed, _disk in steps["no-op"])
        added = P2_STEPS[-1] - P2_STEPS[-2]
        last[gib] = (statistics.median(seconds for seconds, _changed, _disk in steps[P2_STEPS[-1]]) - noop) / added
    small, large = min(last), max(last)
    lines += [
        "",
        "The first step includes the one-time import of the base. Time per added guest in the last step: %s; %d GiB against %d GiB: %.2fx."
        % (", ".join("%.2f s (%d GiB)" % (last[gib], gib) for gib in sorted(last)), large, small, last[large] / last[small] if last[small] else float("nan")),
    ]
    return lines


PARTS = ("p1", "p2", "p3")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--p2-runs", type=int, default=3, help="repetitions of P2's whole sequence per image size")
    parser.add_argument("--p3-runs", type=int, default=5)
    parser.add_argument("--p3-timeout", type=int, default=60, help="seconds a boot may take before it counts as a timeout")
    parser.add_argument("--only", choices=sorted(PARTS), action="append", help="run only these parts (repeatable)")
    parser.add_argument("--out", default=str(TOP / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    parts = args.only or sorted(PARTS)
    cache = pathlib.Path(os.environ.get("VIRTOPS_TEST_CACHE", "/var/cache/virtops-kvm-tests")) / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    ours = pathlib.Path(sys.executable).parent
    theirs = community_venv(cache) / "bin"
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="false")
    env_ours = dict(env, ANSIBLE_COLLECTIONS_PATH=os.environ["VIRTOPS_BUILD"])
    # the community venv must see only the ansible package's collections, not virtops.kvm's build
    env_theirs = {k: v for k, v in env.items() if k not in ("ANSIBLE_COLLECTIONS_PATH", "VIRTUAL_ENV")}
    env_theirs["PATH"] = "%s:%s" % (theirs, env["PATH"])
    guests = [{"name": "%s%02d" % (PREFIX, n), "xml": GUEST.format(name="%s%02d" % (PREFIX, n))} for n in range(args.guests)]
    scenarios = [
        ("virtops.kvm domain, one task (domains batch)", ours, "virtops_batch.yml", env_ours),
        ("virtops.kvm domain, loop of one task per guest", ours, "virtops_loop.yml", env_ours),
        ("community.libvirt virt command=define, loop", theirs, "community_loop.yml", env_theirs),
        ("ansible.builtin.ping, loop (per-task floor)", ours, "ping_loop.yml", env_ours),
        ("virtops.kvm kvm_guest role, the same guests (no disk, no seed)", ours, "kvm_guest_role_same.yml", env_ours),
        ("virtops.kvm kvm_guest role, each guest with an overlay and a seed (one volume, one seed, one domain call)", ours, "kvm_guest_role.yml", env_ours),
    ]
    sections = {}
    with tempfile.TemporaryDirectory(prefix="virtops-bench-") as tmp:
        if "p1" in parts:
            sections["P1"] = p1_section(args, bench_p1(args, cache, guests, scenarios, tmp))
        if "p2" in parts:
            sections["P2"] = p2_section(args, bench_p2(args, cache, ours, env_ours, tmp))
        if "p3" in parts:
            rows, tsc_khz = p3_boot.run_p3(runs=args.p3_runs, timeout=args.p3_timeout)
            sections["P3"] = p3_boot.section(rows, args.p3_runs, tsc_khz, args.p3_timeout).splitlines()
    write(args, sections, ours, theirs)
    return 0


def bench_p1(args, cache, guests, scenarios, tmp):
    rows = []
    varsfile = pathlib.Path(tmp) / "guests.json"
    try:
        cleanup(args.guests)
        image = make_pool(cache)
        role_guests = [
            {"name": "%srole-%02d" % (PREFIX, n), "state": "present", "memory_mib": 64, "image": {"src": str(image)}, "cloud_init": {"user": "bench"}}
            for n in range(args.guests)
        ]
        # the define loop's guests as kvm_guest_list entries: 64 MiB, one vCPU, q35, a user-mode NIC, no disk
        same = {"state": "present", "memory_mib": 64, "vcpus": 1, "machine": "q35", "interfaces": [{"user": {}}], "wait_for": "none"}
        same_guests = [dict(same, name="%ssame-%02d" % (PREFIX, n)) for n in range(args.guests)]
        # the same definitions under other names for the domain module: community.libvirt's define replaces a guest's
        # XML (and its MAC), which the domain module would then put back as a change
        virtops_guests = [{"name": "%sv-%02d" % (PREFIX, n), "xml": GUEST.format(name="%sv-%02d" % (PREFIX, n))} for n in range(args.guests)]
        varsfile.write_text(
            json.dumps(
                {
                    "bench_guests": guests,
                    "bench_virtops_guests": virtops_guests,
                    "bench_pool": POOL,
                    "bench_role_guests": role_guests,
                    "bench_same_guests": same_guests,
                }
            ),
            encoding="utf-8",
        )
        for _label, bin_dir, book, scenario_env in scenarios:
            playbook(bin_dir, book, varsfile, scenario_env)  # converge first: the timed runs should change nothing
        # round robin, so that a machine whose speed drifts during the bench (seen here: 20 % within minutes) weighs on
        # every playbook alike; each playbook works on guests of its own, so no run undoes another's
        times = {book: [] for _label, _bin, book, _env in scenarios}
        changed = {book: [] for _label, _bin, book, _env in scenarios}
        for _run in range(args.runs):
            for _label, bin_dir, book, scenario_env in scenarios:
                seconds, count = playbook(bin_dir, book, varsfile, scenario_env)
                times[book].append(seconds)
                changed[book].append(count)
        for label, bin_dir, book, scenario_env in scenarios:
            log = pathlib.Path(tmp) / ("%s.log" % book)
            playbook(bin_dir, book, varsfile, scenario_env, log=log)
            calls = rpc_calls(log) if book != "ping_loop.yml" else 0
            mid = statistics.median(times[book])
            rows.append((label, min(times[book]), mid, max(times[book]), changed[book], calls))
            print("bench: %s: median %.2f s, changed %s, %s libvirt calls" % (label, mid, changed[book], calls))
    finally:
        cleanup(args.guests)
    return rows


def p1_section(args, rows):
    floor = next(r for r in rows if r[0].startswith("ansible.builtin.ping"))[2]
    community = next(r for r in rows if r[0].startswith("community.libvirt"))[2]
    same = next(r for r in rows if r[0].startswith("virtops.kvm kvm_guest role, the same guests"))[2]
    full = next(r for r in rows if r[0].startswith("virtops.kvm kvm_guest role, each guest"))[2]
    lines = [
        "## P1: no-op converge of %d defined guests" % args.guests,
        "",
        "Each playbook first converges once, on guests of its own; then %d rounds in which each playbook runs once" % args.runs,
        "(round robin, so that the machine's drift weighs on all alike), each run expected to change nothing. Wall time",
        "of `ansible-playbook` (min / median / max), the changed results each run reported, and the libvirt",
        "RPC calls of one more no-op run (libvirt client log, `RPC_CLIENT_MSG_TX_QUEUE` lines).",
        "",
        "| playbook | min s | median s | max s | changed results per run | libvirt calls | median vs community.libvirt |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, low, mid, high, changed, calls in rows:
        lines.append("| %s | %.2f | %.2f | %.2f | %s | %s | %.2fx |" % (label, low, mid, high, ", ".join(map(str, changed)), calls, mid / community))
    lines += [
        "",
        "The per-task floor (ping over %d items) is %.2f s here: a loop's cost below that is Ansible's, not the module's." % (args.guests, floor),
        "",
        "The kvm_guest role's rows are the whole role, including `ansible-playbook`'s start. Over the define loop's own",
        "guests (64 MiB, one vCPU, q35, a user-mode NIC, no disk, no seed: the same job) a no-op is one host_info call",
        "that reads the host and the list's guests, the role's plan (the kvm_guest_plan filter) and the domains'",
        "XML, and one domain call for all guests:",
        "%.2f s, %.2fx of community.libvirt's loop (the goal is 0.2x, %.2f s). With an overlay and a seed per guest the role"
        % (same, same / community, 0.2 * community),
        "also makes one volume and one cloud_init_seed call and stats the local image: %.2f s (%.2fx), a job" % (full, full / community),
        "community.libvirt's `virt` module does not do at all.",
    ]
    return lines


def kept_sections(path):
    """The ``## P...`` sections of an existing docs/benchmarks.md, by their key (P1, P2, ...)."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    found = {}
    for block in re.split(r"(?m)^(?=## )", text):
        match = re.match(r"## (P\d+)\b", block)
        if match:
            found[match.group(1)] = block.rstrip("\n").splitlines()
    return found


def write(args, sections, ours, theirs):
    everything = kept_sections(args.out)
    everything.update(sections)
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (benchmarks/run.py); never part of `make test`, and nothing asserts on time.",
        "`python benchmarks/run.py --only pN` measures one part again and keeps the others as they were.",
        "",
        "## Machine",
        "",
        "- %s, %s, %d CPUs, Python %s" % (platform.node(), platform.platform(), os.cpu_count() or 0, platform.python_version()),
        "- %s" % run(["virsh", "-c", URI, "version"], check=False).stdout.strip().replace("\n", "; "),
        "- ansible-core %s (virtops.kvm); ansible %s with ansible-core %s and community.libvirt from it (the comparison)"
        % (version_of(str(ours / "python"), "ansible-core"), version_of(str(theirs / "python"), "ansible"), version_of(str(theirs / "python"), "ansible-core")),
        "- guests run under TCG on these machines (nested KVM does not work); P1 defines guests and never starts them",
    ]
    for key in sorted(everything, key=lambda k: int(k[1:])):
        lines += [""] + everything[key]
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("bench: wrote %s" % args.out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
