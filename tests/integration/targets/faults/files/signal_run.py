#!/usr/bin/env python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a command (an ad-hoc ``ansible`` call of one module), signal a process while it is in flight.

    signal_run.py --when qemu-img:WORD --signal TERM --to parent -- ansible ...
    signal_run.py --when allocated:PATH:BYTES --signal KILL --to pidfile:PATH -- ansible ...

``--when qemu-img:WORD``: wait for a qemu-img process whose command line holds WORD; ``--to parent``
signals its parent (the module's Python process). ``--when allocated:PATH:BYTES``: wait until the
file PATH has more than BYTES allocated; ``--to pidfile:PATH`` signals the process named there.
``--tmpdir DIR``: the command's TMPDIR, so that what a killed module cannot remove (its AnsiballZ
payload directory) stays inside the caller's work directory.
Prints JSON: whether the signal was sent, the command's rc, and the module's result as the json
ad-hoc output shows it (None when it shows none). What the call did is judged by the caller's
assertions, never by timing: when the condition never came (the call finished first), signalled is false.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time


def _procs():
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                argv = [a.decode("utf-8", "replace") for a in handle.read().split(b"\0") if a]
            with open("/proc/%s/stat" % pid, encoding="ascii") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        yield int(pid), ppid, argv


def _descendants(root):
    """The pids below ``root`` (only these are ever signalled on --when qemu-img)."""
    children = {}
    for pid, ppid, _argv in _procs():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _target(when, to, root):
    kind, _sep, rest = when.partition(":")
    if kind == "qemu-img":
        mine = _descendants(root)
        for pid, ppid, argv in _procs():
            if pid in mine and argv and os.path.basename(argv[0]) == "qemu-img" and any(rest in a for a in argv):
                victim = ppid if to == "parent" else pid
                return victim if victim in mine else None
        return None
    if kind == "allocated":
        path, _sep, size = rest.rpartition(":")
        try:
            if os.stat(path).st_blocks * 512 <= int(size):
                return None
        except OSError:
            return None
        with open(to.partition(":")[2], encoding="ascii") as handle:
            return int(handle.read().strip())
    raise SystemExit("unknown --when %s" % when)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--when", required=True)
    parser.add_argument("--signal", required=True, choices=["TERM", "KILL"])
    parser.add_argument("--to", required=True)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--tmpdir", help="TMPDIR of the command: a killed module leaves its AnsiballZ payload there")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    kind, _sep, word = args.when.partition(":")
    waited = time.monotonic() + args.timeout
    # an earlier case's orphaned qemu-img (its module killed) must end before this one starts
    while (
        kind == "qemu-img"
        and time.monotonic() < waited
        and any(a and os.path.basename(a[0]) == "qemu-img" and any(word in x for x in a) for _p, _pp, a in _procs())
    ):
        time.sleep(0.2)
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    if args.tmpdir:
        env["TMPDIR"] = args.tmpdir
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # pylint: disable=consider-using-with
    signalled, victim = False, None
    deadline = time.monotonic() + args.timeout
    while proc.poll() is None and time.monotonic() < deadline:
        victim = _target(args.when, args.to, proc.pid)
        if victim:
            os.kill(victim, getattr(signal, "SIG" + args.signal))
            signalled = True
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=args.timeout)
    result = None
    text = out.decode("utf-8", "replace")
    found = re.search(r"^localhost \| ([A-Z!]+) => (\{.*)", text, re.M | re.S)
    if found:
        try:
            result = json.loads(found.group(2))
        except ValueError:
            pass
        else:
            result["failed"] = found.group(1).startswith("FAILED")
    json.dump(dict(signalled=signalled, victim=victim, rc=proc.returncode, result=result, output=(text + err.decode("utf-8", "replace"))[-3000:]), sys.stdout)


if __name__ == "__main__":
    main()
