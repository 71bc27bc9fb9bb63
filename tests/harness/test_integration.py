# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs every integration target through ``ansible-test integration`` against the real libvirtd.

One pytest test per target, so the run ends with pytest's own count of passed, failed and
skipped targets. A target is skipped (with its reason, never counted as passed) only when the
machine lacks what its ``aliases`` say it needs, or when its aliases say ``slow`` and the run did not
ask for slow targets (``VIRTOPS_SLOW=1``, or the target named in ``VIRTOPS_TARGETS``).
``VIRTOPS_TARGETS`` (space separated) narrows the run to some targets; ``VIRTOPS_PART`` (``lab`` or
``host``) to the targets that need the lab VM, or to the others.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

COLLECTION = pathlib.Path(os.environ.get("VIRTOPS_COLLECTION", pathlib.Path(__file__).resolve().parents[2]))
TARGETS = COLLECTION / "tests" / "integration" / "targets"
TIMEOUT = int(os.environ.get("VIRTOPS_TARGET_TIMEOUT", "1800"))


def _aliases(target):
    path = target / "aliases"
    if not path.exists():
        return set()
    return {line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()}


def _targets():
    wanted = os.environ.get("VIRTOPS_TARGETS", "").split()
    found = []
    for target in sorted(p for p in TARGETS.iterdir() if p.is_dir()):
        aliases = _aliases(target)
        if target.name.startswith("setup_") or aliases & {"hidden", "disabled", "unsupported"}:
            continue
        if wanted and target.name not in wanted:
            continue
        # make integration runs the lab VM's targets and this machine's side by side, one part each
        part = os.environ.get("VIRTOPS_PART")
        if part and ("needs/lab" in aliases) != (part == "lab"):
            continue
        found.append(target)
    return found


def _missing_requirement(aliases, target):
    """Why this machine (or this run) cannot run a target, or None."""
    if "slow" in aliases and not os.environ.get("VIRTOPS_SLOW") and target.name not in os.environ.get("VIRTOPS_TARGETS", "").split():
        return "slow (its aliases say how long): VIRTOPS_SLOW=1 make integration, or VIRTOPS_TARGETS=%s, runs it" % target.name
    for alias in sorted(aliases):
        if alias.startswith("needs/file/"):
            path = "/" + alias[len("needs/file/") :]
            if not os.path.exists(path):
                return "needs %s, which this machine does not have" % path
    if "needs/lab" in aliases:
        ready = os.environ.get("VIRTOPS_LAB_STATUS")
        if not ready or not pathlib.Path(ready).exists():
            return "needs the lab VM, which was not started (see tests/lab)"
        status = pathlib.Path(ready).read_text().strip()
        if status != "ready":
            return "needs the lab VM: %s" % status
    return None


@pytest.mark.parametrize("target", _targets(), ids=lambda t: t.name)
def test_integration_target(target):
    reason = _missing_requirement(_aliases(target), target)
    if reason:
        pytest.skip(reason)
    cmd = ["ansible-test", "integration", "--local", "--allow-destructive", "--color", "no", "-v", target.name]
    proc = subprocess.run(cmd, cwd=COLLECTION, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT, check=False)
    log = COLLECTION / "tests" / "output" / ("integration-%s.log" % target.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout)
    tail = "\n".join(proc.stdout.splitlines()[-60:])
    rc = proc.returncode
    assert rc == 0, "ansible-test integration %s failed (rc=%d); full log in %s\n%s" % (target.name, rc, log, tail)
