# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shared safety discipline: path and name validation, locks, private temp dirs, verified writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, ValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS, private_tempdir, validate_name, validate_path, write_private


@pytest.mark.parametrize("bad", ["", " /etc", "etc/fstab", "/etc/\nfoo", "/etc/fs\ttab", "/etc/../root", "/a/\x00b", None])
def test_validate_path_refuses(bad):
    with pytest.raises(ValidationError):
        validate_path(bad, "mount")


def test_validate_path_normalises_and_confines():
    assert validate_path("/etc//netplan/") == "/etc/netplan"
    assert validate_path("/etc/netplan/50-br0.yaml", root="/etc/netplan") == "/etc/netplan/50-br0.yaml"
    with pytest.raises(ValidationError, match="outside"):
        validate_path("/etc/netplanx/a", root="/etc/netplan")
    assert validate_path("rel/dir", absolute=False) == "rel/dir"


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a b", "x\r", " lead", "tab\t"])
def test_validate_name_refuses(bad):
    with pytest.raises(ValidationError):
        validate_name(bad)


def test_validate_name_accepts_plain_names():
    assert validate_name("virtops-test_1.qcow2") == "virtops-test_1.qcow2"


def test_write_atomic_refuses_symlink_escape(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), str(root / "etc" / "link"))
    fs = HostFS(str(root))
    with pytest.raises(HostError, match="outside"):
        fs.write_atomic("/etc/link/file", "x")
    assert not (outside / "file").exists()


def test_write_atomic_reads_back(tmp_path):
    fs = HostFS(str(tmp_path))
    assert fs.write_atomic("/etc/a", "one\n") is True
    assert fs.write_atomic("/etc/a", "one\n") is False
    assert (tmp_path / "etc" / "a").read_text() == "one\n"


def test_lock_serialises_read_modify_write(tmp_path):
    fs = HostFS(str(tmp_path))
    fs.write_atomic("/etc/list", "")

    def add(line):
        with fs.locked("/etc/list"):
            lines = fs.read_lines("/etc/list")
            time.sleep(0.05)
            fs.write_atomic("/etc/list", "\n".join([*lines, line]) + "\n")

    threads = [threading.Thread(target=add, args=("line%d" % i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(fs.read_lines("/etc/list")) == ["line%d" % i for i in range(5)]


def test_private_tempdir_is_0700_and_removed(tmp_path):
    with private_tempdir(parent=str(tmp_path)) as path:
        assert os.stat(path).st_mode & 0o777 == 0o700
        secret = write_private(path, "key", "s3cret")
        assert os.stat(secret).st_mode & 0o777 == 0o600
        with pytest.raises(FileExistsError):
            write_private(path, "key", "again")
    assert not os.path.exists(path)


def test_private_tempdir_removed_on_sigterm(tmp_path):
    code = (
        "import sys, time\n"
        "from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import private_tempdir, write_private\n"
        "with private_tempdir(parent=sys.argv[1]) as d:\n"
        "    write_private(d, 'pass', 'secret')\n"
        "    print(d, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    path = proc.stdout.readline().strip()
    assert os.path.isdir(path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    assert not os.path.exists(path)
