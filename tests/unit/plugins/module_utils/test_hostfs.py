# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError
from ansible_collections.virtops.kvm.plugins.module_utils._hostfs import HostFS


def test_paths_map_below_root(tmp_path):
    fs = HostFS(str(tmp_path))
    assert fs.path("/sys/kernel/mm") == os.path.join(str(tmp_path), "sys/kernel/mm")
    assert fs.host_path(fs.path("/etc/passwd")) == "/etc/passwd"
    assert HostFS("/").path("/proc/cpuinfo") == "/proc/cpuinfo"


def test_relative_paths_are_refused(tmp_path):
    with pytest.raises(ValueError):
        HostFS(str(tmp_path)).path("etc/passwd")


@pytest.mark.parametrize("content, as_int", [("16\n", 16), ("0", 0), ("12 kB", 12), ("junk", None), ("", None)])
def test_read_int(tmp_path, content, as_int):
    fs = HostFS(str(tmp_path))
    (tmp_path / "value").write_text(content)
    assert fs.read_int("/value") == as_int


def test_missing_files_read_as_defaults(tmp_path):
    fs = HostFS(str(tmp_path))
    assert fs.read("/nope") is None
    assert fs.read("/nope", "x") == "x"
    assert fs.read_int("/nope", 7) == 7
    assert fs.listdir("/nope") == []
    assert fs.readlink_name("/nope") is None
    assert not fs.is_char_device("/nope")


def test_write_atomic_reports_change_and_keeps_mode(tmp_path):
    fs = HostFS(str(tmp_path))
    assert fs.write_atomic("/etc/virtops/a.conf", "one\n", mode=0o600) is True
    assert (tmp_path / "etc/virtops/a.conf").read_text() == "one\n"
    assert oct(os.stat(tmp_path / "etc/virtops/a.conf").st_mode & 0o777) == "0o600"
    assert fs.write_atomic("/etc/virtops/a.conf", "one\n", mode=0o600) is False
    assert fs.write_atomic("/etc/virtops/a.conf", "two\n") is True
    assert (tmp_path / "etc/virtops/a.conf").read_text() == "two\n"
    assert [p.name for p in (tmp_path / "etc/virtops").iterdir()] == ["a.conf"]


def test_write_atomic_uses_the_given_mover(tmp_path):
    moves = []

    def mover(src, dest):
        moves.append(dest)
        os.replace(src, dest)

    fs = HostFS(str(tmp_path), atomic_move=mover)
    fs.write_atomic("/f", "x", mode=0o600)
    assert moves == [str(tmp_path / "f")]
    assert os.stat(tmp_path / "f").st_mode & 0o777 == 0o600


def test_write_and_remove(tmp_path):
    fs = HostFS(str(tmp_path))
    (tmp_path / "attr").write_text("0")
    fs.write("/attr", 4)
    assert fs.read_int("/attr") == 4
    assert fs.remove("/attr") is True
    assert fs.remove("/attr") is False
    with pytest.raises(HostError, match="cannot write '1' to /missing/dir/attr"):
        fs.write("/missing/dir/attr", 1)
