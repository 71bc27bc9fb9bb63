# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-target timing of ``make integration``: a table at the end of the run and a TSV file.

Each integration target is one pytest case (test_integration.py). This plugin records every
target's wall time (setup + call + teardown) and outcome, prints the targets sorted slowest
first after pytest's summary, and writes them to ``$VIRTOPS_TIMING_FILE`` (default
``tests/output/integration-timing.tsv`` of the collection the run tests). Timings are reported,
never asserted.
"""

from __future__ import annotations

import os
import pathlib
import time
import xml.etree.ElementTree as ET

_RESULTS = {}
_STARTED = []
_TASKS = []
_COLLECTION = pathlib.Path(os.environ.get("VIRTOPS_COLLECTION", pathlib.Path(__file__).resolve().parents[2]))
SLOWEST = 3


def _target(nodeid):
    return nodeid.rsplit("[", 1)[-1].rstrip("]") if "[" in nodeid else nodeid


def pytest_sessionstart(session):
    _STARTED.append(time.monotonic())


def pytest_runtest_logreport(report):
    entry = _RESULTS.setdefault(_target(report.nodeid), {"seconds": 0.0, "outcome": "passed", "reason": ""})
    entry["seconds"] += report.duration
    if report.skipped:
        entry["outcome"] = "skipped"
        if isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2])
            entry["reason"] = reason[len("Skipped: ") :] if reason.startswith("Skipped: ") else reason
    elif report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
    if report.when == "call":
        entry["tasks"] = _junit_tasks(_target(report.nodeid), getattr(report, "start", 0))
        _TASKS.extend((_target(report.nodeid), *task) for task in entry["tasks"])


def _junit_tasks(target, since):
    """(seconds, task, file:line) of every task of this target's run, from ansible-test's junit output."""
    tasks = []
    junit = _COLLECTION / "tests" / "output" / "junit"
    for path in junit.glob("%s-*.xml" % target) if junit.is_dir() else []:
        if path.stat().st_mtime < since:
            continue
        try:
            cases = ET.parse(path).getroot().iter("testcase")
        except ET.ParseError:
            continue
        for case in cases:
            name = (case.get("name") or "").replace("[testhost] testhost: ", "")
            tasks.append((float(case.get("time") or 0), name, case.get("classname") or ""))
    return sorted(tasks, reverse=True)


def _fmt(seconds):
    minutes, secs = divmod(round(seconds), 60)
    return "%d:%02d" % (minutes, secs)


def timing_rows():
    return sorted(_RESULTS.items(), key=lambda item: (-item[1]["seconds"], item[0]))


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    rows = timing_rows()
    total = sum(entry["seconds"] for _name, entry in rows)
    wall = time.monotonic() - _STARTED[0] if _STARTED else total
    width = max(len(name) for name, _entry in rows)
    write = terminalreporter.write_line
    terminalreporter.section("integration targets by wall time")
    write("%-*s  %8s  %s" % (width, "target", "m:ss", "outcome"))
    for name, entry in rows:
        reason = (" (%s)" % entry["reason"]) if entry["reason"] else ""
        write("%-*s  %8s  %s%s" % (width, name, _fmt(entry["seconds"]), entry["outcome"], reason))
    write("%-*s  %8s  %d targets, session wall time %s" % (width, "total", _fmt(total), len(rows), _fmt(wall)))
    write("slowest tasks (from ansible-test's junit output):")
    for name, entry in rows:
        for seconds, task, where in entry.get("tasks", [])[:SLOWEST]:
            write("  %-*s  %8s  %s  (%s)" % (width, name, _fmt(seconds), task[:100], where))
    out = os.environ.get("VIRTOPS_TIMING_FILE")
    path = pathlib.Path(out) if out else pathlib.Path(__file__).resolve().parents[1] / "output" / "integration-timing.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["target\tseconds\toutcome\treason"]
    lines += ["%s\t%.1f\t%s\t%s" % (name, entry["seconds"], entry["outcome"], entry["reason"]) for name, entry in rows]
    path.write_text("\n".join(lines) + "\n")
    tasks = ["target\tseconds\ttask\twhere"] + ["%s\t%.1f\t%s\t%s" % (t, sec, task.replace("\t", " "), where) for t, sec, task, where in _TASKS]
    path.with_name(path.stem + "-tasks.tsv").write_text("\n".join(tasks) + "\n")
    write("timings written to %s and %s" % (path, path.with_name(path.stem + "-tasks.tsv")))
